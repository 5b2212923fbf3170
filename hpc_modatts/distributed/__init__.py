"""Distributed environment and DeepSpeed engines (see env.py and engine.py)."""

from hpc_modatts.distributed.env import (
    DistEnv,
    all_gather_object,
    all_reduce_mean,
    barrier,
    broadcast_object,
    current_env,
    exit_distributed_process,
    free_port,
    init_distributed,
    shutdown_distributed,
)

__all__ = [
    "DistEnv", "init_distributed", "shutdown_distributed", "exit_distributed_process", "current_env", "free_port",
    "barrier", "broadcast_object",
    "all_gather_object", "all_reduce_mean", "build_engine", "unwrap", "gathered_state_dict",
]


def __getattr__(name: str):
    """Lazy access to the engine helpers (importing deepspeed costs seconds)."""
    if name in ("build_engine", "unwrap", "gathered_state_dict", "deepspeed_config", "autocast_context"):
        from hpc_modatts.distributed import engine

        return getattr(engine, name)
    raise AttributeError(name)
