"""Rank-aware deterministic sampling: this rank's share of a seeded per-epoch permutation,
resumable mid-epoch, and the DataLoader that keeps the sampler's position exact."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hpc_modatts.config import ConfigError
from hpc_modatts.data.errors import DataError


class RankSampler(Sampler[int]):
    """This rank's disjoint, equal share of a seeded per-epoch permutation; resumable.

    Each epoch draws ``num_samples`` (default: the dataset length; more = oversampling by
    concatenated permutations) indices from ``default_rng([seed, epoch])`` (the same on every
    rank); rank r takes positions r, r + W, r + 2W, ... ; the remainder beyond a multiple of
    ``world_size`` is dropped so every rank gets the same count. ``position`` counts the samples
    of the current epoch already delivered (kept up to date by ``make_loader``'s loader).
    """

    def __init__(
        self,
        dataset_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        num_samples: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} must be in [0, world_size={world_size})")
        self.dataset_len, self.seed, self.rank, self.world_size = int(dataset_len), int(seed), rank, world_size
        self.shuffle = shuffle
        self.total = int(num_samples if num_samples is not None else dataset_len)
        self.per_rank = self.total // world_size
        if self.dataset_len < 1 or self.per_rank < 1:
            raise DataError(
                f"{self.total} sample(s) per epoch cannot feed {world_size} rank(s) "
                f"(dataset of {dataset_len}); use fewer ranks or more data"
            )
        self.epoch, self.position = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first sample (a no-op on the epoch resumed into)."""
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def indices(self) -> list[int]:
        """This rank's full list of indices for the current epoch."""
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            reps = -(-self.total // self.dataset_len)
            order = np.concatenate([rng.permutation(self.dataset_len) for _ in range(reps)])
        else:
            order = np.arange(self.total) % self.dataset_len
        return order[: self.per_rank * self.world_size][self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.position :])

    def __len__(self) -> int:
        return self.per_rank - self.position

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "total": self.total,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at (epoch, position); the seed, world size and epoch size must match."""
        for key in ("seed", "world_size", "total"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(
                    f"sampler state has {key}={state[key]}, this run has {getattr(self, key)}: "
                    f"cannot resume the same sample order"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class RankLoader(DataLoader):
    """A DataLoader that advances its RankSampler's position by the batches actually yielded."""

    def __iter__(self):
        sampler, bs = self.sampler, self.batch_size
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(sampler.epoch)  # before workers are created (they copy the dataset)
        start = sampler.position
        for n, batch in enumerate(super().__iter__(), start=1):
            sampler.position = min(start + n * bs, sampler.per_rank)
            yield batch


def make_loader(
    dataset: Dataset, batch_size_per_rank: int, sampler: RankSampler, num_workers: int = 0, drop_last: bool = False
) -> RankLoader:
    """A torch DataLoader over ``dataset`` driven by ``sampler`` (``sampler.set_epoch`` per epoch)."""
    if batch_size_per_rank < 1:
        raise ConfigError(f"batch_size_per_rank={batch_size_per_rank} must be >= 1")
    return RankLoader(
        dataset,
        batch_size=batch_size_per_rank,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
