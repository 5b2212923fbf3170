"""A tiny real Task (3D conv net, random volumes, MONAI Dice + MSE) and a per-rank worker.

Imported by tests/unit/test_trainer.py (the toy Task) and launched by
tests/integration/test_zero_ranks.py under ``torchrun --nproc_per_node N``::

    python _zero_worker.py OUT.json --stage S --steps K [--ranks-check]

The worker runs K DeepSpeed steps of the toy model on a fixed GLOBAL batch of 4 volumes (each
rank takes its contiguous share, as a distributed sampler does), then writes per-step losses,
the gathered fp32 weights' checksum and ZeRO-3 partition sizes to OUT.json (rank 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from monai.losses import DiceLoss
from torch import nn
from torch.utils.data import Dataset

from hpc_modatts.train.best_model import register_model_factory
from hpc_modatts.train.task import TaskDefaults


def toy_net() -> nn.Module:
    """(B, 1, X, Y, Z) -> logits (B, 1, X, Y, Z); 1,985 parameters."""
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.Conv3d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(8, 1, 1),
    )


register_model_factory("_zero_worker:toy_net", toy_net)  # best_model.pt names it; code allows it


class ToyVolumes(Dataset):
    """``n`` random 8^3 volumes, seeded per index; ``nan_case`` holds a NaN voxel."""

    def __init__(self, n: int = 8, nan_case: str | None = None, side: int = 8) -> None:
        self.n, self.nan_case, self.side = n, nan_case, side

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 + i)
        image = torch.randn(1, self.side, self.side, self.side, generator=g)  # (1, X, Y, Z)
        mask = (image > 0.3).float()
        case = f"case{i:02d}"
        if case == self.nan_case:
            image[0, 0, 0, 0] = float("nan")
        return {"image": image, "mask": mask, "case": case}


class ToyTask(TaskDefaults):
    """Segment random volumes; uses the torch RNG in steps and validation (resume must cope)."""

    name = "toy"

    def __init__(
        self,
        n: int = 8,
        nan_case: str | None = None,
        fail_at_step: int | None = None,
        noise: float = 0.05,
        validation: bool = True,
    ) -> None:
        self.n, self.nan_case, self.fail_at_step, self.noise = n, nan_case, fail_at_step, noise
        self.validation = validation
        self.dice = DiceLoss(sigmoid=True)

    def build(self, env) -> dict[str, nn.Module]:
        return {"gen": toy_net()}

    def train_dataset(self) -> Dataset:
        return ToyVolumes(self.n, self.nan_case)

    def train_step(self, batch: dict, engines: dict, step: int) -> dict:
        if self.fail_at_step is not None and step == self.fail_at_step:
            raise KeyboardInterrupt(f"simulated kill at step {step}")
        gen = engines["gen"]
        x = batch["image"] + self.noise * torch.randn_like(batch["image"])  # torch RNG in the step
        logits = gen(x)
        dice = self.dice(logits, batch["mask"])
        mse = ((torch.sigmoid(logits) - batch["mask"]) ** 2).mean()
        gen.backward(dice + mse)
        gen.step()
        return {"dice": dice, "mse": mse}

    def validate(self, engines: dict, env) -> dict | None:
        if not self.validation:
            return None
        ds = ToyVolumes(2)
        x = torch.stack([ds[i]["image"] for i in range(2)]).to(env.device)
        y = torch.stack([ds[i]["mask"] for i in range(2)]).to(env.device)
        torch.rand(3)  # validation draws from the RNG too; the trainer must keep it neutral
        logits = engines["gen"](x)
        return {"dice": float(1.0 - self.dice(logits, y)), "n": 2.0}

    def model_factory(self, name: str):
        return ("_zero_worker:toy_net", {})


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
            json.dumps({"step": trainer.step, "world_size": env.world_size, "best_score": trainer.best_score})
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
