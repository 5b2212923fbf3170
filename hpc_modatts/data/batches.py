"""Training items of two datasets at once, and the case names of a batch.

* ``PairedDataset``: one item of each of two datasets per sample (stage 1: a source slice and a
  target slice; stage 2: a pseudo-target and a real target half-volume).
* ``KeyedDataset``: one dataset with the same ``{key: item}`` layout.
* ``case_ids`` / ``paired_case_ids``: the case names of a batch, for the trainer's NaN message.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from hpc_modatts.data.errors import DataError


class PairedDataset(Dataset):
    """Item i = ``{first_key: first[i % len(first)], second_key: second[j]}``, j drawn at random.

    The length is the longer of the two, so every sample of both is seen about once per epoch;
    the partner index comes from torch's global generator (the trainer seeds it per rank and
    saves it in checkpoints), so pairs change between epochs (unpaired data, thesis 5.5.1).
    """

    def __init__(self, first: Dataset, second: Dataset, first_key: str, second_key: str) -> None:
        if len(first) == 0 or len(second) == 0:
            raise DataError(
                f"paired dataset: {first_key} has {len(first)} and {second_key} "
                f"{len(second)} samples; both need at least one"
            )
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


class KeyedDataset(Dataset):
    """Wrap a dataset so that its items come as ``{key: item}`` (same batch layout as pairs)."""

    def __init__(self, dataset: Dataset, key: str) -> None:
        self.dataset, self.key = dataset, key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {self.key: self.dataset[i]}

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def case_ids(batch: Any) -> list[str]:
    """Case names of a batch: ``batch["case"]`` (plus ``side``/``z`` when present)."""
    if not isinstance(batch, dict) or "case" not in batch:
        return []
    cases = batch["case"]
    cases = [cases] if isinstance(cases, str) else list(cases)
    for extra in ("side", "z"):
        if extra in batch:
            vals = batch[extra]
            vals = vals.tolist() if torch.is_tensor(vals) else list(vals) if isinstance(vals, (list, tuple)) else [vals]
            if len(vals) == len(cases):
                cases = [f"{c}:{v}" for c, v in zip(cases, vals)]
    return [str(c) for c in cases]


def paired_case_ids(batch: dict) -> list[str]:
    """Case names of a paired (or keyed) batch, every part's in turn."""
    return [i for v in batch.values() if isinstance(v, dict) for i in case_ids(v)]
