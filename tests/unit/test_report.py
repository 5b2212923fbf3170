"""``report`` on a hand-made sweep folder: pooled mean ± std over seeds and cases, the seed std,
% of target-supervised per seed, shared runs collapsed to "any", missing runs, every output
file and the figures the fractions allow."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from hpc_modatts.data.errors import DataError
from hpc_modatts.experiments.report import aggregate, report
from hpc_modatts.runs import atomic_write_json

NAN = float("nan")
# (unit, variant) -> per-case (dice, hd95, assd); None = not evaluated yet
METRICS = {
    ("shared/seed0", "target-supervised"): [(0.8, 2.0, 1.0), (0.6, 4.0, 2.0)],
    ("shared/seed1", "target-supervised"): [(0.9, 1.0, 1.0), (0.7, 3.0, 1.0)],
    ("points/src1_tgt0_seed0", "self-supervised"): [(0.35, 10.0, 5.0), (0.35, NAN, NAN)],
    ("points/src1_tgt0_seed1", "self-supervised"): [(0.4, 8.0, 4.0), (0.6, 6.0, 3.0)],
    ("points/src1_tgt0.5_seed0", "self-supervised"): [(0.7, 2.0, 1.0), (0.7, 2.0, 1.0)],
    ("points/src1_tgt0.5_seed1", "self-supervised"): None,
}


def make_sweep(root: Path) -> Path:
    points = []
    for seed in (0, 1):
        for tgt in (0.0, 0.5):
            pid = f"src1_tgt{tgt:g}_seed{seed}"
            points.append(
                {
                    "id": pid,
                    "source_fraction": 1.0,
                    "target_fraction": tgt,
                    "seed": seed,
                    "split": str(root / "splits" / f"{pid}.json"),
                    "counts": {
                        "source_train": 4,
                        "source_labeled": 4,
                        "target_train": 4,
                        "target_labeled": 2 if tgt else 0,
                        "val": 1,
                        "test": 2,
                    },
                    "units": {"self-supervised": f"points/{pid}", "target-supervised": f"shared/seed{seed}"},
                }
            )
    atomic_write_json(
        root / "sweep.json",
        {
            "format": 1,
            "name": "hand",
            "variants": ["self-supervised", "target-supervised"],
            "points": points,
            "units": [],
        },
    )
    for (unit, variant), cases in METRICS.items():
        if cases is not None:
            rows = [{"case": f"c{i}", "dice": d, "hd95": h, "assd": a, "note": ""} for i, (d, h, a) in enumerate(cases)]
            atomic_write_json(root / unit / f"evaluate-{variant}" / "metrics.json", {"cases": rows, "summary": {}})
    return root


def _row(rep: dict, variant: str, tgt):
    return next(r for r in rep["rows"] if r["variant"] == variant and r["target_fraction"] == tgt)


def test_aggregation_pools_seeds_and_cases_and_ratios_per_seed(tmp_path):
    rep = aggregate(make_sweep(tmp_path))
    assert [(r["variant"], r["target_fraction"]) for r in rep["rows"]] == [
        ("self-supervised", 0.0),
        ("self-supervised", 0.5),
        ("target-supervised", None),
    ]
    r0 = _row(rep, "self-supervised", 0.0)
    dice = [0.35, 0.35, 0.4, 0.6]
    assert r0["dice"]["mean"] == pytest.approx(np.mean(dice)) and r0["dice"]["std"] == pytest.approx(np.std(dice))
    assert r0["dice"]["seed_std"] == pytest.approx(np.std([0.35, 0.5]))
    assert r0["hd95"]["mean"] == pytest.approx(8.0) and r0["hd95"]["n"] == 3  # the nan case does not count
    pct = [100 * 0.35 / 0.7, 100 * 0.5 / 0.8]  # each seed against its own target-supervised run
    assert r0["percent_of_target_supervised"]["mean"] == pytest.approx(np.mean(pct))
    assert r0["percent_of_target_supervised"]["std"] == pytest.approx(np.std(pct))
    assert (r0["seeds"], r0["seeds_expected"], r0["cases"]) == ([0, 1], [0, 1], 4)
    assert (r0["source_labeled_cases"], r0["target_labeled_cases"]) == (4, 0)

    half = _row(rep, "self-supervised", 0.5)  # seed 1 not evaluated yet: reported, not hidden
    assert (half["seeds"], half["seeds_expected"], half["cases"]) == ([0], [0, 1], 2)
    assert half["percent_of_target_supervised"]["mean"] == pytest.approx(100.0)
    assert rep["missing"] == [str(tmp_path / "points/src1_tgt0.5_seed1/evaluate-self-supervised/metrics.json")]

    ts = _row(rep, "target-supervised", None)  # one run per seed whatever the target fraction: "any"
    assert ts["dice"]["mean"] == pytest.approx(0.75) and ts["cases"] == 4 and ts["target_labeled_cases"] is None
    assert ts["percent_of_target_supervised"]["mean"] == pytest.approx(100.0)


def test_report_writes_csv_json_markdown_and_the_target_fraction_figure(tmp_path):
    out = report(make_sweep(tmp_path / "sw"), tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert len(rows) == 3 and rows[2]["target_fraction"] == "" and float(rows[0]["dice_mean"]) == pytest.approx(0.425)
    assert float(rows[0]["pct_ts_mean"]) == pytest.approx(56.25)
    md = (out / "report.md").read_text()
    assert "| self-supervised | 100 % (4) | 0 % (0) | 0.425 ± 0.103 | 0.075 |" in md
    assert "56 ± 6 %" in md and "| target-supervised | 100 % (4) | any |" in md and "Missing (1 runs" in md
    saved = json.loads((out / "report.json").read_text())
    assert saved["figures"] == [str(out / "dice_vs_target_fraction.png")]  # one source fraction: no source plot
    png = (out / "dice_vs_target_fraction.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not math.isnan(saved["rows"][0]["dice"]["mean"])


def test_report_names_the_points_whose_stage_1_did_not_learn_the_translation(tmp_path):
    """A sweep split whose stage 1 failed (the demo phantom's seed-1 split: contrast ratio 0.10)
    drags its MoDATTS rows down for a reason unrelated to the annotated fraction: say which."""
    root = make_sweep(tmp_path / "sw")
    info = json.loads((root / "sweep.json").read_text())
    info["units"] = [
        {"id": f"shared/src1_seed{s}", "translator": True, "shared_by": [f"src1_tgt0_seed{s}"]} for s in (0, 1)
    ]
    atomic_write_json(root / "sweep.json", info)
    for seed, ratios in ((0, [0.5, 0.77]), (1, [0.2, 0.10])):  # selected: the second validation
        run = root / f"shared/src1_seed{seed}" / "translate"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(
            "".join(
                json.dumps({"step": 150 * (i + 1), "val/score": 0.5, "val/contrast_ratio": r}) + "\n"
                for i, r in enumerate(ratios)
            )
        )
        atomic_write_json(run / "DONE", {"best_step": 300})
    out = report(root, tmp_path / "out")
    saved = json.loads((out / "report.json").read_text())
    assert len(saved["stage1_warnings"]) == 1
    assert saved["stage1_warnings"][0].startswith("shared/src1_seed1 (points src1_tgt0_seed1): ")
    assert "contrast ratio 0.10 at the selected step 300" in saved["stage1_warnings"][0]
    assert "Stage 1 did not learn the translation" in (out / "report.md").read_text()


def test_report_names_the_runs_whose_model_had_no_plausible_validation(tmp_path):
    root = make_sweep(tmp_path / "sw")
    unit = "points/src1_tgt0_seed1"
    path = root / unit / "evaluate-self-supervised" / "metrics.json"
    metrics = json.loads(path.read_text())
    atomic_write_json(path, {**metrics, "summary": {**metrics["summary"], "model_plausible": False}})
    out = report(root, tmp_path / "out")
    assert json.loads((out / "report.json").read_text())["unselected_models"] == [f"{unit}/self-supervised"]
    md = (out / "report.md").read_text()
    assert "No plausible validation" in md and f"- {unit}/self-supervised" in md


def test_report_of_a_folder_that_is_not_a_sweep_names_the_file(tmp_path):
    with pytest.raises(DataError, match="sweep.json does not exist"):
        report(tmp_path)
