"""The zarr v3 store: one store holds every modality of every case (see docs/interfaces.md).

Layout on disk (local file system only: atomic case writes rely on ``os.replace`` of folders)::

    STORE.zarr/                     root group, attrs {"hpc_modatts": {"format": 1, "kind": ..., "layout": {...},
                                    "store_id": <uuid>, "expected_cases": [...] (convert), ...}}
        cases/                      group
            <case>/                 group, attrs = case attributes (``complete: true`` set last)
                image_<modality>    (X, Y, Z) float16 (convert's default) or float32, [-1, 1], background -1
                mask                (X, Y, Z) uint8 {0, 1} whole tumour (optional)
                labels              (X, Y, Z) uint8 original label values (optional)
                brain               (X, Y, Z) uint8 {0, 1} (optional)
                <extra name>        any other named array ("pseudo_label", "prob", ...)
            .tmp-<case>~<host>~<pid>~<rand>/   a case being written; renamed to <case> when complete
    .STORE.zarr.lock                beside the store while a convert run holds it (``store_lock``)

Arrays are in canonical RAS orientation, index order (X, Y, Z); a writer's arrays are named
and checked first (``hpc_modatts.data.case_arrays``).

Integrity: the case attribute ``arrays`` lists every array with the sha256 of its decoded
bytes (``array_record``); ``complete`` is set only after the written arrays were read back and
matched it, and ``Store.array_problems`` re-checks a case (``verify``, and ``convert`` before it
skips a case). A deleted chunk, shard, array or ``zarr.json`` and a flipped byte that changes
any value are all caught. Temp folders are removed only once their writer is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from hpc_modatts.data.case_arrays import IMAGE_PREFIX, case_arrays, check_case_id, chunks_for, json_safe, shards_for
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.integrity import STALE_AFTER_S, array_record, check_arrays, temp_name, temp_owner_alive

log = logging.getLogger(__name__)

FORMAT = 1
KINDS = ("dataset", "synthetic", "pseudo_labels")
CASES = "cases"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"

# --- storage layout (chosen by benchmarks/loader.py; its numbers are in docs/results.md) --------
# Only this block may be tuned by the loader benchmark; everything else reads these constants.
# (120, 120, 16) chunks + blosc-lz4 read axial slices and half-brain patches fastest of the
# layouts swept (a slice touches 4 chunks, a 96x160x64 patch at most 2x2x5). Images are written
# with fill value -1 (the background), so all-background chunks are never written (zarr's
# write_empty_chunks=False) and read back as -1. float16 halves the image bytes at a round-off
# far under the MRI noise after the 5-std normalisation: datasets (``convert``) default to
# float16 + shards; ``Store.create`` keeps float32 by default, so stores the pipeline writes
# from float32 arrays (synthetic volumes, pseudo-labels, predictions' inputs) read back exactly.
IMAGE_DTYPE = "float32"  # Store.create's default image dtype (exact round trip)
DATASET_DTYPE = "float16"  # convert's default for new dataset stores (half the bytes)
IMAGE_CHUNKS = (120, 120, 16)  # (X, Y, Z) chunk of image arrays, clipped to the array shape
LABEL_CHUNKS = (120, 120, 16)  # chunk of mask / labels / brain / extra arrays, aligned with images
IMAGE_CODEC = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}
LABEL_CODEC = {"cname": "zstd", "clevel": 3, "shuffle": "bitshuffle"}
IMAGE_FILL = -1.0  # fill value of image arrays (background; chunks of it are not written)
SHARDED = True  # one zarr v3 shard per array: a few files per case instead of one per chunk
# --- end of storage layout -------------------------------------------------------------------


def _ours(root_attrs: Mapping[str, Any]) -> bool:
    meta = root_attrs.get("hpc_modatts")
    return isinstance(meta, Mapping) and meta.get("format") == FORMAT


class Store:
    """A converted dataset (or synthetic / pseudo-label volumes) in one zarr v3 store."""

    def __init__(self, path: Path, root: zarr.Group) -> None:
        self.path = Path(path)
        self._root = root

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> "Store":
        """Open an existing store; DataError if it is missing or not an hpc-modatts store."""
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise DataError(f"{path}: no hpc-modatts store here (missing or not a zarr v3 group)")
        try:
            root = zarr.open_group(str(path), mode="r+", zarr_format=3)
        except Exception as e:  # zarr raises several types for foreign/corrupt metadata
            raise DataError(f"{path}: cannot open as a zarr v3 group ({type(e).__name__}: {e})") from None
        if not _ours(root.attrs):
            raise DataError(f"{path}: a zarr store, but not an hpc-modatts store (no 'hpc_modatts' root attribute)")
        return cls(path, root)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        kind: str = "dataset",
        dtype: str = IMAGE_DTYPE,
        sharded: bool = SHARDED,
        **root_attrs: Any,
    ) -> "Store":
        """Create a store, or reopen ours of the same kind (resumable writers).

        DataError if ``path`` exists and is not an (empty folder or) hpc-modatts store of ``kind``.
        Stale temporary case groups left by a killed writer are removed.
        """
        path = Path(path)
        if kind not in KINDS:
            raise DataError(f"{path}: store kind {kind!r} is not one of {', '.join(KINDS)}")
        if dtype not in ("float32", "float16"):
            raise DataError(f"{path}: image dtype {dtype!r} must be float32 or float16")
        if path.exists():
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            else:
                store = cls.open(path)  # raises DataError when not ours
                have = store.root_attrs.get("kind")
                if have != kind:
                    raise DataError(f"{path}: existing store has kind {have!r}, not {kind!r}")
                store.remove_stale()
                return store
        path.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        layout = {
            "image_dtype": dtype,
            "image_chunks": list(IMAGE_CHUNKS),
            "label_chunks": list(LABEL_CHUNKS),
            "image_codec": IMAGE_CODEC,
            "label_codec": LABEL_CODEC,
            "sharded": bool(sharded),
        }
        root.create_group(CASES)
        root.attrs["hpc_modatts"] = json_safe(
            {"format": FORMAT, "kind": kind, "layout": layout, "store_id": uuid.uuid4().hex, **root_attrs}
        )
        return cls(path, root)

    @property
    def root_attrs(self) -> dict:
        """The store-level attributes (format, kind, layout and whatever the writer added)."""
        return dict(self._root.attrs["hpc_modatts"])

    def update_root_attrs(self, **attrs: Any) -> None:
        meta = self.root_attrs
        meta.update(json_safe(attrs))
        self._root.attrs["hpc_modatts"] = meta

    @property
    def _cases_dir(self) -> Path:
        return self.path / CASES

    def temp_folders(self) -> list[str]:
        """Names of the temporary / replaced case folders present (being written, or left behind)."""
        if not self._cases_dir.is_dir():
            return []
        return sorted(d.name for d in self._cases_dir.iterdir() if d.name.startswith((TMP_PREFIX, OLD_PREFIX)))

    def remove_stale(self) -> list[str]:
        """Delete temp / replaced case folders whose writer is gone. Returns their names.

        A folder is removed when its owner (host and pid in its name) is this host's and no
        longer runs, or, when that cannot be checked, after ``STALE_AFTER_S``: another
        writer's folder in progress is never touched.
        """
        removed = []
        for name in self.temp_folders():
            d = self._cases_dir / name
            alive = temp_owner_alive(name)
            try:
                old = time.time() - d.stat().st_mtime > STALE_AFTER_S
            except FileNotFoundError:
                continue
            if alive is False or (alive is None and old):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(name)
        if removed:
            log.info("%s: removed %d stale temporary case group(s)", self.path, len(removed))
        return removed

    # ------------------------------------------------------------------ reading
    @property
    def case_ids(self) -> list[str]:
        """Complete cases only, sorted."""
        if not self._cases_dir.is_dir():
            return []
        return sorted(
            d.name
            for d in self._cases_dir.iterdir()
            if d.is_dir() and not d.name.startswith(".") and self.is_complete(d.name)
        )

    def all_case_dirs(self) -> list[str]:
        """Every non-temporary case folder, complete or not (for verify)."""
        if not self._cases_dir.is_dir():
            return []
        return sorted(d.name for d in self._cases_dir.iterdir() if d.is_dir() and not d.name.startswith("."))

    def is_complete(self, case: str) -> bool:
        try:
            return bool(self._group(case).attrs.get("complete", False))
        except DataError:
            return False

    def __contains__(self, case: str) -> bool:
        return self.is_complete(case)

    def __len__(self) -> int:
        return len(self.case_ids)

    def _group(self, case: str) -> zarr.Group:
        if not (self._cases_dir / case / "zarr.json").is_file():
            raise DataError(f"{self.path}: no case {case!r} in the store")
        return zarr.open_group(str(self._cases_dir / case), mode="r", zarr_format=3)

    def array_names(self, case: str) -> list[str]:
        return sorted(self._group(case).array_keys())

    def modalities(self, case: str) -> list[str]:
        return [n[len(IMAGE_PREFIX) :] for n in self.array_names(case) if n.startswith(IMAGE_PREFIX)]

    def attrs(self, case: str) -> dict:
        return dict(self._group(case).attrs)

    def array_problems(self, case: str, on_array: Callable[[str, np.ndarray], None] | None = None) -> list[str]:
        """What is wrong with a case's arrays (``check_arrays`` against its ``arrays`` attribute);
        a case without that attribute (written before checksums) cannot be checked: one problem."""
        records = self.attrs(case).get("arrays")
        if not isinstance(records, Mapping):
            return ["no array checksums (written by an older hpc-modatts): damage cannot be detected"]
        return check_arrays(self._cases_dir / case, records, on_array)

    def array(self, case: str, name: str) -> zarr.Array:
        """A named array of a case, lazy (slice it)."""
        p = self._cases_dir / case / name
        if not (p / "zarr.json").is_file():
            self._group(case)  # raises for a missing case
            raise DataError(f"{self.path}: case {case!r} has no array {name!r} (has {self.array_names(case)})")
        return zarr.open_array(str(p), mode="r", zarr_format=3)

    def image(self, case: str, modality: str) -> zarr.Array:
        """The (X, Y, Z) image of one modality, lazy."""
        if not (self._cases_dir / case / f"{IMAGE_PREFIX}{modality}").is_dir():
            self._group(case)
            raise DataError(f"{self.path}: case {case!r} has no modality {modality!r} (has {self.modalities(case)})")
        return self.array(case, f"{IMAGE_PREFIX}{modality}")

    def mask(self, case: str) -> zarr.Array | None:
        """Whole-tumour mask {0, 1}, or None when the case has none."""
        return self._optional(case, "mask")

    def _optional(self, case: str, name: str) -> zarr.Array | None:
        if (self._cases_dir / case / name / "zarr.json").is_file():
            return self.array(case, name)
        self._group(case)
        return None

    @staticmethod
    def _read(arr: zarr.Array, region: tuple[slice, ...] | None) -> np.ndarray:
        return np.asarray(arr[region if region is not None else ...])

    def read_image(self, case: str, modality: str, region: tuple[slice, ...] | None = None) -> np.ndarray:
        return self._read(self.image(case, modality), region).astype(np.float32, copy=False)

    def read_mask(self, case: str, region: tuple[slice, ...] | None = None) -> np.ndarray | None:
        arr = self.mask(case)
        return None if arr is None else self._read(arr, region).astype(np.uint8, copy=False)

    def read_labels(self, case: str, region: tuple[slice, ...] | None = None) -> np.ndarray | None:
        arr = self._optional(case, "labels")
        return None if arr is None else self._read(arr, region).astype(np.uint8, copy=False)

    def read_brain(self, case: str, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Brain (foreground) mask; derived from the images (> -1) when not stored."""
        arr = self._optional(case, "brain")
        if arr is not None:
            return self._read(arr, region).astype(np.uint8, copy=False)
        brain = None
        for mod in self.modalities(case):
            fg = self.read_image(case, mod, region) > -1.0
            brain = fg if brain is None else brain | fg
        if brain is None:
            raise DataError(f"{self.path}: case {case!r} has neither a brain mask nor images")
        return brain.astype(np.uint8)

    def read_array(self, case: str, name: str, region: tuple[slice, ...] | None = None) -> np.ndarray:
        return self._read(self.array(case, name), region)

    def dask(self, case: str, name: str):
        """A named array ("image_t1", "mask", ...) or a modality name, as a dask array."""
        import dask.array as da  # heavy, and only the whole-dataset view needs it

        if not (self._cases_dir / case / name).is_dir() and (self._cases_dir / case / f"{IMAGE_PREFIX}{name}").is_dir():
            name = f"{IMAGE_PREFIX}{name}"
        return da.from_zarr(self.array(case, name))

    # ------------------------------------------------------------------ writing
    def _create_array(self, group: zarr.Group, name: str, data: np.ndarray, image: bool) -> None:
        layout = self.root_attrs["layout"]
        shape = tuple(int(s) for s in data.shape)
        chunks = chunks_for(shape, tuple(layout["image_chunks" if image else "label_chunks"]))
        codec = BloscCodec(**(layout["image_codec"] if image else layout["label_codec"]))
        shards = shards_for(shape, chunks) if layout.get("sharded") else None
        fill = IMAGE_FILL if name.startswith(IMAGE_PREFIX) else 0
        arr = group.create_array(
            name, shape=shape, dtype=data.dtype, chunks=chunks, shards=shards, compressors=codec, fill_value=fill
        )
        arr[...] = data

    def write_case(
        self,
        case: str,
        images: Mapping[str, np.ndarray],
        mask: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        brain: np.ndarray | None = None,
        extra: Mapping[str, np.ndarray] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Write (or replace) one case atomically: a temp group renamed into place when complete."""
        check_case_id(case)
        image_dtype = np.dtype(self.root_attrs["layout"]["image_dtype"])
        arrays = case_arrays(case, image_dtype, images, mask, labels, brain, extra)
        self._cases_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._cases_dir / temp_name(TMP_PREFIX, case)
        try:
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            for name, (data, is_image) in arrays.items():
                self._create_array(group, name, data, is_image)
            meta = json_safe(dict(attrs or {}))
            meta.setdefault("shape", list(next(iter(arrays.values()))[0].shape))
            meta["has_mask"] = mask is not None
            meta["arrays"] = {name: array_record(data) for name, (data, _) in arrays.items()}
            meta["complete"] = False
            group.attrs.update(meta)
            problems = check_arrays(tmp, meta["arrays"])  # read back: every expected array, intact
            if problems:
                raise DataError(
                    f"{self.path}: case {case!r}: {problems[0]} right after writing it "
                    f"(did another process remove {tmp.name}?)"
                )
            group.attrs["complete"] = True  # set last
            self._swap_into_place(tmp, self._cases_dir / case)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _swap_into_place(tmp: Path, final: Path) -> None:
        """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first, then deleted."""
        old = None
        if final.exists():
            old = final.with_name(temp_name(OLD_PREFIX, final.name))
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def delete_case(self, case: str) -> None:
        d = self._cases_dir / check_case_id(case)
        if d.exists():
            old = d.with_name(temp_name(OLD_PREFIX, case))
            os.replace(d, old)
            shutil.rmtree(old, ignore_errors=True)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, kind={self.root_attrs.get('kind')!r}, cases={len(self)})"
