"""Submit a whole experiment DAG through submitit: ``slurm``, ``local`` or ``debug``.

* **slurm**: every pending node is submitted at once, each with
  ``--dependency=afterok:<ids of its pending parents>``, ``--requeue`` and
  ``--kill-on-invalid-dep=yes``; no driver process stays alive. Cluster shape and sbatch
  options come from a preset YAML (``hpc_modatts/clusters/<name>.yaml`` or a path).
* **local** (real subprocesses) / **debug** (in-process): submitit ignores ``slurm_*`` options
  and has no dependencies (docs/architecture.md, "Measured facts"), so the nodes run in topological waves and
  each wave waits for its jobs' results before its dependents are submitted.

Every job is a ``StageJob``: a ``submitit.helpers.Checkpointable`` that runs the stage API
(which resumes from its own latest checkpoint) and, on preemption or timeout, is requeued as
itself. Multi-GPU nodes run one task per GPU; each task exports the torch.distributed
rendezvous (``TorchDistributedEnvironment``) and then takes the same path as under the
deepspeed launcher (``hpc_modatts.distributed.init_distributed``).
Every submission is recorded in ``<run_root>/<name>/pipeline.json``.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import shutil
import time
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import submitit
import yaml

from hpc_modatts.config import ConfigError, ExperimentConfig, PipelineConfig, check_one_line
from hpc_modatts.data.errors import DataError
from hpc_modatts.pipeline.dag import Dag, Node, build_dag, needs_convert, node_config
from hpc_modatts.pipeline.status import pipeline_status
from hpc_modatts.pipeline.watch import PipelineWatcher
from hpc_modatts.runs import atomic_write_json, is_done, mark_done, stage_dir

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11; annotations only
    from importlib.resources.abc import Traversable

log = logging.getLogger(__name__)

EXECUTORS = ("slurm", "local", "debug")
PRESETS_DIR: Path | Traversable = (Path(os.environ["HPC_MODATTS_PRESETS"]) if os.environ.get("HPC_MODATTS_PRESETS")
                                   else files("hpc_modatts") / "clusters")
"""Where cluster presets are looked up by name: the package's ``clusters/`` (package data, read
through importlib.resources so a wheel install has them), or $HPC_MODATTS_PRESETS."""
PRESET_KEYS = {"partition", "account", "qos", "constraint", "gpus_per_node", "cpus_per_task", "mem_gb",
               "timeout_min", "nodes", "signal_delay_s", "setup", "additional", "description", "interface"}
"""Keys a preset YAML may hold (``additional``: extra ``#SBATCH --key=value`` options; ``interface``:
the network interface of ``convert --scheduler slurm``'s dask workers, e.g. ib0)."""
SHAPE_KEYS = ("gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "nodes")
"""Preset keys that fill the pipeline.* fields a config leaves at their defaults."""


# ----------------------------------------------------------------------------- presets
def available_presets() -> list[str]:
    if not PRESETS_DIR.is_dir():
        return []
    return sorted(p.name[:-5] for p in PRESETS_DIR.iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A cluster preset by name (in ``PRESETS_DIR``) or YAML path; ConfigError if unknown/bad."""
    p: Path | Traversable = Path(name_or_path)
    if not p.is_file():
        p = PRESETS_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ConfigError(f"pipeline.cluster={name_or_path!r}: no such preset; available: "
                          f"{available_presets()} (in {PRESETS_DIR}) or a YAML path")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"cluster preset {p}: top level must be a mapping")
    unknown = sorted(set(data) - PRESET_KEYS)
    if unknown:
        raise ConfigError(f"cluster preset {p}: unknown key {unknown[0]}; allowed: {sorted(PRESET_KEYS)}")
    return data


def apply_preset(cfg: ExperimentConfig, preset: dict[str, Any]) -> ExperimentConfig:
    """Fill the pipeline.* shape fields that ``cfg`` leaves at their defaults from the preset."""
    from hpc_modatts.config import apply_overrides

    defaults = PipelineConfig()
    items = [f"pipeline.{k}={int(preset[k])}" for k in SHAPE_KEYS
             if k in preset and getattr(cfg.pipeline, k) == getattr(defaults, k)]
    return apply_overrides(cfg, items)


# ----------------------------------------------------------------------------- the job
def resolve_callable(path: str) -> Callable[[ExperimentConfig], Any]:
    """``"package.module:function"`` -> the function."""
    mod, _, fn = path.partition(":")
    return getattr(importlib.import_module(mod), fn)


class StageJob(submitit.helpers.Checkpointable):
    """One pipeline node as a requeueable submitit job."""

    def __init__(self, node: Node, cfg: ExperimentConfig):
        self.node = node
        self.cfg = cfg

    def __call__(self) -> str:
        _export_distributed_env()
        if self.node.done:  # requeued after it had finished, or re-run: nothing to do
            return str(self.node.run_dir)
        fn = resolve_callable(self.node.fn)
        return str(fn(node_config(self.cfg, self.node)))

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Preemption / timeout: requeue the same job; the stage resumes from its checkpoint."""
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _export_distributed_env() -> None:
    """In a multi-task submitit job, export RANK/WORLD_SIZE/MASTER_* for torch.distributed."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (e.g. called directly)
        return
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def convert_stage(cfg: ExperimentConfig) -> Path:
    """Pipeline node: NIfTI ``pipeline.source_dir`` -> ``data.store`` (then DONE)."""
    from hpc_modatts.data.convert import convert

    convert(cfg.pipeline.source_dir, cfg.data.store, layout=cfg.pipeline.layout)
    out = stage_dir(cfg.run_dir, "convert")
    mark_done(out, store=str(cfg.data.store))
    return out


# ----------------------------------------------------------------------------- checks
def check_inputs(cfg: ExperimentConfig, executor: str) -> None:
    """Fail with one line, before anything is submitted, on bad executor/store/split/run folder."""
    if executor not in EXECUTORS:
        raise ConfigError(f"pipeline.executor={executor!r} is not allowed; choose one of {list(EXECUTORS)}")
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("pipeline.executor=slurm needs `sbatch` on PATH (use local or debug here)")
    store = Path(cfg.data.store) if cfg.data.store else None
    if store is None:
        raise ConfigError("data.store is empty: give the converted store (or pipeline.source_dir to convert)")
    if needs_convert(cfg):
        if not Path(cfg.pipeline.source_dir).is_dir():
            raise DataError(f"pipeline.source_dir {cfg.pipeline.source_dir} does not exist")
    elif not store.exists():
        raise DataError(f"data.store {store} does not exist (run `hpc-modatts convert` or set pipeline.source_dir)")
    else:
        from hpc_modatts.data.store import Store

        Store.open(store)  # DataError if it is not one of ours
    if not cfg.data.split or not Path(cfg.data.split).is_file():
        raise DataError(f"data.split {cfg.data.split or '(empty)'} does not exist (run `hpc-modatts split`)")
    _check_folds(cfg)
    for key in ("translator_run", "init_from"):
        run = getattr(cfg.train, key)
        if run and not is_done(run):
            raise DataError(f"train.{key} {run} is not a finished run folder (no DONE marker)")


def _check_folds(cfg: ExperimentConfig) -> None:
    from hpc_modatts.data.splits import Split

    store = cfg.data.store if Path(cfg.data.store).exists() else None  # a convert node makes it later
    split = Split.load(cfg.data.split, store=store)
    if cfg.pipeline.folds > 1 and len(split.folds) < cfg.pipeline.folds:
        raise DataError(f"data.split {cfg.data.split} has {len(split.folds)} folds; "
                        f"pipeline.folds={cfg.pipeline.folds}")


# ----------------------------------------------------------------------------- submission
def node_parameters(node: Node, cfg: ExperimentConfig, preset: dict[str, Any] | None,
                    dependency_ids: list[str]) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords for one node (generic + ``slurm_*``)."""
    r = node.resources
    params: dict[str, Any] = {
        "name": f"{cfg.name}:{node.name}", "timeout_min": cfg.pipeline.timeout_min, "nodes": r.nodes,
        "tasks_per_node": r.tasks_per_node, "cpus_per_task": r.cpus_per_task,
    }
    if r.gpus_per_node:  # --gpus-per-node=0 is refused by clusters without GPU GRES
        params["gpus_per_node"] = r.gpus_per_node
    if cfg.pipeline.mem_gb:
        params["mem_gb"] = cfg.pipeline.mem_gb
    preset = preset or {}
    for key in ("partition", "account", "qos", "constraint", "signal_delay_s", "setup"):
        if preset.get(key):
            params[f"slurm_{key}"] = preset[key]
    extra = {"requeue": True, "kill-on-invalid-dep": "yes", **(preset.get("additional") or {})}
    params["slurm_additional_parameters"] = extra
    if dependency_ids:
        params["slurm_dependency"] = "afterok:" + ":".join(dependency_ids)
    return check_sbatch_values(params)


def check_sbatch_values(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` unless a string in it (key or value, nested) holds a line break.

    Every such string lands in the generated sbatch script: a newline would end the ``#SBATCH``
    block there, drop the options after it and run the rest as shell commands.
    """
    def walk(key: str, value: Any) -> None:
        if isinstance(value, str):
            check_one_line(f"sbatch option {key}", value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{key}.{k}", str(k))
                walk(f"{key}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{key}[{i}]", v)

    for k, v in params.items():
        walk(str(k), v)
    return params


def make_executor(folder: Path, executor: str, params: dict[str, Any]) -> submitit.AutoExecutor:
    check_one_line("submitit folder", str(folder))  # sbatch --output/--error paths
    check_sbatch_values(params)
    ex = submitit.AutoExecutor(folder=folder, cluster=executor)
    if executor != "slurm":  # local/debug ignore slurm_* anyway; keep their warnings quiet
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    ex.update_parameters(**params)
    return ex


class Recorder:
    """``pipeline.json``: the DAG's nodes and every submitted job, rewritten atomically."""

    def __init__(self, path: Path, cfg: ExperimentConfig, executor: str, dag: Dag):
        self.path = path
        old = _read_json(path)
        self.data = {"name": cfg.name, "executor": executor, "cluster": cfg.pipeline.cluster,
                     "nodes": [{"name": n.name, "run_dir": str(n.run_dir), "marker": n.marker, "deps": list(n.deps)}
                               for n in dag.topological()],
                     "jobs": old.get("jobs", [])}
        self.save()

    def add(self, node: Node, job: Any, folder: Path, executor: str) -> None:
        self.data["jobs"].append({"node": node.name, "job_id": str(job.job_id), "executor": executor,
                                  "folder": str(folder), "run_dir": str(node.run_dir),
                                  "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_pipeline(cfg: ExperimentConfig, executor: str | None = None, cluster: str | None = None,
                 dag: Dag | None = None, check: bool = True, wait: bool = False,
                 max_parallel: int | None = None, in_flight: dict[str, str] | None = None,
                 watch: bool = True) -> Path:
    """Submit every pending node of ``cfg``'s DAG; returns the ``pipeline.json`` path.

    ``executor``/``cluster`` default to ``cfg.pipeline``. On SLURM this returns right after
    submission (``wait=True`` blocks until the last jobs end); local/debug run to the end.
    ``dag`` replaces ``build_dag(cfg)`` (tests use light callables); ``check=False`` skips
    the store/split checks (for such DAGs only). ``max_parallel``: at most this many local
    jobs at once (None = every ready node). ``in_flight`` (SLURM): node name -> id of a job of
    an earlier submission still queued or running; that node is not submitted again and its
    dependents wait on that id (a rerun while jobs are in flight submits only what is missing).
    ``watch`` (local/debug): show the jobs while they run (``hpc_modatts.pipeline.watch``).
    """
    executor = executor or cfg.pipeline.executor
    cluster = cluster if cluster is not None else cfg.pipeline.cluster
    if executor not in EXECUTORS:
        raise ConfigError(f"pipeline.executor={executor!r} is not allowed; choose one of {list(EXECUTORS)}")
    preset = load_preset(cluster) if cluster else None
    if preset:
        cfg = apply_preset(cfg, preset)
    if check:
        check_inputs(cfg, executor)
    dag = dag or build_dag(cfg)
    in_flight = dict(in_flight or {}) if executor == "slurm" else {}
    pending = [n for n in dag.pending() if n.name not in in_flight]
    root = cfg.run_dir
    root.mkdir(parents=True, exist_ok=True)
    rec = Recorder(root / "pipeline.json", cfg, executor, dag)
    log.info("pipeline %s: %d nodes, %d pending, executor %s", cfg.name, len(dag), len(pending), executor)
    folder = root / "submitit"
    if executor == "slurm":
        jobs = submit_slurm(pending, cfg, preset, folder, rec, in_flight)
        if wait:
            for j in jobs.values():
                j.results()  # every task of a multi-task job (``result()`` refuses those)
    elif not pending:
        log.info("pipeline %s: every stage is done", cfg.name)
    elif watch:  # the live table on a terminal, one line per state change in a log
        with PipelineWatcher(lambda: pipeline_status(root), f"pipeline {cfg.name} ({executor})",
                             root=root) as watcher:
            _run_in_waves(pending, cfg, executor, folder, rec, max_parallel=max_parallel, tick=watcher.update)
    else:
        _run_in_waves(pending, cfg, executor, folder, rec, max_parallel=max_parallel)
    return rec.path


def submit_slurm(pending: list[Node], cfg: ExperimentConfig, preset: dict | None, folder: Path,
                 rec: Recorder, in_flight: dict[str, str] | None = None) -> dict[str, Any]:
    """Submit ``pending`` (topological order) with ``afterok`` on their parents' job ids; name -> job.
    Also the dry run's path (``hpc_modatts.pipeline.dryrun``: a stand-in sbatch on PATH)."""
    jobs: dict[str, Any] = {}
    earlier = in_flight or {}
    for node in pending:  # topological: parents already have ids
        dep_ids = [str(jobs[d].job_id) if d in jobs else earlier[d] for d in node.deps]  # deps are pending
        params = node_parameters(node, cfg, preset, dep_ids)
        job = make_executor(folder, "slurm", params).submit(StageJob(node, cfg))
        jobs[node.name] = job
        rec.add(node, job, folder, "slurm")
        log.info("submitted %s as job %s", node.name, job.job_id)
    return jobs


class StagesFailed(RuntimeError):
    """Local/debug pipeline: some stages failed (their descendants never ran, the rest did)."""

    def __init__(self, failed: dict[str, str], skipped: list[str]):
        self.failed, self.skipped = failed, skipped
        lines = [f"{name}: {err}" for name, err in failed.items()]
        super().__init__(f"{len(failed)} stage(s) failed, {len(skipped)} dependent stage(s) not run: "
                         + "; ".join(lines))


def _run_in_waves(pending: list[Node], cfg: ExperimentConfig, executor: str, folder: Path,
                  rec: Recorder, poll_s: float = 0.5, max_parallel: int | None = None,
                  tick: Callable[[], object] = lambda: None) -> None:
    """Emulate afterok: submit every node whose parents finished; as soon as ANY running job
    ends, submit what it unblocked (no barrier between waves, so a short branch of the graph
    never waits for a long sibling). A failed stage fails its descendants only, as on SLURM:
    independent branches still run, then ``StagesFailed`` names every failure. ``debug`` jobs
    run in-process inside ``results()``, one at a time in submission order. ``max_parallel``
    caps the jobs alive at once (a sweep's graph can have dozens of ready nodes; each local
    job is a whole training process). ``tick`` is called at every poll (the watcher)."""
    finished: set[str] = set()
    failed: dict[str, str] = {}
    skipped: list[str] = []
    running: dict[str, tuple[Node, Any]] = {}
    left = list(pending)
    try:
        while left or running:
            for node in [n for n in left if any(d in failed or d in skipped for d in n.deps)]:
                skipped.append(node.name)  # topological order: a skipped parent is seen first
                left.remove(node)
            ready = [n for n in left if all(d in finished for d in n.deps)]
            if max_parallel:
                ready = ready[:max(0, max_parallel - len(running))]
            alive = len(running) + len(ready)
            for node in ready:
                left.remove(node)
                if executor == "local" and cfg.distributed.threads_per_rank == 0:
                    node = with_threads(node, alive)
                job = make_executor(folder, executor, node_parameters(node, cfg, None, [])).submit(StageJob(node, cfg))
                rec.add(node, job, folder, executor)
                running[node.name] = (node, job)
            if not running:
                continue
            name = _first_done(running, executor, poll_s, tick)
            node, job = running.pop(name)
            try:
                job.results()  # raises the stage's error (all tasks of a multi-task job)
            except Exception as e:  # noqa: BLE001 - any stage error fails that branch only
                failed[name] = _last_line(e)
                log.error("FAILED %s: %s (log: %s)", name, failed[name], job.paths.stderr)
                continue
            finished.add(name)
            log.debug("finished %s", name)  # the watcher shows it
    except BaseException:  # Ctrl-C or an executor error: leave no job running behind us
        for _, job in running.values():
            job.cancel(check=False)
        raise
    if failed:
        raise StagesFailed(failed, skipped)


def with_threads(node: Node, alive: int) -> Node:
    """``node`` with ``distributed.threads_per_rank`` = cores // (jobs alive x its ranks), at least 1.

    The local executor's share of the machine for ``threads_per_rank=0``: jobs started side by
    side get one share each, never oversubscribing (on 2 cores, a 2-thread GenSeg job beside a
    1-thread job took ~7 s per step, against 3.3 s with one thread: each preempted OpenMP thread
    stalls its team), and a job started alone, e.g. the last self-training round, gets every
    core (2.1 s per GenSeg step with 2 threads). A job keeps its share for its whole life: it
    cannot know when its neighbours end.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // max(1, alive * node.resources.tasks_per_node))
    return dataclasses.replace(node, overrides={**node.overrides, "distributed.threads_per_rank": threads})


def _last_line(e: BaseException) -> str:
    """The stage's own error line (submitit wraps it in a multi-line FailedJobError)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith(("-", " "))]
    errors = [ln for ln in lines if "Error:" in ln or "Exception:" in ln]
    return (errors or lines or [type(e).__name__])[-1][:500]


def _first_done(running: dict[str, tuple[Node, Any]], executor: str, poll_s: float,
                tick: Callable[[], object]) -> str:
    """Name of a running job that has ended (the oldest one for ``debug``, which runs on demand)."""
    if executor == "debug":
        return next(iter(running))
    while True:
        for name, (_, job) in running.items():
            if job.done():
                return name
        tick()
        time.sleep(poll_s)
