"""Losses of both stages: hinge GAN (multi-scale), L1 (cycle / reconstruction / latent), soft Dice.

Thesis 5.4.1 (stage 1: hinge adversarial, cycle L1, Dice on annotated source slices and their
translations) and 5.4.2 (stage 2 GenSeg: hinge adversarial, image and latent reconstruction L1,
Dice on pseudo-target volumes, pooled over the batch: ``pooled_dice_loss``). The hinge terms are
hand-written (three lines; MONAI has no hinge GAN loss); Dice is MONAI's ``DiceLoss(sigmoid=True)``.

Multi-scale discriminators return one logit map per scale: the adversarial losses average the
per-scale means (thesis 5.5.1: the discriminators average over scales; Table 5.1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

Logits: TypeAlias = torch.Tensor | Sequence[torch.Tensor]


def _as_list(logits: Logits, name: str) -> list[torch.Tensor]:
    items = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    if not items:
        raise ValueError(f"{name}: empty list of discriminator outputs")
    return items


def hinge_d_loss(real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
    """Discriminator hinge loss, mean over scales of mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))."""
    real, fake = _as_list(real_logits, "real_logits"), _as_list(fake_logits, "fake_logits")
    if len(real) != len(fake):
        raise ValueError(f"hinge_d_loss: {len(real)} real scales vs {len(fake)} fake scales")
    per_scale = [F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean() for r, f in zip(real, fake)]
    return torch.stack(per_scale).mean()


def hinge_g_loss(fake_logits: Logits) -> torch.Tensor:
    """Generator hinge loss, mean over scales of -mean(D(fake))."""
    return torch.stack([-f.mean() for f in _as_list(fake_logits, "fake_logits")]).mean()


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (cycle / reconstruction terms); shapes must match exactly."""
    if a.shape != b.shape:
        raise ValueError(f"l1: shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a - b).abs().mean()


def latent_l1(pred: Logits, target: Logits) -> torch.Tensor:
    """Mean of the L1 of paired codes (GenSeg latent reconstruction; detach targets yourself)."""
    preds, targets = _as_list(pred, "pred"), _as_list(target, "target")
    if len(preds) != len(targets):
        raise ValueError(f"latent_l1: {len(preds)} predicted codes vs {len(targets)} targets")
    return torch.stack([l1(p, t) for p, t in zip(preds, targets)]).mean()


_DICE = DiceLoss(sigmoid=True, reduction="none")  # soft Dice per sample and channel


def dice_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice of sigmoid(logits) vs target, per sample, averaged over samples where ``mask``.

    logits, target: (B, C, *spatial); mask: (B,) bool (annotated samples) or None (all).
    With no annotated sample the result is 0 and still carries a graph (so every rank calls
    backward through the same parameters under DeepSpeed).
    """
    if logits.shape != target.shape:
        raise ValueError(f"dice_loss: logits {tuple(logits.shape)} vs target {tuple(target.shape)}")
    per_sample = _DICE(logits, target.to(logits.dtype)).flatten(1).mean(dim=1)  # (B,)
    if mask is None:
        return per_sample.mean()
    mask = torch.as_tensor(mask, device=logits.device).reshape(-1).bool()
    if mask.numel() != per_sample.numel():
        raise ValueError(f"dice_loss: mask has {mask.numel()} entries for a batch of {per_sample.numel()}")
    if not mask.any():
        return logits.sum() * 0.0
    return per_sample[mask].mean()


def pooled_dice_loss(logits: torch.Tensor, target: torch.Tensor, has_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice of the annotated samples of a batch pooled into ONE region (nnU-Net's "batch Dice").

    logits, target: (B, C, *spatial); has_mask: (B,) bool or None (all annotated). Per-sample soft
    Dice (``dice_loss``) is ~1 with a vanishing gradient on a tumour-free sample (MONAI's 1e-5
    smoothing), so the healthy hemispheres (half of every stage-2 batch) would never penalise
    false positives; pooled, every false positive in the batch lowers the one Dice. Stage 2 only:
    on mostly tumour-free stage-1 slice batches it made the slice decoders collapse to empty
    masks. A graph-keeping 0 when no sample is annotated (same backward on every rank).
    """
    if has_mask is not None:
        sel = torch.as_tensor(has_mask, device=logits.device).reshape(-1).bool()
        if not sel.any():
            return logits.sum() * 0.0
        logits, target = logits[sel], target[sel]
    c = logits.shape[1]
    pooled = logits.movedim(1, 0).reshape(1, c, -1)  # (1, C, B * prod(spatial))
    return dice_loss(pooled, target.to(logits.dtype).movedim(1, 0).reshape(1, c, -1))


def normalise_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Scale the active (non-zero) loss weights to sum to 1; zero weights stay 0 (thesis 5.5.1)."""
    negative = {k: v for k, v in weights.items() if v < 0}
    if negative:
        raise ValueError(f"loss weights must be >= 0, got {negative}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError(f"all loss weights are zero: {dict(weights)}")
    return {k: float(v) / total for k, v in weights.items()}
