"""The whole tiny pipeline in ONE process with submitit's debug executor (the path a user takes
under a debugger): every stage, including GenSeg and a self-training round, shares one
process group; the same DAG then re-run submits nothing."""

from __future__ import annotations

import json

import pytest

from hpc_modatts.pipeline import run_pipeline
from hpc_modatts.runs import stage_dir
from tests.integration.test_slurm import tiny_config, tiny_data  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def test_tiny_pipeline_debug_executor_runs_every_stage_in_process(tmp_path, tiny_data):  # noqa: F811
    cfg = tiny_config(
        tmp_path, tiny_data, "dbg", "pipeline.executor=debug", "pipeline.variants=[semi-supervised,source-supervised]"
    )
    record = run_pipeline(cfg)
    root = cfg.run_dir
    for v in ("semi-supervised", "source-supervised"):
        metrics = json.loads((stage_dir(root, "evaluate", v) / "metrics.json").read_text())
        assert 0.0 <= metrics["summary"]["dice"]["mean"] <= 1.0 and metrics["cases"]
    assert (stage_dir(root, "self-train", "semi-supervised", fold=0, round_=1) / "DONE").is_file()
    rec = json.loads(record.read_text())
    jobs = rec["jobs"]
    assert sorted(j["node"] for j in jobs) == sorted(n["name"] for n in rec["nodes"])  # each node ran once
    assert len(jobs) == 9  # translate, synthesize, 2 x segment, 1 round, 2 x predict, 2 x evaluate
    run_pipeline(cfg)  # idempotent: everything is DONE, nothing is run again
    assert json.loads(record.read_text())["jobs"] == jobs
