"""Lazy datasets over a zarr store, a resumable rank-aware sampler and the DataLoader factory.

- ``SliceDataset`` (stage 1): 2D axial slices ``vol[:, :, z]`` of one modality, with masks where
  the case is annotated and a per-slice weak label (M-GenSeg, thesis 4.4.1: diseased if
  the tumour covers >= ``min_tumour_fraction`` of the brain area, healthy if it has no tumour;
  slices in between are ambiguous and left out).
- ``VolumeDataset`` (stage 2): 3D patches of half-volumes (hemispheres, thesis 5.5.1: split at the
  case attribute ``hemisphere_split``) or of whole volumes, with the A/P weak label, the mask when
  annotated, or a stored pseudo-label array (self-training) as the mask.
- ``RankSampler``: deterministic from (seed, epoch, rank), disjoint equal shares per rank, and a
  ``state_dict`` holding (epoch, position) so a resumed run sees exactly the remaining samples.
- ``make_loader``: a DataLoader that keeps the sampler's position in step with the batches
  actually handed to the training loop (workers prefetch ahead) and passes the epoch to the
  dataset, so augmentation is deterministic from (seed, epoch, index).

Laziness: a dataset holds only the store *path* and small per-case metadata; every process
(DataLoader workers, fork or spawn) opens the store itself on first use. Reads go through
``hpc_modatts.data.store_access``: the needed region straight from zarr, or from a
``VolumeCache`` of whole decoded arrays (``cache_bytes`` per dataset and process) once a case
has been read. Crops happen at read time, augmentation afterwards on the small slice/patch.
The sampler and loader live in ``hpc_modatts.data.sampling``; every name above is importable
from here.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from hpc_modatts.config import ConfigError
from hpc_modatts.data import augment as aug
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.sampling import RankLoader, RankSampler, make_loader
from hpc_modatts.data.store import IMAGE_PREFIX
from hpc_modatts.data.store_access import DEFAULT_CACHE_BYTES, LazyStore, Range, VolumeCache, lazy_volumes, read_window

__all__ = [
    "SliceDataset",
    "VolumeDataset",
    "VolumeCache",
    "RankSampler",
    "RankLoader",
    "make_loader",
    "lazy_volumes",
    "read_window",
    "brain_box",
    "centred_window",
]


def _item_seed(seed: int, epoch: int, index: int) -> tuple[int, int, int]:
    return (int(seed), int(epoch), int(index))


class _EpochDataset(Dataset):
    """Common part: lazy store with its decoded-array cache, epoch for deterministic augmentation."""

    def __init__(
        self,
        store_path,
        cases: Sequence[str],
        modality: str,
        annotated,
        augment: bool,
        seed: int,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        axial_cache: bool = False,
        mask_name: str = "mask",
    ):
        self.cache = VolumeCache(cache_bytes, axial=axial_cache)
        self.mask_name = mask_name
        self.handle = LazyStore(store_path, self.cache)
        self.cases, self.modality = list(cases), modality
        self.image_name = f"{IMAGE_PREFIX}{modality}"
        self.annotated = frozenset(annotated or ())
        self.seed, self.epoch = int(seed), 0
        self.augment = bool(augment)
        store = self.handle.store
        missing = [c for c in self.cases if c not in store]
        if missing:
            raise DataError(f"{store.path}: {len(missing)} case(s) not in the store: {missing[:5]}")
        for c in self.cases:
            if self.handle.array(c, self.image_name) is None:
                raise DataError(f"{store.path}: case {c!r} has no modality {modality!r} (has {store.modalities(c)})")
            has_mask = self.handle.array(c, "mask") is not None
            if c in self.annotated and has_mask and self.handle.array(c, mask_name) is None:
                raise DataError(
                    f"{store.path}: case {c!r} has a mask but no {mask_name!r} (data.region): its label "
                    f"scheme {store.attrs(c).get('label_scheme')!r} does not define that region"
                )

    def set_epoch(self, epoch: int) -> None:
        """Augmentation (and random crops) are a function of (seed, epoch, index)."""
        self.epoch = int(epoch)

    def _augment(self, chain, sample: dict, index: int) -> dict:
        return aug.apply(aug.seed_chain(chain, _item_seed(self.seed, self.epoch, index)), sample)


# ---------------------------------------------------------------------------- stage 1: slices
class SliceDataset(_EpochDataset):
    """2D axial slices of one modality: item {"image", "mask", "has_mask", "weak", "case", "z"}.

    ``weak`` is 1 (diseased), 0 (healthy), or -1 when the case has no stored mask (unknown).
    Slices whose brain covers < ``min_brain_fraction`` of the slice area are skipped.
    ``cache_bytes``: decoded image/mask arrays kept in memory per process (``VolumeCache``; 0 = off).
    ``mask_name``: the array shown as "mask" (``mask`` = whole tumour, ``mask_core``, ...:
    ``hpc_modatts.data.labels.region_array``); weak labels always follow the whole tumour.
    """

    def __init__(
        self,
        store_path,
        cases: Sequence[str],
        modality: str,
        annotated=frozenset(),
        size: tuple[int, int] = (240, 240),
        augment: bool = False,
        seed: int = 0,
        min_tumour_fraction: float = 0.01,
        min_brain_fraction: float = 0.01,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        mask_name: str = "mask",
    ) -> None:
        super().__init__(
            store_path, cases, modality, annotated, augment, seed, cache_bytes, axial_cache=True, mask_name=mask_name
        )
        self.size = tuple(int(s) for s in size)
        self.chain = aug.augment_2d() if augment else None
        self.index: list[tuple[str, int, int]] = []  # (case, z, weak)
        for case in self.cases:
            self.index += self._case_slices(case, min_tumour_fraction, min_brain_fraction)
        if not self.index:
            raise DataError(f"{self.handle.path}: no usable {modality} slices in {len(self.cases)} case(s)")

    def _case_slices(self, case: str, min_tumour: float, min_brain: float) -> list[tuple[str, int, int]]:
        store = self.handle.store
        brain_area = store.read_brain(case).sum(axis=(0, 1), dtype=np.int64)  # (Z,)
        shape = self.handle.required(case, self.image_name).shape
        mask = store.read_mask(case)
        tumour = mask.sum(axis=(0, 1), dtype=np.int64) if mask is not None else None
        out = []
        for z in range(shape[2]):
            if brain_area[z] < min_brain * shape[0] * shape[1] or brain_area[z] == 0:
                continue
            if tumour is None:
                weak = -1
            elif tumour[z] == 0:
                weak = 0
            elif tumour[z] >= min_tumour * brain_area[z]:
                weak = 1
            else:
                continue  # a little tumour: neither healthy nor diseased (thesis 4.4.1)
            out.append((case, z, weak))
        return out

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        case, z, weak = self.index[i]
        arr = self.handle.source(case, self.image_name)
        if arr is None:
            raise DataError(f"{self.handle.path}: case {case!r} has no array {self.image_name!r}")
        X, Y = arr.shape[:2]
        start = ((X - self.size[0]) // 2, (Y - self.size[1]) // 2)  # centred crop / pad
        valid = ((0, X), (0, Y))
        image = read_window(arr, valid, start, self.size, -1.0, np.float32, (z,))  # (H, W)
        mask_arr = self.handle.source(case, self.mask_name) if case in self.annotated else None
        has_mask = mask_arr is not None
        mask = (
            read_window(mask_arr, valid, start, self.size, 0, np.float32, (z,))
            if has_mask
            else np.zeros(self.size, np.float32)
        )
        sample = {"image": torch.from_numpy(image)[None], "mask": torch.from_numpy(mask)[None]}  # (1, H, W)
        if self.chain is not None:
            sample = self._augment(self.chain, sample, i)
        return {**sample, "has_mask": torch.tensor(has_mask), "weak": weak, "case": case, "z": z}


# ---------------------------------------------------------------------------- stage 2: volumes
def brain_box(brain: np.ndarray, offset: Sequence[int]) -> list[Range]:
    """Bounding box [lo, hi) per axis of the nonzero voxels (whole array when empty)."""
    if not brain.any():
        return [(o, o + s) for o, s in zip(offset, brain.shape)]
    box = []
    for ax in range(brain.ndim):
        nz = np.flatnonzero(brain.any(axis=tuple(a for a in range(brain.ndim) if a != ax)))
        box.append((offset[ax] + int(nz[0]), offset[ax] + int(nz[-1]) + 1))
    return box


def centred_window(box: Sequence[Range], size: Sequence[int]) -> list[int]:
    """Origin of a ``size`` window centred on ``box`` (per axis; negative = sticks out, padded)."""
    return [(lo + hi) // 2 - n // 2 for (lo, hi), n in zip(box, size)]


class VolumeDataset(_EpochDataset):
    """3D patches of hemispheres (``half=True``) or whole volumes.

    item {"image": (1, X, Y, Z), "mask": (1, X, Y, Z), "has_mask", "weak": 0 (A) | 1 (P),
    "case", "side": "left" | "right" | "whole"}. The patch covers the brain of the half: centred
    on the brain's bounding box, padded with -1 (images) / 0 (masks) where the half is smaller,
    at a random offset (from seed/epoch/index; centred when ``augment`` is off) where larger.
    Voxels of the other hemisphere are never shown (they are padding). ``extra_mask`` names a
    stored array (e.g. "pseudo_label") used as the mask for the cases that have it, read from
    ``extra_store`` (default: the same store). ``cache_bytes``: decoded arrays kept in memory per
    process (``VolumeCache``, shared with the extra store; 0 = every patch read from zarr).
    ``mask_name``: the annotated cases' array shown as "mask" (``mask`` = whole tumour,
    ``mask_core``, ...); the weak label of a window always follows the whole tumour.
    """

    def __init__(
        self,
        store_path,
        cases: Sequence[str],
        modality: str,
        patch_size: tuple[int, int, int] = (96, 160, 64),
        half: bool = True,
        annotated=frozenset(),
        augment: bool = False,
        seed: int = 0,
        extra_mask: str | None = None,
        extra_store: str | os.PathLike | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        mask_name: str = "mask",
    ) -> None:
        super().__init__(store_path, cases, modality, annotated, augment, seed, cache_bytes, mask_name=mask_name)
        self.patch_size = tuple(int(s) for s in patch_size)
        if len(self.patch_size) != 3:
            raise ConfigError(f"patch_size={list(patch_size)} must have 3 values (X, Y, Z)")
        self.extra_mask = extra_mask
        self.extra = LazyStore(extra_store, self.cache) if extra_store else self.handle
        self.chain = aug.augment_3d() if augment else None
        # (case, side, valid ranges, brain box, weak label from the attributes)
        self.index: list[tuple[str, str, list[Range], list[Range], int]] = []
        for case in self.cases:
            self.index += self._case_items(case, half)

    def _case_items(self, case: str, half: bool) -> list:
        store = self.handle.store
        attrs = store.attrs(case)
        X, Y, Z = self.handle.required(case, self.image_name).shape
        weak = attrs.get("weak_labels") or {}
        if half:
            split = attrs.get("hemisphere_split")
            if not isinstance(split, int) or not 0 < split < X:
                raise DataError(
                    f"{store.path}: case {case!r}: attribute hemisphere_split={split!r} must be an X index in (0, {X})"
                )
            parts = [("left", (0, split)), ("right", (split, X))]
        else:
            parts = [("whole", (0, X))]
        items = []
        for side, (x0, x1) in parts:
            valid = [(x0, x1), (0, Y), (0, Z)]
            box = brain_box(store.read_brain(case, (slice(x0, x1), slice(None), slice(None))), (x0, 0, 0))
            items.append((case, side, valid, box, self._attr_weak(case, side, weak)))
        return items

    def _attr_weak(self, case: str, side: str, weak: dict) -> int:
        """Weak label from the case attributes (used when the case has no stored mask; -1 if absent)."""
        sides = ("left", "right") if side == "whole" else (side,)
        if all(s in weak for s in sides):
            return int(any(weak[s] == "P" for s in sides))
        if self.handle.array(case, "mask") is None:
            raise DataError(f"{self.handle.path}: case {case!r} has neither weak_labels[{side!r}] nor a mask")
        return -1

    def __len__(self) -> int:
        return len(self.index)

    def _window_start(self, box: list[Range], index: int) -> list[int]:
        """Centred on the brain box (``centred_window``; what inference feeds), or, with
        augmentation, at a random offset along axes where the box is larger than the patch."""
        start = centred_window(box, self.patch_size)
        if self.augment:
            rng = np.random.default_rng(_item_seed(self.seed, self.epoch, index))
            for ax, ((lo, hi), n) in enumerate(zip(box, self.patch_size)):
                if hi - lo > n:
                    start[ax] = int(rng.integers(lo, hi - n + 1))
        return start

    def _mask(self, case: str, valid, start) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(mask shown to the model or None, true mask of the window for the weak label or None)."""
        true = self.handle.source(case, "mask")
        true_win = read_window(true, valid, start, self.patch_size, 0, np.uint8) if true is not None else None
        if self.extra_mask:
            extra = self.extra.source(case, self.extra_mask)
            if extra is not None:
                shown = read_window(extra, valid, start, self.patch_size, 0, np.float32)
                return (shown >= 0.5).astype(np.float32), true_win
        if case in self.annotated and true_win is not None:
            if self.mask_name != "mask":
                region = self.handle.source(case, self.mask_name)
                return read_window(region, valid, start, self.patch_size, 0, np.float32), true_win
            return true_win.astype(np.float32), true_win
        return None, true_win

    def __getitem__(self, i: int) -> dict:
        case, side, valid, box, weak = self.index[i]
        start = self._window_start(box, i)
        image = read_window(
            self.handle.source(case, self.image_name), valid, start, self.patch_size, -1.0, np.float32
        )  # (X, Y, Z)
        shown, true_win = self._mask(case, valid, start)
        if true_win is not None:  # a stored mask: is there tumour in the window actually shown?
            weak = int(true_win.any())
        mask = shown if shown is not None else np.zeros(self.patch_size, np.float32)
        sample = {"image": torch.from_numpy(image)[None], "mask": torch.from_numpy(mask)[None]}  # (1, X, Y, Z)
        if self.chain is not None:
            sample = self._augment(self.chain, sample, i)
        return {**sample, "has_mask": torch.tensor(shown is not None), "weak": weak, "case": case, "side": side}
