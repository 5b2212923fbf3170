"""Axial slices of a volume at the stage-1 size, and back.

``fit_slices`` / ``unfit_slices`` centre-pad/crop the (X, Y) plane to ``data.slice_size`` and
back, filling with a given value (-1 background for images). MONAI's inverse of a crop pads with
0, which is mid-grey in our normalisation, so the small window arithmetic is written here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


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


def brain_slices(
    volume: np.ndarray, brain: np.ndarray, size: tuple[int, int], min_brain_fraction: float = 0.01
) -> np.ndarray:
    """(N, H, W) axial slices of ``volume`` (``fit_slices``) whose brain covers >= the fraction."""
    area = np.asarray(brain).sum(axis=(0, 1))  # (Z,)
    keep = area >= max(1.0, min_brain_fraction * brain.shape[0] * brain.shape[1])
    return fit_slices(volume, size, fill=-1.0)[keep]


def map_slices(
    fn: Callable[[torch.Tensor], torch.Tensor], slices: np.ndarray, device: torch.device, batch: int = 16
) -> np.ndarray:
    """Apply ``fn`` ((B, 1, H, W) -> (B, 1, H, W)) to (Z, H, W) slices in batches; float32 numpy out."""
    outs = []
    for z0 in range(0, slices.shape[0], batch):
        x = torch.from_numpy(slices[z0 : z0 + batch, None]).to(device)  # (B, 1, H, W)
        outs.append(fn(x).float()[:, 0].cpu().numpy())
    return np.concatenate(outs, axis=0)
