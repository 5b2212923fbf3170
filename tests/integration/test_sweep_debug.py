"""A tiny sweep with the real stages in ONE process (debug executor): one stage 1 shared by two
target fractions (the bounds' sharing is checked on the DAG in tests/unit/test_sweep.py); a rerun
runs nothing; ``report`` and ``advise`` work on what it wrote."""

from __future__ import annotations

import csv
import io
import json

import pytest

from hpc_modatts.data.splits import Split
from hpc_modatts.experiments.advise import advise
from hpc_modatts.experiments.report import report
from hpc_modatts.experiments.sweep import SweepSpec, run_sweep
from tests.integration.test_slurm import tiny_config, tiny_data  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def test_tiny_sweep_debug_executor_shares_stage1_reruns_nothing_reports_and_advises(tmp_path, tiny_data):  # noqa: F811
    cfg = tiny_config(
        tmp_path,
        tiny_data,
        "sw",
        "pipeline.executor=debug",
        "train.max_steps=1",  # 1-step stages
        "train.stage_overrides={translate: {max_steps: 1, batch_size: 2}, self-train: {max_steps: 1}}",
        "infer.overlap=0",
    )
    spec = SweepSpec(
        source_labeled=[1.0], target_labeled=[0.0, 0.5], seeds=[0], variants=["self-supervised"], val=0.15, test=0.25
    )
    sweep_dir = run_sweep(cfg, spec)
    rec = json.loads((sweep_dir / "pipeline.json").read_text())
    jobs = [j["node"] for j in rec["jobs"]]
    assert len(jobs) == len(set(jobs)) == 10  # translate, synthesize, 2 x (segment, round, predict, evaluate)
    assert [j for j in jobs if j.endswith("/translate")] == ["shared/src1_seed0/translate"]
    for point in ("src1_tgt0_seed0", "src1_tgt0.5_seed0"):
        metrics = json.loads((sweep_dir / "points" / point / "evaluate-self-supervised" / "metrics.json").read_text())
        assert 0.0 <= metrics["summary"]["dice"]["mean"] <= 1.0 and len(metrics["cases"]) == 2
    run_sweep(cfg, spec)  # idempotent: nothing is run or recorded again
    assert json.loads((sweep_dir / "pipeline.json").read_text())["jobs"] == rec["jobs"]

    rep = json.loads((report(sweep_dir) / "report.json").read_text())
    assert [(r["variant"], r["target_fraction"], r["cases"]) for r in rep["rows"]] == [
        ("self-supervised", 0.0, 2),
        ("self-supervised", 0.5, 2),
    ]
    assert rep["figures"] == [str(sweep_dir / "report" / "dice_vs_target_fraction.png")] and not rep["missing"]

    point = sweep_dir / "points" / "src1_tgt0_seed0"
    split = Split.load(sweep_dir / "splits" / "src1_tgt0_seed0.json")
    out = advise(point, budget=1, write_split=tmp_path / "advised.json")
    rows = list(csv.DictReader(io.StringIO((out / "advice.csv").read_text())))
    assert sorted(r["case"] for r in rows) == sorted(split.target_train)  # none annotated at 0 %
    assert [r["selected"] for r in rows] == ["1"] + ["0"] * (len(rows) - 1)
    assert {"instability", "volume"} <= set(rows[0]) and "disagreement" not in rows[0]  # one fold, one round
    assert (out / "top_cases.png").stat().st_size > 5_000
    advised = Split.load(tmp_path / "advised.json")
    assert advised.target_labeled == [rows[0]["case"]] and advised.test == split.test
