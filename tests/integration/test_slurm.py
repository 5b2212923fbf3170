"""Against a real single-node SLURM cluster (see conftest.py): a 2-task DeepSpeed ZeRO-2 job,
preemption -> checkpoint -> requeue -> resume, and a pipeline DAG chained with afterok."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import submitit

from hpc_modatts.config import ExperimentConfig, config_from_dict
from hpc_modatts.pipeline.dag import Dag, Node
from hpc_modatts.pipeline.status import pipeline_status
from hpc_modatts.pipeline.submit import load_preset, make_executor, node_parameters, run_pipeline, sbatch_script
from hpc_modatts.runs import atomic_write_json, mark_done

pytestmark = pytest.mark.slurm


def slurm_executor(folder: Path, **params) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(**{"timeout_min": 5, "nodes": 1, "cpus_per_task": 1, "mem_gb": 2,
                            "slurm_partition": "debug", **params})
    return ex


# ----------------------------------------------------------------------------- (a) DeepSpeed
def zero2_losses() -> dict:
    """Runs in each SLURM task: ZeRO-2 over gloo, same data on both ranks, 3 steps."""
    import torch
    import torch.nn.functional as F

    from hpc_modatts.config import DistributedConfig, OptimConfig
    from hpc_modatts.distributed import build_engine, init_distributed

    dcfg = DistributedConfig(zero_stage=2, precision="fp32", backend="gloo")
    env = init_distributed(dcfg)  # exports the rendezvous from the submitit/SLURM task
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1))
    engine = build_engine(model, OptimConfig(lr=1e-2), dcfg, env, micro_batch=2, name="gen")
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(3):
        x = torch.randn(2, 1, 8, 8, 8, generator=gen)  # (B, C, X, Y, Z)
        loss = F.binary_cross_entropy_with_logits(engine(x), (x > 0).float())
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return {"rank": env.rank, "world": env.world_size, "losses": losses}


def test_two_task_deepspeed_zero2_job_ranks_agree(tmp_path):
    job = slurm_executor(tmp_path / "jobs", tasks_per_node=2, mem_gb=4).submit(zero2_losses)
    results = sorted(job.results(), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    assert results[0]["losses"] == results[1]["losses"]
    assert results[0]["losses"][-1] < results[0]["losses"][0]


# ----------------------------------------------------------------------------- (b) preemption
class CountingJob(submitit.helpers.Checkpointable):
    """Counts to ``steps``, saving its progress to disk after every step."""

    def __init__(self, state_file: str, steps: int):
        self.state_file, self.steps = state_file, steps

    def __call__(self) -> dict:
        path = Path(self.state_file)
        state = json.loads(path.read_text()) if path.is_file() else {"step": 0, "starts": []}
        state["starts"].append(state["step"])
        while state["step"] < self.steps:
            time.sleep(0.5)
            state["step"] += 1
            atomic_write_json(path, state)
        return {**state, "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}


def test_preempted_job_is_requeued_and_resumes(tmp_path):
    state = tmp_path / "state.json"
    job = slurm_executor(tmp_path / "jobs").submit(CountingJob(str(state), steps=12))
    deadline = time.time() + 60
    while not (state.is_file() and json.loads(state.read_text())["step"] >= 3):
        assert time.time() < deadline, f"job {job.job_id} made no progress"
        time.sleep(0.3)
    job._interrupt()  # SIGTERM then USR2, as on preemption: checkpoint() -> requeue
    out = job.result()
    assert out["step"] == 12 and out["restarts"] >= 1
    assert len(out["starts"]) >= 2 and out["starts"][0] == 0 and out["starts"][1] >= 3  # continued


# ----------------------------------------------------------------------------- (c) afterok DAG
def timed_stage(cfg: ExperimentConfig) -> Path:
    """A light stage: records start/end times in its folder (given as train.pseudo_labels)."""
    out = Path(cfg.train.pseudo_labels)
    start = time.time()
    time.sleep(1.0)
    atomic_write_json(out / "times.json", {"start": start, "end": time.time(),
                                           "job": os.environ.get("SLURM_JOB_ID")})
    mark_done(out)
    return out


def test_pipeline_dag_runs_in_order_with_afterok(tmp_path):
    cfg = config_from_dict({"name": "chain", "run_root": str(tmp_path), "pipeline": {"executor": "slurm"}})
    root = tmp_path / "chain"
    fn = "tests.integration.test_slurm:timed_stage"
    nodes = [Node(n, fn, {"train.pseudo_labels": str(root / n)}, root / n, deps)
             for n, deps in (("a", ()), ("b", ("a",)), ("c", ("a", "b")))]
    record = run_pipeline(cfg, executor="slurm", cluster="local_test", dag=Dag(nodes), check=False, wait=True)
    times = {n: json.loads((root / n / "times.json").read_text()) for n in "abc"}
    assert times["a"]["end"] <= times["b"]["start"] and times["b"]["end"] <= times["c"]["start"]
    jobs = {j["node"]: j["job_id"] for j in json.loads(record.read_text())["jobs"]}
    assert {n: t["job"] for n, t in times.items()} == jobs  # each node ran as its own SLURM job
    assert [r["state"] for r in pipeline_status(root)] == ["DONE", "DONE", "DONE"]
    run_pipeline(cfg, executor="slurm", cluster="local_test", dag=Dag(nodes), check=False)  # idempotent
    assert len(json.loads(record.read_text())["jobs"]) == 3


def test_executor_writes_the_same_sbatch_text_as_the_golden_path(tmp_path):
    """The golden tests render with ``sbatch_script``; the real SlurmExecutor must agree."""
    cfg = config_from_dict({"name": "x", "run_root": str(tmp_path)})
    node = Node("segment/self-supervised/fold_0", "m:f", {}, tmp_path / "n")
    params = node_parameters(node, cfg, load_preset("example_a100"), ["12", "13"])
    ex = make_executor(tmp_path / "jobs", "slurm", params)
    cmd = "python -u -m submitit.core._submit FOLDER"
    assert ex._executor._make_submission_file_text(cmd, "uid") == sbatch_script(params, ex._executor.folder, cmd)
