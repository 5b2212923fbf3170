"""Submit a whole experiment DAG through submitit: ``slurm``, ``local`` or ``debug``.

* **slurm**: every pending node is submitted at once with ``afterok`` on its parents
  (``hpc_modatts.pipeline.jobs.submit_slurm``); no driver process stays alive. Cluster shape
  and sbatch options come from a preset YAML (``hpc_modatts.presets``).
* **local** (real subprocesses) / **debug** (in-process): the nodes run in waves, each node
  submitted once its parents have finished (``hpc_modatts.pipeline.waves``).

Inputs are checked before anything is submitted. Every submission is recorded in
``<run_root>/<name>/pipeline.json`` (``hpc_modatts.pipeline.record``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hpc_modatts.config import EXECUTORS, ConfigError, ExperimentConfig
from hpc_modatts.data.convert import convert
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.splits import Split
from hpc_modatts.data.store import Store
from hpc_modatts.pipeline.dag import Dag, build_dag, needs_convert
from hpc_modatts.pipeline.jobs import StageJob, node_parameters, submit_slurm
from hpc_modatts.pipeline.record import RECORD_FILE, Recorder
from hpc_modatts.pipeline.status import pipeline_status
from hpc_modatts.pipeline.watch import PipelineWatcher
from hpc_modatts.pipeline.waves import StagesFailed, default_parallel, run_in_waves
from hpc_modatts.presets import apply_preset, available_presets, load_preset
from hpc_modatts.runs import is_done, mark_done, stage_dir

__all__ = [
    "EXECUTORS",
    "check_inputs",
    "convert_stage",
    "run_pipeline",
    # re-exported from their owners: the import paths callers and pickled jobs already use
    "StageJob",
    "StagesFailed",
    "available_presets",
    "load_preset",
    "node_parameters",
]

log = logging.getLogger(__name__)


def convert_stage(cfg: ExperimentConfig) -> Path:
    """Pipeline node: NIfTI ``pipeline.source_dir`` -> ``data.store`` (then DONE)."""
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
        Store.open(store)  # DataError if it is not one of ours
    if not cfg.data.split or not Path(cfg.data.split).is_file():
        raise DataError(f"data.split {cfg.data.split or '(empty)'} does not exist (run `hpc-modatts split`)")
    _check_folds(cfg)
    for key in ("translator_run", "init_from"):
        run = getattr(cfg.train, key)
        if run and not is_done(run):
            raise DataError(f"train.{key} {run} is not a finished run folder (no DONE marker)")


def hidden_gpu_warning(cfg: ExperimentConfig, executor: str) -> str | None:
    """The warning for a local run that would leave this machine's NVIDIA GPUs idle, else None.

    submitit's local executor sets ``CUDA_VISIBLE_DEVICES`` to the GPUs a job asks for, so with
    ``pipeline.gpus_per_node: 0`` (the CPU default) every training job runs on the CPU. The
    driver's ``nvidia-smi`` on PATH is the check: it needs no torch import and no CUDA context.
    """
    if executor != "local" or cfg.pipeline.gpus_per_node or shutil.which("nvidia-smi") is None:
        return None
    return (
        "pipeline.gpus_per_node is 0: the local executor hides this machine's GPUs from every job "
        "(CUDA_VISIBLE_DEVICES is empty), so training runs on the CPU; set pipeline.gpus_per_node=1 to use one"
    )


def _check_folds(cfg: ExperimentConfig) -> None:
    store = cfg.data.store if Path(cfg.data.store).exists() else None  # a convert node makes it later
    split = Split.load(cfg.data.split, store=store)
    if cfg.pipeline.folds > 1 and len(split.folds) < cfg.pipeline.folds:
        raise DataError(
            f"data.split {cfg.data.split} has {len(split.folds)} folds; pipeline.folds={cfg.pipeline.folds}"
        )


# ----------------------------------------------------------------------------- submission
def run_pipeline(
    cfg: ExperimentConfig,
    executor: str | None = None,
    cluster: str | None = None,
    dag: Dag | None = None,
    check: bool = True,
    wait: bool = False,
    max_parallel: int | None = None,
    in_flight: dict[str, str] | None = None,
    watch: bool = True,
) -> Path:
    """Submit every pending node of ``cfg``'s DAG; returns the ``pipeline.json`` path.

    ``executor``/``cluster`` default to ``cfg.pipeline``. On SLURM this returns right after
    submission (``wait=True`` blocks until the last jobs end); local/debug run to the end.
    ``dag`` replaces ``build_dag(cfg)`` (tests use light callables); ``check=False`` skips
    the store/split checks (for such DAGs only). ``max_parallel``: at most this many local
    jobs at once (None: ``waves.default_parallel``, one per core for ``threads_per_rank: 0``;
    debug runs one at a time anyway). ``in_flight`` (SLURM): node name -> id of a job of
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
    warning = hidden_gpu_warning(cfg, executor)
    if warning:
        log.warning(warning)
    dag = dag or build_dag(cfg)
    in_flight = dict(in_flight or {}) if executor == "slurm" else {}
    pending = [n for n in dag.pending() if n.name not in in_flight]
    root = cfg.run_dir
    root.mkdir(parents=True, exist_ok=True)
    rec = Recorder(root / RECORD_FILE, cfg, executor, dag)
    log.info("pipeline %s: %d nodes, %d pending, executor %s", cfg.name, len(dag), len(pending), executor)
    folder = root / "submitit"
    if executor == "local" and max_parallel is None:
        max_parallel = default_parallel(cfg)
    if executor == "slurm":
        jobs = submit_slurm(pending, cfg, preset, folder, rec, in_flight)
        if wait:
            for j in jobs.values():
                j.results()  # every task of a multi-task job (``result()`` refuses those)
    elif not pending:
        log.info("pipeline %s: every stage is done", cfg.name)
    elif watch:  # the live table on a terminal, one line per state change in a log
        with PipelineWatcher(lambda: pipeline_status(root), f"pipeline {cfg.name} ({executor})", root=root) as watcher:
            run_in_waves(pending, cfg, executor, folder, rec, max_parallel=max_parallel, tick=watcher.update)
    else:
        run_in_waves(pending, cfg, executor, folder, rec, max_parallel=max_parallel)
    return rec.path
