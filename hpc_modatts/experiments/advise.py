"""``hpc-modatts advise RUN --budget N``: which unannotated target cases to annotate next.

RUN is an experiment folder (``<run_root>/<name>``, or a sweep point ``<sweep>/points/<point>``).

1. Final models of the variant (default: the first MoDATTS variant the run trained): per fold,
   the last finished self-training round, else the fold's segmentation run.
2. Candidates: the split's target training cases whose masks the run did not use
   (``target_train`` minus ``target_labeled``, the whole split, not one fold's view).
3. Evidence per candidate (``scorers.CaseEvidence``): each fold model's probability map (the
   one inferer, ``infer.inferer.VolumeInferer`` with the run's ``infer`` settings, through
   ``infer.predict.predict_case``) and the rounds' pseudo-labels.
4. Every applicable scorer (``scorers.SCORERS`` or ``--scorers``), rank-normalised over the
   candidates; the score is their mean; the top N are selected.

Outputs (``RUN/advise-<variant>/`` or ``--out``): ``advice.csv`` (rank, case, score, each
scorer's value and rank score, selected, reason), ``advice.json``, ``top_cases.png`` (one row
per selected case, at most 8: target image, ensemble probability, voxel uncertainty, the
last pseudo-label change) and, with ``--write-split PATH``, the run's split with the selected
cases added to ``target_labeled``: annotate them (masks in the store) and rerun with it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from hpc_modatts.config import ExperimentConfig, load_config
from hpc_modatts.console import log_console
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.splits import Split
from hpc_modatts.data.store import Store
from hpc_modatts.experiments.scorers import CaseEvidence, rank_cases
from hpc_modatts.infer.inferer import inferer_from_config
from hpc_modatts.infer.predict import load_models, predict_case
from hpc_modatts.runs import atomic_write_json, atomic_write_text, is_done
from hpc_modatts.train.guards import voxel_ml, zero_healthy

log = logging.getLogger(__name__)

PREFERRED = (
    "semi-supervised",
    "self-supervised",
    "semi-supervised-2d",
    "self-supervised-2d",
    "m-genseg",
    "source-supervised",
    "target-supervised",
)
"""Variant advised on when none is given: the first the run trained."""
PANEL_ROWS = 8
LIMITS = {"target image": (-1.0, 1.0), "ensemble probability": (0.0, 1.0), "pseudo-label change": (0.0, 1.0)}


# ----------------------------------------------------------------------------- runs
def _index(p: Path, prefix: str) -> int:
    m = re.fullmatch(rf"{prefix}_(\d+)", p.name)
    return int(m.group(1)) if m else -1


def final_runs(run: Path, variant: str) -> list[tuple[Path, list[Path]]]:
    """Per fold: (final model run, the rounds' pseudo-label stores in order); DataError if none finished."""
    out = []
    for fold in sorted((run / f"segment-{variant}").glob("fold_*"), key=lambda p: _index(p, "fold")):
        rounds = sorted((r for r in fold.glob("round_*") if _index(r, "round") > 0), key=lambda r: _index(r, "round"))
        done = [r for r in rounds if is_done(r) and (r / "best_model.pt").is_file()]
        final = done[-1] if done else (fold if is_done(fold) and (fold / "best_model.pt").is_file() else None)
        if final is not None:
            stores = [r / "pseudo_labels.zarr" for r in rounds if _index(r, "round") <= _index(final, "round")]
            out.append((final, [s for s in stores if (s / "zarr.json").is_file()]))
    if not out:
        raise DataError(f"{run}: no finished segment-{variant}/fold_* run (needs DONE and best_model.pt)")
    return out


def pick_variant(run: Path, variant: str | None) -> str:
    if variant:
        return variant
    for v in PREFERRED:
        if any(is_done(f) for f in (run / f"segment-{v}").glob("fold_*")):
            return v
    raise DataError(f"{run}: no finished segment-<variant>/fold_* run: not an experiment folder")


def candidates(cfg: ExperimentConfig) -> tuple[object, list[str]]:
    """The run's split and its target training cases without a mask in use."""
    split = Split.load(cfg.data.split)
    labeled = set(split.target_labeled)
    todo = [c for c in split.target_train if c not in labeled]
    if not todo:
        raise DataError(f"{cfg.data.split}: every target training case is already annotated; nothing to advise")
    return split, todo


# ----------------------------------------------------------------------------- evidence
def gather(cfg: ExperimentConfig, folds: list[tuple[Path, list[Path]]], cases: list[str]) -> tuple[list, dict]:
    """``CaseEvidence`` per case, and per case the 2D slices the panel draws."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models, _ = load_models([f for f, _ in folds], device)
    inferer = inferer_from_config(cfg)
    store = Store.open(cfg.data.store)
    labels = [[Store.open(s) for s in stores] for _, stores in folds]
    evidence, slices = [], {}
    for case in cases:
        attrs = store.attrs(case)
        image = store.read_image(case, cfg.data.target)
        brain = store.read_brain(case) > 0
        probs = [predict_case([m], inferer, store, case, cfg.data.target)["prob"] for m in models]  # (X, Y, Z)
        rounds = []
        for k, stores in enumerate(labels):
            seq = [s.read_array(case, "pseudo_label") > 0 for s in stores if case in s.case_ids]
            if seq:  # the final model's own label, made as self-training makes its pseudo-labels
                own = (probs[k] > cfg.train.alpha) & brain
                if cfg.train.healthy_pseudo_labels == "zero":
                    own = zero_healthy(own, attrs.get("hemisphere_split"), attrs.get("weak_labels"))
                rounds.append(seq + [own])
        ev = CaseEvidence(
            case, probs, rounds, voxel_ml=voxel_ml(attrs.get("spacing", [1.0, 1.0, 1.0])), threshold=cfg.infer.threshold
        )
        evidence.append(ev)
        slices[case] = _panel_slices(image, brain, ev)
    return evidence, slices


def _panel_slices(image: np.ndarray, brain: np.ndarray, ev: CaseEvidence) -> dict[str, np.ndarray]:
    """The axial slice with the most uncertainty inside the brain, for each panel column."""
    mean = np.mean(ev.fold_probs, axis=0)
    unc = np.std(ev.fold_probs, axis=0) if len(ev.fold_probs) > 1 else mean * (1 - mean)
    area = (unc * brain).reshape(-1, unc.shape[2]).sum(0)
    z = int(area.argmax()) if area.max() > 0 else image.shape[2] // 2
    out = {
        "target image": image[:, :, z],
        "ensemble probability": mean[:, :, z],
        ("fold std" if len(ev.fold_probs) > 1 else "p(1-p)"): unc[:, :, z],
    }
    changes = [seq[-1] ^ seq[-2] for seq in ev.rounds if len(seq) > 1]
    if changes:
        out["pseudo-label change"] = np.mean(changes, axis=0)[:, :, z].astype(np.float32)
    return {k: np.asarray(v, np.float32) for k, v in out.items()} | {"z": np.array(z)}


# ----------------------------------------------------------------------------- outputs
def _csv(rows: list[dict], used: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "case", "score", *used, *(f"{n}_rank" for n in used), "selected", "reason"])
    for r in rows:
        w.writerow(
            [
                r["rank"],
                r["case"],
                f"{r['score']:.4f}",
                *(f"{r[n]:.6g}" for n in used),
                *(f"{r[n + '_rank']:.4f}" for n in used),
                int(r["selected"]),
                r["reason"],
            ]
        )
    return buf.getvalue()


def save_panel(path: Path, rows: list[dict], slices: dict) -> Path:
    """One row per selected case (at most ``PANEL_ROWS``): its slices and the advisor's reason."""
    from hpc_modatts.experiments.plots import plt, save_png  # matplotlib is heavy: loaded when drawing

    top = [r for r in rows if r["selected"]][:PANEL_ROWS]
    cols = max(len([k for k in slices[r["case"]] if k != "z"]) for r in top)
    fig, axes = plt.subplots(len(top), cols + 1, figsize=(2.6 * cols + 3.4, 2.6 * len(top)), squeeze=False)
    for ax_row, r in zip(axes, top):
        panels = {k: v for k, v in slices[r["case"]].items() if k != "z"}
        for ax, (name, img) in zip(ax_row, panels.items()):
            vmin, vmax = LIMITS.get(name, (0.0, None))  # uncertainty maps: own maximum
            ax.imshow(img.T, origin="lower", cmap="gray" if name == "target image" else "magma", vmin=vmin, vmax=vmax)
            ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(f"#{r['rank']} {r['case']}\nz={int(slices[r['case']]['z'])}", fontsize=8)
        ax_row[-1].text(
            0, 0.5, f"score {r['score']:.2f}\n" + r["reason"].replace("; ", "\n"), fontsize=7, va="center", wrap=True
        )
        for ax in ax_row[len(panels) :]:
            ax.axis("off")
    return save_png(fig, path, dpi=80)


def write_advised_split(split, selected: list[str], path: str | os.PathLike, run: Path, variant: str) -> Path:
    """The split with ``selected`` added to ``target_labeled`` (the split tool's format)."""
    store = Store.open(split.meta["store"]) if split.meta.get("store") and Path(split.meta["store"]).exists() else None
    if store is not None:
        bare = [c for c in selected if store.mask(c) is None]
        if bare:
            log.warning(
                "advise: %d selected case(s) have no mask in %s yet (%s): annotate them and reconvert "
                "before training with %s",
                len(bare),
                store.path,
                bare[:3],
                path,
            )
    labeled = sorted(set(split.target_labeled) | set(selected))
    meta = {
        **split.meta,
        "target_labeled": len(labeled) / len(split.target_train),
        "advisor": {"run": str(run), "variant": variant, "added": selected},
    }
    new = dataclasses.replace(split, target_labeled=labeled, meta=meta)
    return new.save(path)


# ----------------------------------------------------------------------------- API
def advise(
    run: str | os.PathLike,
    budget: int,
    variant: str | None = None,
    scorers: list[str] | None = None,
    out: str | os.PathLike | None = None,
    write_split: str | os.PathLike | None = None,
    console: Console | None = None,
) -> Path:
    """Rank the run's unannotated target training cases; returns the folder with advice.csv."""
    run = Path(run)
    if not run.is_dir():
        raise DataError(f"run {run} does not exist")
    if budget < 1:
        raise DataError(f"--budget {budget}: give at least 1 case")
    variant = pick_variant(run, variant)
    folds = final_runs(run, variant)
    cfg = load_config(folds[0][0] / "config.yaml")
    split, todo = candidates(cfg)
    if budget > len(todo):
        log.warning("advise: budget %d > %d unannotated cases; selecting all", budget, len(todo))
    log.info("advise: %d candidate case(s), %d fold model(s) of %s", len(todo), len(folds), variant)
    evidence, slices = gather(cfg, folds, todo)
    try:
        rows, used = rank_cases(evidence, scorers)
    except ValueError as e:
        raise DataError(f"advise {run}: {e}") from None
    for r in rows:
        r["selected"] = r["rank"] <= budget
    out = Path(out) if out else run / f"advise-{variant}"
    selected = [r["case"] for r in rows if r["selected"]]
    atomic_write_text(out / "advice.csv", _csv(rows, used))
    result = {
        "run": str(run),
        "variant": variant,
        "budget": budget,
        "scorers": used,
        "selected": selected,
        "models": [str(f) for f, _ in folds],
        "split": cfg.data.split,
        "cases": rows,
    }
    result["panel"] = str(save_panel(out / "top_cases.png", rows, slices))
    if write_split:
        result["split_written"] = str(write_advised_split(split, selected, write_split, run, variant))
    atomic_write_json(out / "advice.json", result)
    _print(rows, used, budget, console)
    return out


def _print(rows: list[dict], used: list[str], budget: int, console: Console | None) -> None:
    table = Table(title=f"annotate next (budget {budget}; scorers: {', '.join(used)})")
    for col in ("rank", "case", "score", "reason"):
        table.add_column(col)
    for r in rows:
        style = "bold" if r["selected"] else "dim"
        table.add_row(str(r["rank"]), r["case"], f"{r['score']:.2f}", r["reason"], style=style)
    log_console(console).print(table)
