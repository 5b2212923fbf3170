"""The experiment DAG: fan-out, topological order, skipping, submission through real submitit
executors (debug in-process, local subprocesses), pipeline.json, status, input errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import submitit

from hpc_modatts.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from hpc_modatts.data.errors import DataError
from hpc_modatts.pipeline.dag import SYNTH_MARKER, Dag, Node, build_dag, node_config
from hpc_modatts.pipeline.status import pipeline_status, print_status
from hpc_modatts.pipeline.submit import StageJob, StagesFailed, available_presets, run_pipeline
from hpc_modatts.pipeline.waves import (
    LIGHT_STAGE_WORK,
    LOCAL_JOB_ENV,
    chain_work,
    default_parallel,
    local_job_environment,
)
from hpc_modatts.runs import is_done, mark_done


def make_cfg(tmp_path: Path, **pipeline) -> ExperimentConfig:
    return config_from_dict(
        {
            "name": "exp",
            "run_root": str(tmp_path / "runs"),
            "data": {"store": str(tmp_path / "store.zarr"), "split": str(tmp_path / "split.json")},
            "pipeline": pipeline,
        }
    )


# ----------------------------------------------------------------------------- light stages
def record_stage(cfg: ExperimentConfig) -> Path:
    """A light stage: appends its folder name to order.log, then writes DONE there."""
    out = Path(cfg.train.pseudo_labels)
    with open(out.parent / "order.log", "a") as f:
        f.write(f"{out.name} {time.time():.6f}\n")
    mark_done(out)
    return out


def threads_stage(cfg: ExperimentConfig) -> Path:
    """A light stage that records the torch threads the executor gave it."""
    out = Path(cfg.train.pseudo_labels)
    out.mkdir(parents=True, exist_ok=True)
    (out / "threads").write_text(str(cfg.distributed.threads_per_rank))
    mark_done(out)
    return out


def failing_stage(cfg: ExperimentConfig) -> Path:
    raise RuntimeError("stage exploded")


def chain_dag(root: Path, fn: str = "tests.unit.test_dag:record_stage", n: int = 3) -> Dag:
    nodes = []
    for i in range(n):
        d = root / f"n{i}"
        nodes.append(Node(f"n{i}", fn, {"train.pseudo_labels": str(d)}, d, (f"n{i - 1}",) if i else ()))
    return Dag(nodes)


# ----------------------------------------------------------------------------- structure
def test_fan_out_per_variant_fold_round_in_topological_order(tmp_path):
    cfg = make_cfg(tmp_path, folds=2, self_training_rounds=2, variants=["self-supervised", "target-supervised"])
    dag = build_dag(cfg)
    names = [n.name for n in dag.topological()]
    assert len(names) == len(set(names)) == 14
    pos = {n: i for i, n in enumerate(names)}
    for n in dag.topological():
        assert all(pos[d] < pos[n.name] for d in n.deps), n.name
    for k in (0, 1):
        r2 = dag[f"segment/self-supervised/fold_{k}/round_2"]
        assert r2.deps == (f"segment/self-supervised/fold_{k}/round_1",)
        assert r2.overrides["train.init_from"] == str(dag[f"segment/self-supervised/fold_{k}/round_1"].run_dir)
        assert r2.overrides["data.fold"] == k
        assert dag[f"segment/self-supervised/fold_{k}"].deps == ("synthesize",)
        assert dag[f"segment/target-supervised/fold_{k}"].deps == ()  # bounds skip translation
    assert "segment/target-supervised/fold_0/round_1" not in dag.nodes  # bounds are not self-trained
    assert dag["predict/self-supervised"].deps == (
        "segment/self-supervised/fold_0/round_2",
        "segment/self-supervised/fold_1/round_2",
    )
    assert "evaluate/target-supervised" in dag["evaluate/self-supervised"].deps
    assert dag["synthesize"].marker == SYNTH_MARKER and dag["synthesize"].deps == ("translate",)


def test_convert_node_when_store_missing_and_training_resources(tmp_path):
    cfg = make_cfg(tmp_path, source_dir=str(tmp_path), variants=["source-supervised"], gpus_per_node=4)
    dag = build_dag(cfg)
    assert [n.name for n in dag.topological()] == [
        "convert",
        "segment/source-supervised/fold_0",
        "predict/source-supervised",
        "evaluate/source-supervised",
    ]
    seg = dag["segment/source-supervised/fold_0"]
    assert seg.deps == ("convert",)
    assert (seg.resources.tasks_per_node, seg.resources.gpus_per_node) == (4, 4)
    # predict and evaluate (which translates the test cases' pseudo-targets) take one task, one GPU
    for name in ("predict/source-supervised", "evaluate/source-supervised"):
        assert (dag[name].resources.tasks_per_node, dag[name].resources.gpus_per_node) == (1, 1)
    assert dag["convert"].resources.gpus_per_node == 0


def test_done_nodes_are_skipped_and_dependents_released(tmp_path):
    cfg = make_cfg(tmp_path)
    dag = build_dag(cfg)
    mark_done(dag["translate"].run_dir)
    assert [n.name for n in dag.pending()][0] == "synthesize"
    mark_done(dag["translate"].run_dir, SYNTH_MARKER)
    pending = dag.pending()
    assert pending[0].name == "segment/self-supervised/fold_0" and pending[0].deps == ()


def test_node_config_applies_overrides(tmp_path):
    from hpc_modatts.config import apply_overrides

    cfg = apply_overrides(
        make_cfg(tmp_path, self_training_rounds=1), ["train.stage_overrides={self-train: {max_steps: 4}}"]
    )
    node = build_dag(cfg)["segment/self-supervised/fold_0/round_1"]
    ncfg = node_config(cfg, node)
    assert ncfg.train.stage == "self-train" and ncfg.train.init_from.endswith("fold_0")
    assert (ncfg.train.round, ncfg.train.rounds, ncfg.data.fold) == (1, 1, 0)
    assert ncfg.train.max_steps == 4  # the stage's overrides block, as under `hpc-modatts train`
    assert cfg.train.init_from == ""  # the experiment config is untouched


def test_stage_job_checkpoint_requeues_itself(tmp_path):
    job = StageJob(chain_dag(tmp_path)["n0"], make_cfg(tmp_path))
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission) and delayed.function is job


# ----------------------------------------------------------------------------- submission
def test_debug_executor_runs_in_order_records_and_is_idempotent(tmp_path):
    cfg = make_cfg(tmp_path)
    root = tmp_path / "runs" / "exp"
    record = run_pipeline(cfg, executor="debug", dag=chain_dag(root), check=False)
    order = [line.split()[0] for line in (root / "order.log").read_text().splitlines()]
    assert order == ["n0", "n1", "n2"]
    data = json.loads(record.read_text())
    assert [j["node"] for j in data["jobs"]] == ["n0", "n1", "n2"]
    assert all(r["state"] == "DONE" for r in pipeline_status(root))
    run_pipeline(cfg, executor="debug", dag=chain_dag(root), check=False)  # all done: nothing runs
    assert len(json.loads(record.read_text())["jobs"]) == 3
    assert len((root / "order.log").read_text().splitlines()) == 3


def test_local_executor_real_subprocesses_and_failure(tmp_path):
    cfg = make_cfg(tmp_path, timeout_min=2)
    root = tmp_path / "runs" / "exp"
    run_pipeline(cfg, executor="local", dag=chain_dag(root, n=2), check=False)
    stamps = [float(line.split()[1]) for line in (root / "order.log").read_text().splitlines()]
    assert len(stamps) == 2 and stamps[0] < stamps[1] and is_done(root / "n1")
    bad = Dag([Node("boom", "tests.unit.test_dag:failing_stage", {}, root / "boom")])
    with pytest.raises(Exception, match="stage exploded"):
        run_pipeline(cfg, executor="local", dag=bad, check=False)
    states = {r["node"]: r["state"] for r in print_status(root)}
    assert states == {"boom": "FAILED"}


def test_local_executor_shares_the_cores_among_the_jobs_alive(tmp_path):
    cfg = make_cfg(tmp_path, timeout_min=2)  # distributed.threads_per_rank=0: the executor decides
    root = tmp_path / "runs" / "exp"
    fn = "tests.unit.test_dag:threads_stage"
    nodes = [
        Node(n, fn, {"train.pseudo_labels": str(root / n)}, root / n, deps)
        for n, deps in (("a", ()), ("b", ()), ("after", ("a", "b")))
    ]
    run_pipeline(cfg, executor="local", dag=Dag(nodes), check=False)
    cores = len(os.sched_getaffinity(0))
    got = {n: int((root / n / "threads").read_text()) for n in ("a", "b", "after")}
    assert got == {"a": max(1, cores // 2), "b": max(1, cores // 2), "after": cores}
    fixed = make_cfg(tmp_path / "fixed", timeout_min=2)
    fixed.distributed.threads_per_rank = 3  # an explicit value is never changed
    root = tmp_path / "fixed" / "runs" / "exp"
    node = Node("c", fn, {"train.pseudo_labels": str(root / "c")}, root / "c")
    run_pipeline(fixed, executor="local", dag=Dag([node]), check=False)
    assert (root / "c" / "threads").read_text() == "3"


def test_local_failure_fails_its_descendants_only_like_afterok(tmp_path):
    """A failed stage never runs its children; an independent branch still runs to the end."""
    cfg = make_cfg(tmp_path, timeout_min=2)
    root = tmp_path / "runs" / "exp"
    nodes = [
        Node("boom", "tests.unit.test_dag:failing_stage", {}, root / "boom"),
        Node(
            "child",
            "tests.unit.test_dag:record_stage",
            {"train.pseudo_labels": str(root / "child")},
            root / "child",
            ("boom",),
        ),
        Node(
            "grandchild",
            "tests.unit.test_dag:record_stage",
            {"train.pseudo_labels": str(root / "grandchild")},
            root / "grandchild",
            ("child",),
        ),
        Node("other", "tests.unit.test_dag:record_stage", {"train.pseudo_labels": str(root / "other")}, root / "other"),
    ]
    with pytest.raises(StagesFailed) as err:
        run_pipeline(cfg, executor="local", dag=Dag(nodes), check=False)
    assert err.value.failed.keys() == {"boom"} and "stage exploded" in err.value.failed["boom"]
    assert err.value.skipped == ["child", "grandchild"]
    assert str(err.value).count("\n") == 0  # one line for the CLI
    assert is_done(root / "other") and not (root / "child").exists()


# ----------------------------------------------------------------------------- bad input
def test_bad_executor_and_unknown_preset_fail_before_submission(tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(ConfigError, match="executor='pbs'"):
        run_pipeline(cfg, executor="pbs")
    with pytest.raises(ConfigError, match="no such preset") as e:
        run_pipeline(cfg, executor="local", cluster="nope")
    assert "local_test" in str(e.value) and "local_test" in available_presets()
    assert not (tmp_path / "runs").exists()


def test_missing_store_split_or_run_folder_fail_before_submission(tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(DataError, match="store.zarr does not exist"):
        run_pipeline(cfg, executor="debug")
    from hpc_modatts.data.store import Store

    Store.create(tmp_path / "store.zarr")
    with pytest.raises(DataError, match="split.json does not exist"):
        run_pipeline(cfg, executor="debug")
    from hpc_modatts.data.splits import Split

    Split("t1", "t2", [], [], [], [], [], []).save(tmp_path / "split.json")
    from hpc_modatts.config import apply_overrides

    cfg = apply_overrides(cfg, [f"train.translator_run={tmp_path / 'nowhere'}"])
    with pytest.raises(DataError, match="nowhere is not a finished run folder"):
        run_pipeline(cfg, executor="debug")
    assert not (tmp_path / "runs").exists()


def test_local_run_warns_when_gpus_per_node_0_would_hide_this_machines_gpu(tmp_path, monkeypatch):
    """submitit's local executor exports CUDA_VISIBLE_DEVICES="" to a job asking for no GPU: on a
    GPU machine (here: a driver's nvidia-smi on PATH) the CPU default would train on the CPU."""
    from hpc_modatts.pipeline.submit import hidden_gpu_warning

    cfg = make_cfg(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert hidden_gpu_warning(cfg, "local") is None  # no GPU here: nothing to say
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert "pipeline.gpus_per_node=1" in hidden_gpu_warning(cfg, "local")
    assert hidden_gpu_warning(cfg, "slurm") is None and hidden_gpu_warning(cfg, "debug") is None
    gpu_cfg = make_cfg(tmp_path, gpus_per_node=1)
    assert hidden_gpu_warning(gpu_cfg, "local") is None


def test_ready_nodes_start_longest_chain_first_within_the_parallel_cap(tmp_path):
    """The critical path must not queue behind a short branch: short || long1 -> long2 -> long3."""
    cfg = make_cfg(tmp_path, timeout_min=2)
    root = tmp_path / "runs" / "exp"
    fn = "tests.unit.test_dag:threads_stage"
    spec = (("short", ()), ("long1", ()), ("long2", ("long1",)), ("long3", ("long2",)))
    nodes = [Node(n, fn, {"train.pseudo_labels": str(root / n)}, root / n, deps) for n, deps in spec]
    assert {k: v / LIGHT_STAGE_WORK for k, v in chain_work(nodes, cfg).items()} == {
        "short": 1,
        "long1": 3,
        "long2": 2,
        "long3": 1,
    }
    run_pipeline(cfg, executor="local", dag=Dag(nodes), check=False, max_parallel=1)
    order = [j["node"] for j in json.loads((root / "pipeline.json").read_text())["jobs"]]
    assert order[0] == "long1" and sorted(order) == sorted(n for n, _ in spec)
    assert default_parallel(cfg) == len(os.sched_getaffinity(0))  # threads_per_rank 0: one job per core


def test_the_demo_dag_starts_translate_then_the_semi_supervised_branch_first(tmp_path):
    variants = "[source-supervised,self-supervised,semi-supervised,target-supervised]"
    cfg = load_config("demo_cpu", [f"run_root={tmp_path}", f"pipeline.variants={variants}"])
    work = chain_work(build_dag(cfg).pending(), cfg)
    assert max(work, key=work.get) == "translate"
    segments = sorted((n for n in work if n.startswith("segment/") and "round" not in n), key=work.get)
    assert segments[-1] == "segment/semi-supervised/fold_0"  # the GenSeg branch: the critical path


def test_local_jobs_start_with_the_allocator_settings_unless_the_submitter_set_its_own(tmp_path, monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")  # the user's value wins
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="local")
    ex.update_parameters(timeout_min=2)
    with local_job_environment():
        jobs = {k: ex.submit(os.getenv, k) for k in LOCAL_JOB_ENV}  # a real subprocess each
    seen = {k: job.result() for k, job in jobs.items()}
    assert seen == {
        "MALLOC_MMAP_THRESHOLD_": LOCAL_JOB_ENV["MALLOC_MMAP_THRESHOLD_"],
        "MALLOC_TRIM_THRESHOLD_": "12345",
    }
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ  # the submitter's own environment is unchanged
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"
