"""Stage-2 items on 2D axial slices of hemispheres: what MoDATTS-2D trains on.

``VolumeSliceDataset`` is ``VolumeDataset`` (hemispheres or whole volumes, masks, pseudo-labels
from an extra store, weak labels) cut into axial slices: one item per slice ``z`` of a part
whose brain covers at least ``min_brain_fraction`` of the window, the in-plane window being
``slice_size`` (the 3D patch's X, Y) centred on the part's brain box as the 3D patches are
(random in-plane offset where the box is larger, with ``augment``), so THE inferer run with a
(X, Y, 1) patch (``infer.inferer``, ``slices=True``) shows a 2D model exactly these windows.

Slice weak labels follow M-GenSeg (thesis 4.4.1: "We split the 3D brain volumes into 2
hemispheres and extracted 2D axial slices. Any slices with at least 1 % tumor by brain surface
area were considered diseased. Those that didn't show any tumor lesion were labelled as
healthy"): with a stored mask, 1 (P) when the tumour covers >= ``min_tumour_fraction`` of the
part's brain area in that slice, 0 (A) without tumour, -1 in between (ambiguous: kept for Dice,
left out of the GenSeg terms, which take only 0 and 1). Without a stored mask (e.g. CrossMoDA
hrT2) only the hemisphere label is known: slices of an A hemisphere are 0, of a P one -1.
"""

from __future__ import annotations

import os
from typing import Sequence, cast

import numpy as np
import torch

from hpc_modatts.data import augment as aug
from hpc_modatts.data.loaders import VolumeDataset, read_window
from hpc_modatts.data.store_access import DEFAULT_CACHE_BYTES, Range

SliceItem = tuple[str, str, list[Range], list[Range], int, int]
"""(case, side, valid ranges, brain box, weak label, z): one entry of ``VolumeSliceDataset.index``."""


class VolumeSliceDataset(VolumeDataset):
    """Axial slices of hemispheres (``half``) or volumes.

    item {"image": (1, X, Y), "mask": (1, X, Y), "has_mask", "weak": 1 | 0 | -1, "case",
    "side": "left" | "right" | "whole", "z"}.
    """

    def __init__(
        self,
        store_path,
        cases: Sequence[str],
        modality: str,
        slice_size: tuple[int, int] = (96, 160),
        half: bool = True,
        annotated=frozenset(),
        augment: bool = False,
        seed: int = 0,
        extra_mask: str | None = None,
        extra_store: str | os.PathLike | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        mask_name: str = "mask",
        min_tumour_fraction: float = 0.01,
        min_brain_fraction: float = 0.01,
    ) -> None:
        self.min_tumour_fraction, self.min_brain_fraction = float(min_tumour_fraction), float(min_brain_fraction)
        sx, sy = (int(s) for s in slice_size)
        super().__init__(
            store_path,
            cases,
            modality,
            patch_size=(sx, sy, 1),
            half=half,
            annotated=annotated,
            augment=augment,
            seed=seed,
            extra_mask=extra_mask,
            extra_store=extra_store,
            cache_bytes=cache_bytes,
            mask_name=mask_name,
        )
        self.chain = aug.augment_2d() if augment else None

    def _case_items(self, case: str, half: bool) -> list:
        """A ``SliceItem`` for every slice of every part with enough brain."""
        store = self.handle.store
        mask = store.read_mask(case)  # (X, Y, Z) or None
        min_area = max(1.0, self.min_brain_fraction * self.patch_size[0] * self.patch_size[1])
        items = []
        for _, side, valid, box, weak in super()._case_items(case, half):
            part = (slice(*valid[0]), slice(None), slice(None))
            brain = store.read_brain(case, part).sum(axis=(0, 1), dtype=np.int64)  # (Z,)
            tumour = mask[part].sum(axis=(0, 1), dtype=np.int64) if mask is not None else None
            for z in range(*box[2]):
                if brain[z] >= min_area:
                    items.append((case, side, valid, box, self._slice_weak(weak, brain[z], tumour, z), z))
        return items

    def _slice_weak(self, part_weak: int, brain: int, tumour: np.ndarray | None, z: int) -> int:
        if tumour is None:  # hemisphere label only: its slices are healthy when it is
            return 0 if part_weak == 0 else -1
        if tumour[z] == 0:
            return 0
        return 1 if tumour[z] >= self.min_tumour_fraction * brain else -1

    def __getitem__(self, i: int) -> dict:
        case, side, valid, box, weak, z = cast(SliceItem, self.index[i])  # VolumeDataset's entry + z
        start = self._window_start([box[0], box[1], (z, z + 1)], i)  # in-plane as VolumeDataset, at slice z
        image = read_window(self.handle.source(case, self.image_name), valid, start, self.patch_size, -1.0, np.float32)[
            ..., 0
        ]  # (X, Y)
        shown, true_win = self._mask(case, valid, start)  # (X, Y, 1) windows or None
        if true_win is not None and not true_win.any():
            weak = 0  # the window shows no tumour (a random in-plane offset may have cut it out)
        mask = shown[..., 0] if shown is not None else np.zeros(self.patch_size[:2], np.float32)
        sample = {"image": torch.from_numpy(image)[None], "mask": torch.from_numpy(mask)[None]}  # (1, X, Y)
        if self.chain is not None:
            sample = self._augment(self.chain, sample, i)
        return {**sample, "has_mask": torch.tensor(shown is not None), "weak": weak, "case": case, "side": side, "z": z}
