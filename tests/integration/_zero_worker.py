"""The per-rank worker of the multi-rank tests: DeepSpeed steps of the toy model (tests/toy_task.py).

The toy Task lives in ``tests/toy_task.py``; this worker is launched by
tests/integration/test_zero_ranks.py under ``torchrun --nproc_per_node N`` (the repository root on
PYTHONPATH)::

    python _zero_worker.py OUT.json --stage S --steps K [--ranks-check]

The worker runs K DeepSpeed steps of the toy model on a fixed GLOBAL batch of 4 volumes (each
rank takes its contiguous share, as a distributed sampler does), then writes per-step losses,
the gathered fp32 weights' checksum and ZeRO-3 partition sizes to OUT.json (rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from monai.losses import DiceLoss

from tests.toy_task import ToyTask, ToyVolumes, toy_net


# ----------------------------------------------------------------------------- worker
def _run(out: Path, stage: int, steps: int) -> None:
    from hpc_modatts.config import DistributedConfig, OptimConfig
    from hpc_modatts.distributed import init_distributed
    from hpc_modatts.distributed.engine import build_engine, gathered_state_dict

    env = init_distributed(DistributedConfig(zero_stage=stage))
    torch.manual_seed(0)
    model = toy_net()
    full_numel = sum(p.numel() for p in model.parameters())
    global_batch = 4
    micro = global_batch // env.world_size
    engine = build_engine(
        model, OptimConfig(lr=1e-2, grad_clip=0.0), DistributedConfig(zero_stage=stage), env, micro, "gen"
    )
    ds, dice = ToyVolumes(global_batch), DiceLoss(sigmoid=True)
    idx = range(env.rank * micro, (env.rank + 1) * micro)
    x = torch.stack([ds[i]["image"] for i in idx]).to(env.device)  # (micro, 1, 8, 8, 8)
    y = torch.stack([ds[i]["mask"] for i in idx]).to(env.device)
    losses = []
    for _ in range(steps):
        loss = dice(engine(x), y)
        engine.backward(loss)
        engine.step()
        t = loss.detach().clone()
        if env.world_size > 1:
            torch.distributed.all_reduce(t)
            t /= env.world_size
        losses.append(float(t))
    local_numel = sum(getattr(p, "ds_tensor", p).numel() for p in engine.module.parameters())
    sd = gathered_state_dict(engine)
    if env.is_main:
        out.write_text(
            json.dumps(
                {
                    "losses": losses,
                    "world_size": env.world_size,
                    "full_numel": full_numel,
                    "local_numel": local_numel,
                    "state_keys": sorted(sd),
                    "state_sum": float(sum(v.double().sum() for v in sd.values())),
                    "state_numel": int(sum(v.numel() for v in sd.values())),
                    "launcher": env.launcher,
                    "backend": env.backend,
                }
            )
        )


def submitit_probe() -> dict:
    """A submitit task: detect the rendezvous, all-reduce the ranks."""
    from hpc_modatts.distributed import all_reduce_mean, init_distributed

    env = init_distributed()
    return {
        "rank": env.rank,
        "world": env.world_size,
        "launcher": env.launcher,
        "mean_rank": all_reduce_mean({"r": float(env.rank)})["r"],
        "port": os.environ["MASTER_PORT"],
    }


def _fit(out: Path, stage: int, run_dir: Path, epochs: int) -> None:
    """The shared Trainer on every rank with the toy task (ZeRO ``stage``)."""
    from hpc_modatts.config import config_from_dict
    from hpc_modatts.distributed import current_env
    from hpc_modatts.train.trainer import Trainer

    cfg = config_from_dict(
        {
            "name": run_dir.name,
            "run_root": str(run_dir.parent),
            "optim": {"lr": 1e-2},
            "distributed": {"zero_stage": stage},
            "train": {"epochs": epochs, "batch_size": 2, "val_every": 2, "seed": 1},
        }
    )
    trainer = Trainer(cfg, ToyTask(), run_dir)
    trainer.fit()
    env = current_env()
    if env.is_main:
        out.write_text(
            json.dumps({"step": trainer.step, "world_size": env.world_size, "best_score": trainer.best.score})
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--stage", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--fit", type=Path, default=None, help="run the Trainer into this run folder")
    ap.add_argument("--epochs", type=int, default=1)
    args, _ = ap.parse_known_args(sys.argv[1:])
    from hpc_modatts.distributed import exit_distributed_process

    if args.fit is not None:
        _fit(args.out, args.stage, args.fit, args.epochs)
    else:
        _run(args.out, args.stage, args.steps)
    exit_distributed_process(0)  # no gloo teardown at exit (see its docstring)
