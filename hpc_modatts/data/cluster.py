"""Dask workers on SLURM for ``convert --scheduler slurm --cluster PRESET`` (dask-jobqueue).

The preset is the pipeline's (``hpc_modatts/clusters/<name>.yaml`` or a YAML path, read by
``hpc_modatts.presets.load_preset``): partition, account, qos, constraint, extra sbatch
options and setup lines are the same; each worker is one SLURM job of ``cpus_per_task`` cores
(threads, one case each), ``mem_gb`` GB and ``timeout_min`` minutes, running this Python
(``sys.executable``: the cluster must see the same environment and file system, as the pipeline's
jobs do). The scheduler lives in the ``convert`` process; ``slurm_client`` scancels the jobs when
the conversion ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

from hpc_modatts.config import check_one_line
from hpc_modatts.data.errors import DataError
from hpc_modatts.presets import load_preset

log = logging.getLogger(__name__)

DEFAULT_MEM_GB = 8  # per worker job when the preset leaves mem_gb at 0 (cluster default)
WORKER_TIMEOUT_S = 1800.0  # the first worker must join within this time (queued jobs, wrong partition...)


def _no_newline(key: str, value: Any) -> str:
    """Preset strings go into an sbatch script: a newline would end the #SBATCH block."""
    return check_one_line(f"cluster preset {key}", str(value))


def _walltime(minutes: int) -> str:
    minutes = max(1, int(minutes))
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def slurm_cluster_options(preset: dict[str, Any], log_dir: str | Path) -> dict[str, Any]:
    """``dask_jobqueue.SLURMCluster`` keywords for a cluster preset (GPUs are not requested: conversion is CPU work)."""
    extra = [f"--{flag}={_no_newline(flag, preset[flag])}" for flag in ("qos", "constraint") if preset.get(flag)]
    extra += [
        f"--{_no_newline('additional', k)}={_no_newline(k, v)}" for k, v in (preset.get("additional") or {}).items()
    ]
    opts: dict[str, Any] = {
        "queue": _no_newline("partition", preset["partition"]) if preset.get("partition") else None,
        "account": _no_newline("account", preset["account"]) if preset.get("account") else None,
        "cores": int(preset.get("cpus_per_task") or 1),
        "processes": 1,
        "memory": f"{int(preset.get('mem_gb') or DEFAULT_MEM_GB)}GiB",  # = sbatch --mem=<N>G, as the pipeline asks
        "walltime": _walltime(preset.get("timeout_min") or 60),
        "job_extra_directives": extra,
        "job_script_prologue": [_no_newline("setup", line) for line in (preset.get("setup") or [])],
        "job_name": "hpc-modatts-convert",
        "log_directory": str(log_dir),
        "local_directory": "/tmp",
        "python": sys.executable,
        "scheduler_options": {"dashboard": False, "dashboard_address": ":0"},  # no fixed port 8787 to collide on
    }
    if preset.get("interface"):
        opts["interface"] = _no_newline("interface", preset["interface"])
    return opts


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """The scheduler's INFO chatter (workers joining, comms closing) would drown the progress bar."""
    log_ = logging.getLogger(logger)
    level = log_.level
    log_.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log_.setLevel(level)


@contextlib.contextmanager
def slurm_client(cluster: str, jobs: int, log_dir: str | Path, worker_timeout_s: float = WORKER_TIMEOUT_S) -> Iterator:
    """A ``distributed.Client`` on ``jobs`` SLURM worker jobs started from preset ``cluster``."""
    # heavy (dask.distributed with its servers) and needed by `--scheduler slurm` only
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    preset = load_preset(cluster)
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    options = slurm_cluster_options(preset, log_dir)
    with _quiet("distributed"), SLURMCluster(**options) as slurm, Client(slurm) as client:
        slurm.scale(jobs=max(1, int(jobs)))
        log.info(
            "convert: %d SLURM worker job(s) requested (partition %s, %d core(s), %s each); logs in %s",
            max(1, int(jobs)),
            options["queue"] or "default",
            options["cores"],
            options["memory"],
            log_dir,
        )
        try:
            client.wait_for_workers(1, timeout=worker_timeout_s)
        except TimeoutError:
            raise DataError(
                f"--cluster {cluster}: no dask worker joined within {worker_timeout_s:.0f} s "
                f"(jobs still queued or failing: see `squeue` and {log_dir})"
            ) from None
        yield client
