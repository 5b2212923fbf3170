"""A tiny sweep on the real single-node SLURM cluster: every job submitted at once with afterok,
one stage-1 job shared by two target fractions, a rerun while jobs are queued or running
submits nothing, a rerun after the end submits nothing, ``status`` shows the sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from hpc_modatts.experiments.sweep import SweepSpec, run_sweep
from tests.integration.test_slurm import sacct_times, tiny_config, tiny_data, wait_for_pipeline  # noqa: F401

pytestmark = pytest.mark.slurm


def test_tiny_sweep_is_one_afterok_dag_on_slurm_and_reruns_submit_nothing(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_config(
        tmp_path,
        tiny_data,
        "swslurm",
        "pipeline.self_training_rounds=0",
        "train.max_steps=1",
        "train.stage_overrides={translate: {max_steps: 1, batch_size: 2}}",
    )  # 1-step stages
    spec = SweepSpec(
        source_labeled=[1.0], target_labeled=[0.0, 0.5], seeds=[0], variants=["self-supervised"], val=0.15, test=0.25
    )
    t0 = time.time()
    sweep_dir = run_sweep(cfg, spec, executor="slurm", cluster="local_test")
    assert time.time() - t0 < 60  # submits only
    record = sweep_dir / "pipeline.json"
    jobs = {j["node"]: j["job_id"] for j in json.loads(record.read_text())["jobs"]}
    assert len(jobs) == len(set(jobs.values())) == 8  # translate, synthesize, 2 x (segment, predict, evaluate)
    assert [n for n in jobs if n.endswith("/translate")] == ["shared/src1_seed0/translate"]

    run_sweep(cfg, spec, executor="slurm", cluster="local_test")  # jobs in flight: nothing submitted again
    assert {j["node"]: j["job_id"] for j in json.loads(record.read_text())["jobs"]} == jobs

    wait_for_pipeline(sweep_dir, timeout_s=600)
    times = sacct_times(list(jobs.values()))
    assert {t[2] for t in times.values()} == {"COMPLETED"}
    nodes = {n["name"]: n for n in json.loads(record.read_text())["nodes"]}
    for name, node in nodes.items():  # afterok held across the shared stage 1
        for dep in node["deps"]:
            assert times[jobs[name]][0] >= times[jobs[dep]][1], f"{name} started before {dep} ended"
    for point in ("src1_tgt0_seed0", "src1_tgt0.5_seed0"):
        assert nodes[f"points/{point}/segment/self-supervised/fold_0"]["deps"] == ["shared/src1_seed0/synthesize"]

    run_sweep(cfg, spec, executor="slurm", cluster="local_test")  # all DONE: nothing submitted
    assert len(json.loads(record.read_text())["jobs"]) == 8
    env = {**os.environ, "COLUMNS": "300"}
    shown = subprocess.run(
        [sys.executable, "-m", "hpc_modatts", "status", str(sweep_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "8 jobs, 8 done, 0 running, 0 queued, 0 failed, 0 waiting" in shown.stdout, shown.stdout
