"""The distributed environment: one ``init_distributed`` for every launcher.

Supported (in detection order):

* ``torchrun`` and the ``deepspeed`` launcher: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
  MASTER_PORT are in the environment (the deepspeed launcher also appends ``--local_rank=N``
  to argv; ``parse_local_rank_arg`` accepts it).
* a submitit task (SLURM or ``cluster="local"``): ``submitit.helpers.TorchDistributedEnvironment``
  exports the rendezvous variables from the job environment. In a task process submitit
  started, rendezvous variables inherited from the submitting process are dropped first.
* a bare ``python``: a world of 1 on 127.0.0.1 and a free port. DeepSpeed otherwise falls into
  MPI discovery and dies on ``import mpi4py`` (docs/architecture.md, "Measured facts").

The backend is nccl on CUDA and gloo on CPU (``distributed.backend: auto``). Every call is
idempotent: a second ``init_distributed`` returns the same ``DistEnv``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import submitit
import torch
import torch.distributed as dist

from hpc_modatts.config import ConfigError, DistributedConfig
from hpc_modatts.host import local_cores

_RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_ENV: "DistEnv | None" = None
_REND_CACHE: dict[str, str] = {}  # MASTER_ADDR/PORT of the live process group


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str
    launcher: str
    """How the job was started: torchrun/deepspeed ("env"), "submitit" or "single"."""
    threads: int
    """torch intra-op threads of this rank."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port free on this host right now (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_local_rank_arg(argv: list[str] | None = None) -> int | None:
    """The ``--local_rank N`` / ``--local_rank=N`` the deepspeed launcher appends, if any."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.local_rank


def _in_submitit_task() -> bool:
    """True inside a submitit job (SLURM or local executor)."""
    if not any(k.startswith("SUBMITIT_") for k in os.environ) and "SLURM_JOB_ID" not in os.environ:
        return False
    try:
        submitit.JobEnvironment()
        return True
    except Exception:  # not a submitit job (e.g. a plain srun without submitit)
        return False


def _started_by_submitit() -> bool:
    """True in a task process that submitit's slurm or local executor started.

    Such a process runs submitit's task runner as ``__main__`` (``python -m
    submitit.core._submit``), so no launcher stands between submitit and us: rendezvous
    variables already in its environment were inherited from whoever submitted the job (e.g. a
    process that had run a single-rank job in-process), never meant for it.
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "submitit.core._submit"


def _export_rendezvous(argv: list[str] | None) -> str:
    """Make sure the five rendezvous variables exist; return the launcher name."""
    local_rank = parse_local_rank_arg(argv)
    if local_rank is not None and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(local_rank)
    if _started_by_submitit():
        # Inherited values would make every task rank 0 of a world of 1 on the submitter's port
        # (taken: EADDRINUSE); the job environment is the only source of truth here.
        for key in (*_RENDEZVOUS, "LOCAL_WORLD_SIZE"):
            os.environ.pop(key, None)
    if all(k in os.environ for k in _RENDEZVOUS):
        return "env"
    if _in_submitit_task():
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if submitit.JobEnvironment().num_tasks == 1:
            # submitit seeds the port with the job id, which the local executor takes from the PID:
            # a recycled PID gives a port still held by an earlier job (EADDRINUSE). One task needs
            # agreement with no other process, so it takes any port free now.
            os.environ["MASTER_PORT"] = str(free_port())
        return "submitit"
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        missing = [k for k in _RENDEZVOUS if k not in os.environ]
        raise ConfigError(f"distributed: WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} are not set")
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    return "single"


def _local_world_size() -> int:
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "SUBMITIT_LOCAL_WORLD_SIZE"):
        v = os.environ.get(key, "")
        if v.split("(")[0].isdigit():
            return int(v.split("(")[0])
    return min(int(os.environ["WORLD_SIZE"]), torch.cuda.device_count() or int(os.environ["WORLD_SIZE"]))


def _set_threads(dcfg: DistributedConfig, local_world: int) -> int:
    """threads_per_rank, else OMP_NUM_THREADS when set explicitly, else cores // local ranks."""
    if dcfg.threads_per_rank > 0:
        n = dcfg.threads_per_rank
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        n = int(os.environ["OMP_NUM_THREADS"])
    else:
        n = max(1, local_cores() // max(1, local_world))
    torch.set_num_threads(n)
    return n


def _backend(dcfg: DistributedConfig, device: torch.device) -> str:
    if dcfg.backend != "auto":
        if dcfg.backend == "nccl" and device.type != "cuda":
            raise ConfigError("distributed.backend=nccl needs CUDA; use gloo or auto on CPU")
        return dcfg.backend
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(dcfg: DistributedConfig | None = None, argv: list[str] | None = None) -> DistEnv:
    """Detect the launcher, initialise torch.distributed through DeepSpeed, pick the device."""
    global _ENV
    if _ENV is not None and dist.is_available() and dist.is_initialized():
        # Another in-process job (submitit's debug executor) may have reset os.environ since:
        # DeepSpeed reads the rendezvous variables again when it builds an engine.
        _restore_rendezvous(_ENV)
        return _ENV
    dcfg = dcfg or DistributedConfig()
    launcher = _export_rendezvous(argv)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_world = _local_world_size()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    backend = _backend(dcfg, device)
    threads = _set_threads(dcfg, local_world)
    if not dist.is_initialized():
        import deepspeed  # lazy: importing deepspeed costs seconds, and a set-up group never needs it

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    _REND_CACHE.update({k: os.environ[k] for k in ("MASTER_ADDR", "MASTER_PORT") if k in os.environ})
    _ENV = DistEnv(
        rank=rank,
        local_rank=local_rank,
        world_size=world,
        local_world_size=local_world,
        device=device,
        backend=backend,
        launcher=launcher,
        threads=threads,
    )
    return _ENV


def _restore_rendezvous(env: DistEnv) -> None:
    os.environ.setdefault("RANK", str(env.rank))
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    os.environ.setdefault("WORLD_SIZE", str(env.world_size))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(env.local_world_size))
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ and key in _REND_CACHE:
            os.environ[key] = _REND_CACHE[key]


def shutdown_distributed() -> None:
    """Barrier, then destroy the process group (a clean exit: gloo threads left running at
    interpreter exit can abort a rank with "terminate called without an active exception")."""
    global _ENV
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()
    _ENV = None


def exit_distributed_process(rc: int, wait_for_peers: bool = True) -> None:
    """End a process that joined a process group without tearing the group down.

    Tearing gloo down at interpreter exit (or right after a peer already closed its sockets)
    sometimes aborts a rank with "terminate called without an active exception" (SIGABRT,
    exit 134) AFTER all its work is done, which a launcher or SLURM then reports as a failed
    job (breaking ``afterok`` chains). Every output of ours is written atomically before this
    point, so: wait for the peers (on success), flush, and leave with ``os._exit``.
    Does nothing when no process group was initialised.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait_for_peers:
        try:
            barrier()
        except Exception:  # a peer died: exit with our own status anyway
            pass
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(rc)


def current_env() -> DistEnv | None:
    """The DistEnv of the last ``init_distributed`` (None before)."""
    return _ENV


# ----------------------------------------------------------------------------- collectives
def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard(items: Sequence[str], rank: int, world_size: int) -> list[str]:
    """This rank's share of ``items`` (rank r gets r, r + world, ...)."""
    return list(items[rank::world_size])


def barrier() -> None:
    """Wait for every rank (no-op in a world of 1 or without torch.distributed)."""
    if _active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (any picklable object)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(values: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """Mean over ranks of a dict of floats (same keys on every rank; NaN propagates)."""
    if not values or not _active():
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    if device is None:
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))
