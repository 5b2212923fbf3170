"""Per-case segmentation metrics of binary masks: Dice, HD95 and ASSD (mm), all from MONAI.

``dice_of`` is THE Dice of two binary volumes (validation, evaluation, stage-1 slice Dice).
Empty masks (BraTS convention): both empty gives Dice 1, HD95 0, ASSD 0; one empty gives Dice 0
and HD95 = ASSD = the image diagonal in mm (``max_distance``).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric


def dice_of(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary volumes with MONAI's DiceMetric (1.0 when both are empty)."""
    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    p = torch.from_numpy(np.asarray(pred, dtype=np.float32))[None, None]
    t = torch.from_numpy(np.asarray(truth, dtype=np.float32))[None, None]
    return float(metric(p, t).mean().item())


def max_distance(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The image diagonal in mm: HD95 and ASSD of a case where one mask is empty (BraTS convention)."""
    return float(np.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape[:3], spacing[:3]))))


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict:
    """Dice, HD95 (mm), ASSD (mm) of two binary (X, Y, Z) masks; see the module doc for empties."""
    p, r = pred > 0, ref > 0
    if not p.any() and not r.any():
        return {"dice": 1.0, "hd95": 0.0, "assd": 0.0, "note": "both empty"}
    dice = dice_of(p, r)
    if not p.any() or not r.any():
        worst = max_distance(p.shape, spacing)
        return {
            "dice": dice,
            "hd95": worst,
            "assd": worst,
            "note": "empty prediction" if not p.any() else "empty reference",
        }
    pt = torch.from_numpy(p)[None, None].float()  # (B=1, C=1, X, Y, Z)
    rt = torch.from_numpy(r)[None, None].float()
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(pt, rt, spacing=sp)
        assd = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")(pt, rt, spacing=sp)
    return {"dice": dice, "hd95": hd.item(), "assd": assd.item(), "note": ""}
