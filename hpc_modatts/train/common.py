"""Helpers shared by the training/synthesis stages (translate, synthesize, segment, self-train).

* ``stage_config``: the config a stage runs with (``train.stage_overrides`` merged in).
* ``load_split`` / ``open_store``: inputs with one-line errors naming the missing thing.
* ``PairedDataset``: one item of each of two datasets per sample (stage 1: a source slice and
  a target slice; stage 2: a pseudo-target and a real target half-volume).
* ``fit_slices`` / ``unfit_slices``: centre pad/crop of axial slices to ``data.slice_size``
  and back, filling with the -1 background (MONAI's inverse of a crop pads with 0, which is
  mid-grey in our normalisation, so the small window arithmetic is written here).
* ``dice_of``: whole-volume Dice of binary masks (MONAI ``DiceMetric``).
* ``write_panel``: a PNG of image columns, written atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from hpc_modatts.config import (
    STAGE_SECTIONS,
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    lambda_seg_pt_for_fraction,
)
from hpc_modatts.data.errors import DataError
from hpc_modatts.runs import atomic_path

log = logging.getLogger(__name__)

STAGES = ("translate", "synthesize", "segment", "self-train")


# ----------------------------------------------------------------------------- config
def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def stage_config(cfg: ExperimentConfig, stage: str) -> ExperimentConfig:
    """``cfg`` for ``stage``: its ``train.stage_overrides[stage]`` merged into ``train``.

    The result has ``train.stage = stage`` and no ``stage_overrides`` left, so applying it
    again is a no-op (the CLI applies it, then the user's ``key=value`` overrides, then calls
    ``run``, which applies it again harmlessly).
    """
    if stage not in STAGES:
        raise ConfigError(f"train.stage={stage!r} is not one of {list(STAGES)}")
    data = config_to_dict(cfg)
    train = data["train"]
    overrides = copy.deepcopy((train.pop("stage_overrides", None) or {}).get(stage, {}))
    for section in STAGE_SECTIONS:  # optim / model keys of this stage
        data[section] = _merge(data[section], overrides.pop(section, None) or {})
    train = _merge(train, overrides)
    train["stage"] = stage
    train["stage_overrides"] = {}
    data["train"] = train
    return config_from_dict(data)


def resolve_seg_pt(cfg: ExperimentConfig, split: Any) -> float:
    """lambda_seg^pT: the configured value, or from the source-annotation fraction (thesis 5.5.1)."""
    w = cfg.train.weights.seg_pt
    if w != -1.0:
        return float(w)
    fraction = len(split.source_labeled) / max(1, len(split.source_train))
    return float(lambda_seg_pt_for_fraction(fraction))


def resolve_st(cfg: ExperimentConfig, split: Any) -> float:
    """lambda_st: the configured value, or lambda_seg^pT (thesis 5.4.2, Eq. 5.13)."""
    w = cfg.train.weights.st
    return resolve_seg_pt(cfg, split) if w == -1.0 else float(w)


# ----------------------------------------------------------------------------- inputs
def open_store(path: str | os.PathLike, what: str = "data.store"):
    """Open a store, with a one-line error naming the config key when unset or missing."""
    from hpc_modatts.data.store import Store

    if not str(path):
        raise ConfigError(f"{what} is not set: give the path of a converted store")
    return Store.open(path)


def load_split(cfg: ExperimentConfig, use_fold: bool = True):
    """The experiment's Split (``data.split``), viewed as fold ``data.fold`` when it has folds."""
    from hpc_modatts.data.splits import Split

    if not cfg.data.split:
        raise ConfigError("data.split is not set: make one with `hpc-modatts split`")
    split = Split.load(cfg.data.split, store=cfg.data.store or None)  # refuses another store's split
    if split.source != cfg.data.source or split.target != cfg.data.target:
        raise ConfigError(f"data.source/target={cfg.data.source}->{cfg.data.target} but split "
                          f"{cfg.data.split} is {split.source}->{split.target}")
    if use_fold and split.folds:
        split = split.fold(cfg.data.fold)
    elif use_fold and cfg.data.fold != 0:
        raise ConfigError(f"data.fold={cfg.data.fold} but split {cfg.data.split} has no folds")
    return split


def require_done(run_dir: Path, what: str, marker: str = "DONE") -> Path:
    """``run_dir`` if its stage finished, else a ConfigError naming the stage to run first."""
    from hpc_modatts.runs import is_done

    if not is_done(run_dir, marker):
        raise ConfigError(f"{what} {run_dir} has not finished (no {marker} marker): run that stage first")
    return Path(run_dir)


def shard(items: Sequence[str], rank: int, world_size: int) -> list[str]:
    """This rank's share of ``items`` (rank r gets r, r + world, ...)."""
    return list(items[rank::world_size])


def barrier() -> None:
    """A torch.distributed barrier when a process group is up; no-op otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- datasets
class PairedDataset(Dataset):
    """Item i = ``{first_key: first[i % len(first)], second_key: second[j]}``, j drawn at random.

    The length is the longer of the two, so every sample of both is seen about once per epoch;
    the partner index comes from torch's global generator (the trainer seeds it per rank and
    saves it in checkpoints), so pairs change between epochs (unpaired data, thesis 5.5.1).
    """

    def __init__(self, first: Dataset, second: Dataset, first_key: str, second_key: str) -> None:
        if len(first) == 0 or len(second) == 0:
            raise DataError(f"paired dataset: {first_key} has {len(first)} and {second_key} "
                            f"{len(second)} samples; both need at least one")
        self.first, self.second = first, second
        self.first_key, self.second_key = first_key, second_key

    def __len__(self) -> int:
        return max(len(self.first), len(self.second))

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to both datasets (their augmentation depends on it)."""
        for d in (self.first, self.second):
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict:
        j = int(torch.randint(len(self.second), (1,)).item())
        return {self.first_key: self.first[i % len(self.first)], self.second_key: self.second[j]}


def paired_batch_ids(batch: dict) -> list[str]:
    """Case names of a paired batch (for the trainer's NaN message)."""
    from hpc_modatts.train.task import default_batch_ids

    return [i for v in batch.values() if isinstance(v, dict) for i in default_batch_ids(v)]


# ----------------------------------------------------------------------------- slices
def _window(n: int, m: int) -> tuple[slice, slice]:
    """(source, destination) slices centring a length-n axis in a length-m window."""
    if n >= m:
        a = (n - m) // 2
        return slice(a, a + m), slice(0, m)
    a = (m - n) // 2
    return slice(0, n), slice(a, a + n)


def fit_slices(volume: np.ndarray, size: tuple[int, int], fill: float) -> np.ndarray:
    """(X, Y, Z) volume -> (Z, H, W) axial slices, centre-cropped/padded with ``fill``."""
    x, y, _ = volume.shape
    (sx, dx), (sy, dy) = _window(x, size[0]), _window(y, size[1])
    out = np.full((volume.shape[2], size[0], size[1]), fill, dtype=np.float32)
    out[:, dx, dy] = np.moveaxis(volume[sx, sy, :], 2, 0)
    return out


def unfit_slices(slices: np.ndarray, shape: tuple[int, int, int], fill: float) -> np.ndarray:
    """Inverse of ``fit_slices``: (Z, H, W) -> (X, Y, Z); what was cropped away becomes ``fill``."""
    x, y, _ = shape
    (sx, dx), (sy, dy) = _window(x, slices.shape[1]), _window(y, slices.shape[2])
    out = np.full(shape, fill, dtype=np.float32)
    out[sx, sy, :] = np.moveaxis(slices[:, dx, dy], 0, 2)
    return out


def brain_slices(volume: np.ndarray, brain: np.ndarray, size: tuple[int, int],
                 min_brain_fraction: float = 0.01) -> np.ndarray:
    """(N, H, W) axial slices of ``volume`` (``fit_slices``) whose brain covers >= the fraction."""
    area = np.asarray(brain).sum(axis=(0, 1))                               # (Z,)
    keep = area >= max(1.0, min_brain_fraction * brain.shape[0] * brain.shape[1])
    return fit_slices(volume, size, fill=-1.0)[keep]


def map_slices(fn: Callable[[torch.Tensor], torch.Tensor], slices: np.ndarray, device: torch.device,
               batch: int = 16) -> np.ndarray:
    """Apply ``fn`` ((B, 1, H, W) -> (B, 1, H, W)) to (Z, H, W) slices in batches; float32 numpy out."""
    outs = []
    for z0 in range(0, slices.shape[0], batch):
        x = torch.from_numpy(slices[z0:z0 + batch, None]).to(device)  # (B, 1, H, W)
        outs.append(fn(x).float()[:, 0].cpu().numpy())
    return np.concatenate(outs, axis=0)


# ----------------------------------------------------------------------------- volumes
def dice_of(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary volumes with MONAI's DiceMetric (1.0 when both are empty)."""
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    p = torch.from_numpy(np.asarray(pred, dtype=np.float32))[None, None]
    t = torch.from_numpy(np.asarray(truth, dtype=np.float32))[None, None]
    return float(metric(p, t).mean().item())


def val_case_list(cases: Sequence[str], cap: int) -> list[str]:
    """The validation cases, capped at ``train.val_cases`` (0 = all)."""
    return list(cases[:cap] if cap else cases)


# ----------------------------------------------------------------------------- losses
def pooled_dice_loss(logits: torch.Tensor, target: torch.Tensor, has_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice of the annotated samples of a batch pooled into ONE region (nnU-Net's "batch Dice").

    logits, target: (B, C, *spatial); has_mask: (B,) bool or None (all annotated). Per-sample
    soft Dice (``losses.dice_loss``) is ~1 with a vanishing gradient on a tumour-free sample
    (MONAI's 1e-5 smoothing: d/dp of 1 - e/(sum p + e) is e/(sum p + e)^2), so the healthy
    hemispheres (half of every stage-2 batch) taught nothing and false positives there were
    never penalised: the 3D segmenters over-segmented whole volumes. Pooled, every false
    positive in the batch lowers the one Dice. Stage 2 only: on stage-1 slice batches (~4 in 5
    tumour-free, some batches with no tumour at all) a demo trial's slice decoders collapsed to
    empty masks with it. A graph-keeping 0 when no sample is annotated (same backward on every rank).
    """
    from hpc_modatts.losses import dice_loss

    if has_mask is not None:
        sel = torch.as_tensor(has_mask, device=logits.device).reshape(-1).bool()
        if not sel.any():
            return logits.sum() * 0.0
        logits, target = logits[sel], target[sel]
    c = logits.shape[1]
    pooled = logits.movedim(1, 0).reshape(1, c, -1)                     # (1, C, B * prod(spatial))
    return dice_loss(pooled, target.to(logits.dtype).movedim(1, 0).reshape(1, c, -1))


# ----------------------------------------------------------------------------- panels
def write_panel(path: str | os.PathLike, columns: dict[str, np.ndarray], title: str = "") -> Path:
    """One row of 2D images (title -> (H, W) array) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(columns), figsize=(2.4 * len(columns), 2.6), squeeze=False)
    for ax, (name, img) in zip(axes[0], columns.items()):
        lo, hi = (0.0, 1.0) if name.lower().endswith("mask") else (-1.0, 1.0)
        ax.imshow(np.asarray(img, dtype=np.float32).T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------- models
def set_requires_grad(module: torch.nn.Module, flag: bool) -> None:
    """Freeze/unfreeze a model, e.g. the discriminators during the generator update."""
    for p in module.parameters():
        p.requires_grad_(flag)


def replace_cfg(cfg: ExperimentConfig, **train: Any) -> ExperimentConfig:
    """A copy of ``cfg`` with some ``train`` fields replaced."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def build_from(factory: tuple[str, dict]) -> torch.nn.Module:
    """Build a model from a (name, kwargs) factory (Task.model_factory); names are keys of the
    allow-list ``hpc_modatts.train.checkpoint.MODEL_FACTORIES``."""
    from hpc_modatts.train.checkpoint import build_model

    return build_model(factory)
