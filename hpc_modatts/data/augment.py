"""On-the-fly augmentation: MONAI dictionary transform chains.

- ``augment_2d``: stage 1 (translation, 2D axial slices; thesis 5.5.1 "on-the-fly 2D data
  augmentation"): random flips, small rotations/scaling, intensity jitter.
- ``augment_3d``: stage 2 (segmentation; thesis 5.5.1 "3D nnU-Net on-the-fly data augmentation"):
  rotation, scaling, mirroring, gamma, gaussian noise, gaussian blur, brightness, contrast, with
  nnU-Net's default ranges and probabilities.

Spatial transforms act identically on image and mask (bilinear for images, nearest for masks);
intensity transforms act on the image only and the image is clipped back to [-1, 1]. Out-of-
field regions are filled by replicating the border (the background is -1, so images stay -1)
for images and with 0 for masks. Transforms expect channel-first tensors: (C, X, Y) or
(C, X, Y, Z). Apply them to a cropped slice/patch, never to a whole volume (cost).

Determinism: ``seed_chain(chain, seed)`` re-seeds every random transform (MONAI
``set_random_state``); the loaders derive that seed from (dataset seed, epoch, index).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    ShiftIntensityd,
    ThresholdIntensityd,
)
from monai.utils import convert_to_tensor

IMAGE, MASK = "image", "mask"


def _clip_unit(key: str) -> list:
    """Clip ``key`` to [-1, 1] with MONAI's ThresholdIntensityd (keep below 1, then above -1)."""
    return [
        ThresholdIntensityd(key, threshold=1.0, above=False, cval=1.0),
        ThresholdIntensityd(key, threshold=-1.0, above=True, cval=-1.0),
    ]


def _brightness(key: str, factor: float, prob: float) -> list:
    """Multiplicative brightness on (x + 1) so that the -1 background stays -1."""
    return [
        ShiftIntensityd(key, offset=1.0),
        RandScaleIntensityd(key, factors=factor, prob=prob),
        ShiftIntensityd(key, offset=-1.0),
    ]


def _spatial_keys(keys: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Interpolation and padding per key: images bilinear + border, masks nearest + zeros."""
    modes = ["nearest" if k != IMAGE else "bilinear" for k in keys]
    pads = ["zeros" if k != IMAGE else "border" for k in keys]
    return list(keys), modes, pads


def augment_2d(keys: Sequence[str] = (IMAGE, MASK)) -> Compose:
    """Stage-1 chain for (1, H, W) slices: flips, rotation +-15 deg, scaling +-10 %, intensity jitter."""
    keys, modes, pads = _spatial_keys(keys)
    return Compose(
        [
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandAffined(
                keys, prob=0.5, rotate_range=math.radians(15), scale_range=(0.1, 0.1), mode=modes, padding_mode=pads
            ),
            *_brightness(IMAGE, factor=0.1, prob=0.3),
            RandAdjustContrastd(IMAGE, prob=0.3, gamma=(0.8, 1.25)),
            *_clip_unit(IMAGE),
        ]
    )


def augment_3d(keys: Sequence[str] = (IMAGE, MASK)) -> Compose:
    """Stage-2 nnU-Net-style chain for (1, X, Y, Z) patches (nnU-Net v2 default ranges)."""
    keys, modes, pads = _spatial_keys(keys)
    rot = math.radians(30)
    return Compose(
        [
            # rotation +-30 deg per axis and scaling 0.7-1.4 in one resampling (nnU-Net: p 0.2 each)
            RandAffined(
                keys,
                prob=0.3,
                rotate_range=(rot, rot, rot),
                scale_range=[(-0.3, 0.4)] * 3,
                mode=modes,
                padding_mode=pads,
            ),
            RandGaussianNoised(IMAGE, prob=0.1, mean=0.0, std=0.1),
            RandGaussianSmoothd(IMAGE, prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
            *_brightness(IMAGE, factor=0.25, prob=0.15),  # x U(0.75, 1.25)
            RandScaleIntensityFixedMeand(IMAGE, factors=0.25, preserve_range=True, prob=0.15),  # contrast
            RandAdjustContrastd(IMAGE, prob=0.3, gamma=(0.7, 1.5)),  # gamma, range kept
            RandFlipd(keys, prob=0.5, spatial_axis=0),  # mirroring per axis
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys, prob=0.5, spatial_axis=2),
            *_clip_unit(IMAGE),
        ]
    )


def seed_chain(chain: Compose, seed: int | Sequence[int]) -> Compose:
    """Re-seed every random transform of ``chain`` (``seed`` may be a tuple, e.g. (seed, epoch, index))."""
    seq = np.random.SeedSequence(seed if isinstance(seed, int) else [int(s) for s in seed])
    chain.set_random_state(seed=int(seq.generate_state(1)[0]))
    return chain


def apply(chain: Compose, sample: dict) -> dict:
    """Run ``chain`` on a dict of channel-first tensors; returns plain float32 torch tensors."""
    out = chain(sample)
    return {
        k: convert_to_tensor(v, track_meta=False).to(torch.float32) if k in (IMAGE, MASK) else v for k, v in out.items()
    }
