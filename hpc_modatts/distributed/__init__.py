"""Distributed environment and DeepSpeed engines (see env.py and engine.py)."""

from hpc_modatts.distributed.engine import autocast_context, build_engine, deepspeed_config, gathered_state_dict, unwrap
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
    shard,
    shutdown_distributed,
)

__all__ = [
    "DistEnv",
    "init_distributed",
    "shutdown_distributed",
    "exit_distributed_process",
    "current_env",
    "free_port",
    "barrier",
    "broadcast_object",
    "shard",
    "all_gather_object",
    "all_reduce_mean",
    "build_engine",
    "unwrap",
    "gathered_state_dict",
    "deepspeed_config",
    "autocast_context",
]
