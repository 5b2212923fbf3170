"""Brain masks: from a brain-mask file, or from the images' background.

Skull-stripped releases (BraTS) have a background of exactly 0; copies that were z-scored before
they were shared have a CONSTANT non-zero background instead ((0 - mean) / std, e.g. -3.6), and
taking "non-zero" as brain would then make the whole box brain. :func:`constant_background`
finds that value on the volume's border; the brain is every voxel that differs from it (in any
modality), its largest connected component with holes filled. A brain-mask file, when the case
has one, wins over both. Images that are not skull-stripped (CrossMoDA: noisy air around the
head) have no constant border value and keep the "non-zero" rule.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

BORDER_FRACTION = 0.5
"""A value is the background when at least this fraction of the border voxels hold it exactly."""


def border_values(vol: np.ndarray) -> np.ndarray:
    """The voxels of the six faces of a 3D volume, flattened."""
    return np.concatenate(
        [
            vol[0].ravel(),
            vol[-1].ravel(),
            vol[:, 0].ravel(),
            vol[:, -1].ravel(),
            vol[:, :, 0].ravel(),
            vol[:, :, -1].ravel(),
        ]
    )


def constant_background(vol: np.ndarray) -> float | None:
    """The value filling the volume's border (0 for skull-stripped data, e.g. -3.6 for z-scored
    data), or None when the border holds no dominant constant (not skull-stripped)."""
    values, counts = np.unique(border_values(vol), return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] < BORDER_FRACTION * counts.sum():
        return None
    return float(values[top])


def differs_from(vol: np.ndarray, value: float) -> np.ndarray:
    """``vol != value`` with a relative tolerance of float32 round-off (z-scored files are floats)."""
    if value == 0:
        return vol != 0
    return np.abs(vol.astype(np.float64) - value) > 1e-6 * max(1.0, abs(value))


def largest_component_filled(fg: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(fg)
    if n > 1:
        fg = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    return ndi.binary_fill_holes(fg)


def brain_from_images(vols: dict[str, np.ndarray], backgrounds: dict[str, float]) -> np.ndarray:
    """Voxels that differ from their modality's background in any modality: largest component, filled."""
    fg = np.any([differs_from(v, backgrounds.get(m, 0.0)) for m, v in vols.items()], axis=0)
    return largest_component_filled(fg)
