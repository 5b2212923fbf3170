"""A tiny real Task: a 3D conv net on random volumes, MONAI Dice + MSE, torch RNG in steps and validation.

Shared by the Trainer's unit tests, the checkpoint-damage tests and the multi-rank worker
(``tests/integration/_zero_worker.py``).
"""

from __future__ import annotations

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


register_model_factory("tests.toy_task:toy_net", toy_net)  # best_model.pt names it; code allows it


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
        implausible: bool = False,
    ) -> None:
        self.n, self.nan_case, self.fail_at_step, self.noise = n, nan_case, fail_at_step, noise
        self.validation, self.implausible = validation, implausible
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
        metrics = {"dice": float(1.0 - self.dice(logits, y)), "n": 2.0}
        return {**metrics, "plausible": 0.0} if self.implausible else metrics  # as the volume guard says

    def model_factory(self, name: str):
        return ("tests.toy_task:toy_net", {})
