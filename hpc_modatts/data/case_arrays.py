"""The arrays of one case, named and checked before a writer touches the store.

``case_arrays`` turns what a writer hands over (images per modality, masks, extra arrays) into
the case's named arrays: ``image_<modality>`` in the store's image dtype, ``mask`` / ``labels`` /
``brain`` as uint8, extras as given; one shared 3D shape, finite values, names that fit the
layout. ``check_case_id`` keeps a case id usable as a folder name, ``json_safe`` makes attributes
JSON, ``chunks_for`` / ``shards_for`` give an array's chunk and shard shapes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hpc_modatts.data.errors import DataError

IMAGE_PREFIX = "image_"


def check_case_id(case: str) -> str:
    if not case or "/" in case or "\\" in case or case.startswith(".") or case != case.strip():
        raise DataError(f"case id {case!r} is not usable as a folder name (no '/', no leading '.')")
    return case


def chunks_for(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(1, min(int(s), int(c))) for s, c in zip(shape, chunks))


def shards_for(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    """One shard covering the whole array, as a multiple of the chunk shape (zarr v3 requires it)."""
    return tuple(c * math.ceil(s / c) for s, c in zip(shape, chunks))


def json_safe(obj: Any) -> Any:
    """Attributes go to JSON: convert numpy scalars/arrays and tuples."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def case_arrays(
    case: str,
    image_dtype: np.dtype,
    images: Mapping[str, np.ndarray],
    mask: np.ndarray | None,
    labels: np.ndarray | None,
    brain: np.ndarray | None,
    extra: Mapping[str, np.ndarray] | None,
) -> dict[str, tuple[np.ndarray, bool]]:
    """Name -> (array, is an image) of one case; DataError on a bad name, NaN/Inf or mixed shapes."""
    arrays: dict[str, tuple[np.ndarray, bool]] = {}
    for mod, img in images.items():
        if not mod or "/" in mod:
            raise DataError(f"case {case!r}: modality name {mod!r} is not usable")
        arrays[f"{IMAGE_PREFIX}{mod}"] = (np.asarray(img, dtype=image_dtype), True)
    for name, arr in (("mask", mask), ("labels", labels), ("brain", brain)):
        if arr is not None:
            arrays[name] = (np.asarray(arr, dtype=np.uint8), False)
    for name, arr in (extra or {}).items():
        if name in arrays or name.startswith((IMAGE_PREFIX, ".")) or "/" in name:
            raise DataError(f"case {case!r}: extra array name {name!r} clashes with the store layout")
        arr = np.asarray(arr)
        arrays[name] = (arr, arr.dtype.kind == "f")
    for name, (arr, _) in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(
                f"case {case!r}: array {name!r} has {int(np.count_nonzero(~np.isfinite(arr)))} "
                "NaN/Inf values; nothing was written"
            )
    if not arrays:
        raise DataError(f"case {case!r}: nothing to write (no images, masks or arrays)")
    shapes = {name: a.shape for name, (a, _) in arrays.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 3:
        raise DataError(f"case {case!r}: arrays must share one 3D (X, Y, Z) shape, got {shapes}")
    return arrays
