"""``hpc-modatts report SWEEP_DIR``: every variant at every annotated fraction, in one table.

Reads the per-case test metrics (``evaluate-<variant>/metrics.json``: Dice, HD95, ASSD on the
point's target-modality test cases) of every point of a sweep (``sweep.json``) and aggregates
per (variant, source fraction, target fraction):

* **mean ± std over seeds and cases**: the cases of every seed pooled (population std, as
  ``evaluate`` reports; HD95/ASSD follow its BraTS convention, the image diagonal when one
  mask is empty; a value stored as null is not counted and ``n`` counts the rest);
* **seed std**: the std of the per-seed means, the spread to compare methods with;
* **% of target-supervised**: per seed, mean Dice / the target-supervised mean Dice of the same
  seed (same test cases), then mean ± std over seeds.

A fraction a variant does not depend on (its runs are shared across it, see
``experiments.plan``) is collapsed to "any": the target-supervised bound is one row per sweep,
the source-supervised bound one row per source fraction. Outputs in ``SWEEP_DIR/report/`` (or
``--out``): ``report.csv``, ``report.json``, ``report.md``, the rich table on the console, and
the figures ``dice_vs_target_fraction.png`` / ``dice_vs_source_fraction.png`` (one panel per
variant, one line per value of the other fraction, band = ± std over seeds and cases, dashed
line = target-supervised) for each axis with at least two values; a seeds-only run gets
``dice_by_variant.png``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from hpc_modatts.config import TABLE_ORDER
from hpc_modatts.console import log_console
from hpc_modatts.experiments.plan import load_sweep
from hpc_modatts.runs import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)

METRICS = ("dice", "hd95", "assd")
ORDER = TABLE_ORDER
"""Row order: lower bound, MoDATTS variants, upper bound."""
TS = "target-supervised"


# ----------------------------------------------------------------------------- collecting
def _free_axes(points: list[dict], variant: str) -> tuple[bool, bool]:
    """(source free, target free): the variant's run is the same unit whatever that fraction is."""

    def free(axis: str, other: str) -> bool:
        seen: dict[tuple, set] = defaultdict(set)
        for p in points:
            seen[(p[other], p["seed"])].add(p["units"][variant])
        return len({p[axis] for p in points}) > 1 and all(len(s) == 1 for s in seen.values())

    return free("source_fraction", "target_fraction"), free("target_fraction", "source_fraction")


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, float)
    ok = v[~np.isnan(v)]
    return {
        "mean": float(ok.mean()) if ok.size else float("nan"),
        "std": float(ok.std()) if ok.size else float("nan"),
        "n": int(ok.size),
    }


def aggregate(sweep_dir: str | os.PathLike) -> dict:
    """The report's rows (one per variant and fraction pair) and per-seed means, from the metrics files."""
    sweep_dir = Path(sweep_dir)
    info = load_sweep(sweep_dir)
    points = info["points"]
    variants = [v for v in ORDER if v in info["variants"]]
    per_seed: list[dict] = []  # one entry per (variant, unit): its seed and per-case rows
    for v in variants:
        for uid in dict.fromkeys(p["units"][v] for p in points):
            path = sweep_dir / uid / f"evaluate-{v}" / "metrics.json"
            seed = next(p["seed"] for p in points if p["units"][v] == uid)
            metrics = json.loads(path.read_text()) if path.is_file() else {}
            cases = metrics.get("cases")
            per_seed.append(
                {
                    "variant": v,
                    "unit": uid,
                    "seed": seed,
                    "metrics": str(path),
                    "cases": cases,
                    "dice": _stats([c["dice"] for c in cases])["mean"] if cases else None,
                    # False: every validation of the model's training was implausible (Trainer.fit)
                    "model_plausible": metrics.get("summary", {}).get("model_plausible"),
                }
            )
    ts_dice = {r["seed"]: r["dice"] for r in per_seed if r["variant"] == TS and r["dice"] is not None}
    rows = []
    for v in variants:
        src_free, tgt_free = _free_axes(points, v)
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for p in points:
            key = (None if src_free else p["source_fraction"], None if tgt_free else p["target_fraction"])
            if p not in groups[key]:
                groups[key].append(p)
        for (src, tgt), members in groups.items():
            units = dict.fromkeys(p["units"][v] for p in members)
            runs = [r for r in per_seed if r["variant"] == v and r["unit"] in units]
            done = [r for r in runs if r["cases"]]
            pooled = [c for r in done for c in r["cases"]]
            row = {
                "variant": v,
                "source_fraction": src,
                "target_fraction": tgt,
                "source_labeled_cases": members[0]["counts"]["source_labeled"] if src is not None else None,
                "target_labeled_cases": members[0]["counts"]["target_labeled"] if tgt is not None else None,
                "seeds": sorted({r["seed"] for r in done}),
                "seeds_expected": sorted({r["seed"] for r in runs}),
                "cases": len(pooled),
            }
            for m in METRICS:
                row[m] = _stats([c[m] for c in pooled])
            seed_means = [r["dice"] for r in done]
            row["dice"]["seed_std"] = float(np.std(seed_means)) if seed_means else float("nan")
            pct = [100.0 * r["dice"] / ts_dice[r["seed"]] for r in done if ts_dice.get(r["seed"])]
            row["percent_of_target_supervised"] = _stats(pct) if pct else None
            rows.append(row)
    return {
        "sweep": info["name"],
        "variants": variants,
        "rows": rows,
        "stage1_warnings": stage1_warnings(sweep_dir),
        "unselected_models": [f"{r['unit']}/{r['variant']}" for r in per_seed if r["model_plausible"] is False],
        "per_seed": [{k: r[k] for k in ("variant", "unit", "seed", "dice", "metrics")} for r in per_seed],
        "missing": [r["metrics"] for r in per_seed if not r["cases"]],
    }


def stage1_warnings(sweep_dir: Path) -> list[str]:
    """One line per finished stage 1 of the sweep whose selected checkpoint left the tumour
    untranslated (``fidelity.translation_warning``), naming the points that train on it: their
    MoDATTS rows are then about a failed translation, not about the annotated fraction."""
    from hpc_modatts.train.fidelity import translation_warning  # fidelity imports torch: keep `report` light

    out = []
    for unit in load_sweep(sweep_dir).get("units", []):
        run = sweep_dir / unit["id"] / "translate"
        if not unit.get("translator") or not (run / "DONE").is_file() or not (run / "metrics.jsonl").is_file():
            continue  # not trained here, not finished, or no validation log to judge it by
        best = read_json(run / "DONE", "is missing").get("best_step")
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"val/score"' in ln]
        selected = next((r for r in rows if r["step"] == best), rows[-1] if rows else {})
        warning = translation_warning(selected)
        if warning:
            out.append(f"{unit['id']} (points {', '.join(unit['shared_by'])}): {warning}")
    return out


# ----------------------------------------------------------------------------- formatting
def _pm(s: dict | None, digits: int = 3) -> str:
    if not s or s["mean"] is None or math.isnan(s["mean"]):
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _fraction(f: float | None, n: int | None) -> str:
    if f is None:
        return "any"
    return f"{100 * f:g} %" + (f" ({n})" if n is not None else "")


def table_cells(row: dict) -> list[str]:
    pct = row["percent_of_target_supervised"]
    return [
        row["variant"],
        _fraction(row["source_fraction"], row["source_labeled_cases"]),
        _fraction(row["target_fraction"], row["target_labeled_cases"]),
        _pm(row["dice"]),
        f"{row['dice']['seed_std']:.3f}" if not math.isnan(row["dice"]["seed_std"]) else "n/a",
        _pm(row["hd95"], 1),
        _pm(row["assd"], 1),
        (_pm(pct, 0) + " %") if pct else "n/a",
        f"{len(row['seeds'])}/{len(row['seeds_expected'])}",
        str(row["cases"]),
    ]


HEADER = [
    "variant",
    "source annotated (cases)",
    "target annotated (cases)",
    "Dice",
    "Dice seed std",
    "HD95 (mm)",
    "ASSD (mm)",
    "% of target-supervised",
    "seeds",
    "cases",
]
NOTE = (
    "mean ± std over seeds and test cases pooled; seed std = std of the per-seed means; % of "
    "target-supervised = per-seed ratio to the same seed's target-supervised Dice, mean ± std over seeds"
)


def rich_table(report: dict) -> Table:
    table = Table(title=f"sweep {report['sweep']}: target-modality test cases (whole tumour)", caption=NOTE)
    for col in HEADER:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for row in report["rows"]:
        table.add_row(*table_cells(row))
    return table


def markdown(report: dict) -> str:
    lines = [f"# Sweep `{report['sweep']}`", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in report["rows"]]
    lines += ["", NOTE + "."]
    if report.get("stage1_warnings"):
        lines += ["", "Stage 1 did not learn the translation (MoDATTS rows of these points are about that):"]
        lines += [f"- {w}" for w in report["stage1_warnings"]]
    if report.get("unselected_models"):
        lines += ["", "No plausible validation (the last step's model, not a selected one; their Dice counts):"]
        lines += [f"- {u}" for u in report["unselected_models"]]
    if report["missing"]:
        lines += [
            "",
            f"Missing ({len(report['missing'])} runs not evaluated yet): "
            + ", ".join(f"`{m}`" for m in report["missing"][:10]),
        ]
    return "\n".join(lines) + "\n"


def csv_text(report: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = [
        "variant",
        "source_fraction",
        "target_fraction",
        "source_labeled_cases",
        "target_labeled_cases",
        "seeds",
        "seeds_expected",
        "cases",
    ]
    stats = [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n")] + ["dice_seed_std", "pct_ts_mean", "pct_ts_std"]
    w.writerow(cols + stats)
    for r in report["rows"]:
        pct = r["percent_of_target_supervised"] or {"mean": "", "std": ""}
        w.writerow(
            [
                r["variant"],
                "" if r["source_fraction"] is None else r["source_fraction"],
                "" if r["target_fraction"] is None else r["target_fraction"],
                "" if r["source_labeled_cases"] is None else r["source_labeled_cases"],
                "" if r["target_labeled_cases"] is None else r["target_labeled_cases"],
                len(r["seeds"]),
                len(r["seeds_expected"]),
                r["cases"],
            ]
            + [f"{r[m][s]:.6g}" for m in METRICS for s in ("mean", "std", "n")]
            + [
                f"{r['dice']['seed_std']:.6g}",
                pct["mean"] if pct["mean"] == "" else f"{pct['mean']:.6g}",
                pct["std"] if pct["std"] == "" else f"{pct['std']:.6g}",
            ]
        )
    return buf.getvalue()


# ----------------------------------------------------------------------------- API
def report(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None, console: Console | None = None) -> Path:
    """Aggregate a sweep and write the table (CSV, JSON, Markdown) and the plots; returns the folder."""
    from hpc_modatts.experiments.plots import plot_report  # matplotlib is heavy: loaded when plotting

    rep = aggregate(sweep_dir)
    out = Path(out) if out else Path(sweep_dir) / "report"
    if not any(r["cases"] for r in rep["rows"]):
        log.warning("report: no evaluated run yet in %s (%d missing)", sweep_dir, len(rep["missing"]))
    atomic_write_text(out / "report.csv", csv_text(rep))
    atomic_write_json(out / "report.json", rep)
    atomic_write_text(out / "report.md", markdown(rep))
    rep["figures"] = [str(p) for p in plot_report(rep, out)]
    atomic_write_json(out / "report.json", rep)
    log_console(console).print(rich_table(rep))
    for w in rep["stage1_warnings"]:
        log.warning("report: %s", w)
    for u in rep["unselected_models"]:
        log.warning("report: %s had no plausible validation: its model is the last step's, not a selected one", u)
    for p in rep["figures"]:
        log_console(console).print(f"figure: {p}")
    return out
