"""Against a real single-node SLURM cluster (see conftest.py): a 2-task DeepSpeed ZeRO-2 job,
preemption -> checkpoint -> requeue -> resume, a pipeline DAG chained with afterok, the tiny
whole MoDATTS pipeline (phantom -> convert -> split -> every stage as its own SLURM job) and a
2-rank ZeRO-2 segment node submitted through the pipeline path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import submitit

from hpc_modatts.config import ExperimentConfig, config_from_dict, load_config
from hpc_modatts.pipeline.dag import Dag, Node, build_dag
from hpc_modatts.pipeline.status import pipeline_status
from hpc_modatts.pipeline.submit import run_pipeline
from hpc_modatts.runs import atomic_write_json, mark_done

pytestmark = pytest.mark.slurm


def slurm_executor(folder: Path, **params) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(
        **{"timeout_min": 5, "nodes": 1, "cpus_per_task": 1, "mem_gb": 2, "slurm_partition": "debug", **params}
    )
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
    atomic_write_json(out / "times.json", {"start": start, "end": time.time(), "job": os.environ.get("SLURM_JOB_ID")})
    mark_done(out)
    return out


def test_pipeline_dag_runs_in_order_with_afterok(tmp_path):
    cfg = config_from_dict({"name": "chain", "run_root": str(tmp_path), "pipeline": {"executor": "slurm"}})
    root = tmp_path / "chain"
    fn = "tests.integration.test_slurm:timed_stage"
    nodes = [
        Node(n, fn, {"train.pseudo_labels": str(root / n)}, root / n, deps)
        for n, deps in (("a", ()), ("b", ("a",)), ("c", ("a", "b")))
    ]
    record = run_pipeline(cfg, executor="slurm", cluster="local_test", dag=Dag(nodes), check=False, wait=True)
    times = {n: json.loads((root / n / "times.json").read_text()) for n in "abc"}
    assert times["a"]["end"] <= times["b"]["start"] and times["b"]["end"] <= times["c"]["start"]
    jobs = {j["node"]: j["job_id"] for j in json.loads(record.read_text())["jobs"]}
    assert {n: t["job"] for n, t in times.items()} == jobs  # each node ran as its own SLURM job
    assert [r["state"] for r in pipeline_status(root)] == ["DONE", "DONE", "DONE"]
    run_pipeline(cfg, executor="slurm", cluster="local_test", dag=Dag(nodes), check=False)  # idempotent
    assert len(json.loads(record.read_text())["jobs"]) == 3


# ----------------------------------------------------------------------------- (d) whole pipeline
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "hpc_modatts" / "configs" / "demo_cpu.yaml"
FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
TINY = [  # every stage a couple of optimiser steps on 32x32 slices / 32x32x16 patches
    "data.slice_size=[32,32]",
    "data.patch_size=[32,32,16]",
    "train.max_steps=2",
    "train.batch_size=2",
    "train.val_cases=1",
    "train.log_every=1",
    "train.stage_overrides={translate: {max_steps: 2, batch_size: 2}, self-train: {max_steps: 2}}",
    "pipeline.folds=1",
    "pipeline.self_training_rounds=1",
    # two-step models are degenerate by construction: their pseudo-labels would (rightly) be
    # refused by the volume guard, which has its own tests (tests/unit/test_guards.py)
    "train.max_volume_factor=1000000",
    "pipeline.cpus_per_task=1",
    "pipeline.mem_gb=2",
    "pipeline.timeout_min=10",  # 2 jobs side by side
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    """8 phantom cases at 4 mm -> zarr store -> split (source T1 annotated, target T2 not)."""
    from hpc_modatts.demo import prepare_data

    out = tmp_path_factory.mktemp("tiny_data")
    return prepare_data(out, cases=8, seed=0, spacing=4, source="t1", target="t2", val=0.15, test=0.25)


def tiny_config(root: Path, data: tuple[Path, Path], name: str, *extra: str) -> ExperimentConfig:
    store, split = data
    return load_config(
        DEMO,
        [
            f"run_root={root}",
            f"name={name}",
            f"data.store={store}",
            f"data.split={split}",
            "pipeline.executor=slurm",
            *TINY,
            *extra,
        ],
    )


def job_log_tail(folder: str, job_id: str, lines: int = 15) -> str:
    err = Path(folder) / f"{job_id}_0_log.err"
    return "\n".join(err.read_text().splitlines()[-lines:]) if err.is_file() else f"(no {err})"


def cancel(jobs) -> None:
    """scancel the recorded jobs, so a failed test leaves no queued work for the next ones."""
    subprocess.run(["scancel", *(job["job_id"] for job in jobs)], capture_output=True, timeout=30)


def wait_for_pipeline(run_dir: Path, timeout_s: float) -> list[dict]:
    """Poll ``pipeline_status`` until every node is DONE; fail fast (with the log) on a failed job."""
    record = json.loads((run_dir / "pipeline.json").read_text())
    jobs = {j["node"]: j for j in record["jobs"]}
    deadline = time.time() + timeout_s
    while True:
        rows = pipeline_status(run_dir)
        if all(r["state"] == "DONE" for r in rows):
            return rows
        bad = [r for r in rows if r["state"].split()[0] in FAILED_STATES]
        if bad:
            first = [r for r in bad if not r["state"].startswith("CANCELLED")] or bad
            j = jobs[first[0]["node"]]
            cancel(jobs.values())
            pytest.fail(
                f"{[(r['node'], r['state']) for r in bad]}; log of {j['node']} ({j['job_id']}):\n"
                f"{job_log_tail(j['folder'], j['job_id'])}"
            )
        if time.time() > deadline:
            cancel(jobs.values())
            pytest.fail(f"pipeline not done after {timeout_s:.0f} s: {[(r['node'], r['state']) for r in rows]}")
        time.sleep(2.0)


def sacct_times(job_ids: list[str], timeout_s: float = 60) -> dict[str, tuple[float, float, str]]:
    """job id -> (start, end, state) of the allocations, waiting for slurmdbd to record the ends."""
    deadline = time.time() + timeout_s
    while True:
        out = subprocess.run(
            ["sacct", "-j", ",".join(job_ids), "-X", "-n", "-P", "-o", "JobID,Start,End,State"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        rows = {}
        for line in out.splitlines():
            job, start, end, state = line.strip().split("|")[:4]
            if job in job_ids and "Unknown" not in (start, end) and start and end:
                rows[job] = (
                    datetime.fromisoformat(start).timestamp(),
                    datetime.fromisoformat(end).timestamp(),
                    state.split()[0],
                )
        if len(rows) == len(job_ids) or time.time() > deadline:
            assert set(rows) == set(job_ids), f"sacct has no start/end for {sorted(set(job_ids) - set(rows))}"
            return rows
        time.sleep(1.0)


def test_tiny_whole_pipeline_runs_as_afterok_chained_slurm_jobs(tiny_data, tmp_path):
    # MoDATTS (3D, two stages) beside M-GenSeg (2D, end to end: no stage 1, so it starts at once)
    cfg = tiny_config(tmp_path, tiny_data, "tiny", "pipeline.variants=[self-supervised,m-genseg]")
    dag = build_dag(cfg)
    assert len(dag) == 9  # translate, synthesize, 2 x (segment, predict, evaluate), 1 round
    t0 = time.time()
    record = run_pipeline(cfg, executor="slurm", cluster="local_test")
    assert time.time() - t0 < 60  # the driver only submits; nothing has run yet
    assert not any(n.done for n in dag.nodes.values())
    jobs = {j["node"]: j["job_id"] for j in json.loads(record.read_text())["jobs"]}
    assert set(jobs) == set(dag.nodes) and len(set(jobs.values())) == len(dag)

    wait_for_pipeline(cfg.run_dir, timeout_s=400)
    times = sacct_times(list(jobs.values()))
    assert {t[2] for t in times.values()} == {"COMPLETED"}
    for node in dag.nodes.values():  # afterok held: no job started before its parents ended
        for dep in node.deps:
            assert times[jobs[node.name]][0] >= times[jobs[dep]][1], f"{node.name} started before {dep} ended"
    spans = sorted((s, e) for s, e, _ in times.values())  # the two branches shared the 2 cores
    assert any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)), "no two jobs ever ran together"

    test_cases = json.loads(Path(cfg.data.split).read_text())["test"]
    for v in ("self-supervised", "m-genseg"):
        metrics = json.loads((cfg.run_dir / f"evaluate-{v}" / "metrics.json").read_text())
        assert metrics["summary"]["dice"]["n"] == len(test_cases)
        assert 0.0 <= metrics["summary"]["dice"]["mean"] <= 1.0
    round_1 = cfg.run_dir / "segment-self-supervised" / "fold_0" / "round_1"
    assert json.loads((round_1 / "DONE").read_text())["steps"] == 2  # the tiny overrides reached the job

    env = {**os.environ, "COLUMNS": "400"}
    shown = subprocess.run(
        [sys.executable, "-m", "hpc_modatts", "status", str(cfg.run_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    for name, job_id in jobs.items():
        line = next((ln for ln in shown.stdout.splitlines() if f" {name} " in ln), "")
        assert job_id in line and "DONE" in line, f"{name}: {line!r}\n{shown.stdout}"

    run_pipeline(cfg, executor="slurm", cluster="local_test")  # finished: submits nothing
    assert len(json.loads(record.read_text())["jobs"]) == len(dag)


# ----------------------------------------------------------------------------- (e) 2-rank node
def test_cpu_segment_node_with_two_tasks_trains_zero2_on_two_ranks(tiny_data, tmp_path):
    cfg = tiny_config(
        tmp_path,
        tiny_data,
        "ranks",
        "pipeline.variants=[source-supervised]",
        "pipeline.tasks_per_node=2",
        "pipeline.mem_gb=4",
        "distributed.zero_stage=2",
        "distributed.backend=gloo",
        "distributed.precision=fp32",
    )
    node = build_dag(cfg)["segment/source-supervised/fold_0"]
    assert node.resources.tasks_per_node == 2 and node.resources.gpus_per_node == 0
    record = run_pipeline(cfg, executor="slurm", cluster="local_test", dag=Dag([node]), wait=True)
    job = json.loads(record.read_text())["jobs"][0]

    assert json.loads((node.run_dir / "DONE").read_text())["steps"] == 2
    tag = (node.run_dir / "checkpoints" / "latest").read_text().strip()
    ckpt = node.run_dir / "checkpoints" / tag
    assert json.loads((ckpt / "trainer.json").read_text())["world_size"] == 2
    # ZeRO-2 partitions the optimiser state: one shard per rank
    shards = sorted(p.name for p in ckpt.rglob("*optim_states.pt"))
    assert any("zero_pp_rank_0_" in s for s in shards) and any("zero_pp_rank_1_" in s for s in shards), shards
    assert load_config(node.run_dir / "config.yaml").distributed.zero_stage == 2
    for task in (0, 1):  # both SLURM tasks of the one job ran
        assert (Path(job["folder"]) / f"{job['job_id']}_{task}_log.out").is_file()
