"""How the datasets read a store: a per-process handle, a decoded-array cache, window reads.

- ``LazyStore``: the store opened once per process (after fork or in a spawned worker), with its
  zarr arrays cached; pickling keeps only the path.
- ``VolumeCache``: whole arrays decoded once and served from memory afterwards.
- ``read_window``: a window of an array (zarr or decoded), padded where it sticks out.
- ``lazy_volumes``: the dask view of one array over many cases, for whole-dataset statistics.

The per-sample hot path reads zarr (or the cache) directly: dask's per-read graph overhead
halves throughput (docs/architecture.md, "Measured facts").
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
import zarr

from hpc_modatts.config import ConfigError
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.store import CASES, Store

Range = tuple[int, int]  # [lo, hi) along one axis
DEFAULT_CACHE_BYTES = 2 << 30  # decoded arrays held per dataset and process (0: read every sample from zarr)


class VolumeCache:
    """Whole arrays decoded once (one zarr read of the whole array, in its stored dtype, e.g.
    float16), then served from memory: a repeated slice or patch read is a memory copy.

    Filled on first touch until ``max_bytes`` are held, then it never evicts: the samplers
    shuffle every epoch, so an LRU smaller than the working set would hit about as often while
    each of its misses decodes a whole volume, where a miss here decodes only the region read.
    Hand-written: zarr 3 has no decoded-chunk cache and MONAI's CacheDataset caches whole items,
    not arrays to crop many items from. Fork: a worker inherits the parent's entries
    (copy-on-write) and fills its own, which lasts as long as the worker (``make_loader``'s
    workers live one epoch; with ``num_workers=0`` the cache lives as long as the dataset);
    pickling (spawn) drops them.

    ``axial``: hold 3D arrays Z-major (a (X, Y, Z) view of a contiguous (Z, X, Y) array), so an
    axial slice ``[:, :, z]`` is one contiguous block: faster slice copies, slower patch copies,
    so SliceDataset uses it and VolumeDataset does not.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, axial: bool = False) -> None:
        if max_bytes < 0:
            raise ConfigError(f"cache_bytes={max_bytes} must be >= 0")
        self.max_bytes, self.used, self.axial = int(max_bytes), 0, bool(axial)
        self._arrays: dict[tuple[str, str, str], np.ndarray] = {}

    def get(self, key: tuple[str, str, str], arr: zarr.Array) -> np.ndarray | zarr.Array:
        """The decoded array for ``key``: cached (read whole on first use while there is room), or ``arr`` itself."""
        hit = self._arrays.get(key)
        if hit is not None:
            return hit
        if self.used + math.prod(arr.shape) * arr.dtype.itemsize > self.max_bytes:
            return arr  # full: read only the region from zarr
        whole = np.asarray(arr[...])
        if self.axial and whole.ndim == 3:
            whole = np.ascontiguousarray(whole.transpose(2, 0, 1)).transpose(1, 2, 0)  # (X, Y, Z) view, Z-major
        self._arrays[key] = whole
        self.used += whole.nbytes
        return whole

    def __len__(self) -> int:
        return len(self._arrays)

    def __getstate__(self) -> dict:
        return {"max_bytes": self.max_bytes, "used": 0, "axial": self.axial, "_arrays": {}}


class LazyStore:
    """Opens a store once per process (after fork or in a spawned worker) and caches its arrays.

    ``cache``: a VolumeCache shared by the handles of one dataset, or None (always read from zarr).
    """

    def __init__(self, path: str | os.PathLike, cache: VolumeCache | None = None) -> None:
        self.path = str(path)
        self.cache = cache
        self._pid: int | None = None
        self._store: Store | None = None
        self._arrays: dict[tuple[str, str], zarr.Array | None] = {}

    @property
    def store(self) -> Store:
        store = self._store
        if store is None or self._pid != os.getpid():
            store = Store.open(self.path)
            self._store, self._arrays, self._pid = store, {}, os.getpid()
        return store

    def array(self, case: str, name: str) -> zarr.Array | None:
        """The named zarr array of a case, or None when the case (or the array) is absent."""
        store = self.store
        key = (case, name)
        if key not in self._arrays:
            ok = (store.path / CASES / case / name / "zarr.json").is_file() and case in store
            self._arrays[key] = store.array(case, name) if ok else None
        return self._arrays[key]

    def required(self, case: str, name: str) -> zarr.Array:
        """``array`` of an array the dataset checked every case has; DataError if it went missing."""
        arr = self.array(case, name)
        if arr is None:
            raise DataError(f"{self.path}: case {case!r} has no array {name!r}")
        return arr

    def source(self, case: str, name: str) -> np.ndarray | zarr.Array | None:
        """What to read a region of ``name`` from: the cached decoded array, else the zarr array (or None)."""
        arr = self.array(case, name)
        if arr is None or self.cache is None or self.cache.max_bytes == 0:
            return arr
        return self.cache.get((self.path, case, name), arr)

    def __getstate__(self) -> dict:
        return {"path": self.path, "cache": self.cache, "_pid": None, "_store": None, "_arrays": {}}


def _copy_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` with dtype conversion. float16 goes through torch: numpy's float16 ->
    float32 cast is an order of magnitude slower."""
    if src.dtype == np.float16 and dst.dtype in (np.float32, np.float16):
        torch.from_numpy(dst).copy_(torch.from_numpy(src))
    else:
        dst[...] = src


def read_window(
    arr: zarr.Array,
    valid: Sequence[Range],
    start: Sequence[int],
    size: Sequence[int],
    fill: float,
    dtype,
    index_tail: tuple = (),
) -> np.ndarray:
    """Read ``arr[start : start + size]`` restricted to ``valid`` ranges; the rest is ``fill``.

    ``arr`` is a zarr array (only the intersection is decoded: a region read) or a decoded
    numpy array (a memory copy). The window may stick out of the array (padding) or be smaller
    than it (cropping). ``index_tail`` indexes trailing axes (e.g. ``(z,)`` for an axial slice).
    """
    out = np.full(tuple(size), fill, dtype=dtype)
    src, dst = [], []
    for (lo, hi), s, n in zip(valid, start, size):
        a, b = max(lo, s), min(hi, s + n)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    _copy_into(out[tuple(dst)], np.asarray(arr[tuple(src) + index_tail]))
    return out


def lazy_volumes(store: Store | str | os.PathLike, cases: Sequence[str], name: str):
    """A dask array (N, X, Y, Z) of one named array (modality, "mask", "brain", ...) over ``cases``.

    For whole-dataset statistics and views; not for the per-sample training path.
    """
    import dask.array as da  # heavy, and only this whole-dataset view needs it

    store = store if isinstance(store, Store) else Store.open(store)
    arrays = [store.dask(c, name) for c in cases]
    shapes = {c: a.shape for c, a in zip(cases, arrays)}
    if len(set(shapes.values())) > 1:
        raise DataError(
            f"{store.path}: {name!r} shapes differ across cases, cannot stack: {dict(list(shapes.items())[:4])}"
        )
    return da.stack(arrays)
