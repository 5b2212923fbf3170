"""Refuse a NIfTI file whose header claims more voxel data than the file holds, or than any scan
needs, BEFORE nibabel allocates it: a 69-byte file whose header claims 2 GiB would otherwise
allocate 2 GiB per worker, and a 100000^3 header raise a MemoryError with an empty message.

The claimed size is the header's data offset + voxel count x item size; the file holds its
length (``.nii``) or the uncompressed length of its gzip stream (``.nii.gz``: the ISIZE field of
the last 4 bytes, the size mod 2^32 of a single-member stream; when it does not match, the
stream is decompressed and counted without keeping it, which also handles multi-member files).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import nibabel as nib

from hpc_modatts.data.errors import DataError

MAX_VOXELS = 2**30
"""Largest voxel count accepted per volume (4 GiB as float32): a 0.5 mm 512x512x1500 CT is 0.39 G."""
_BLOCK = 1 << 22


def _gzip_length(path: Path, need: int) -> int:
    """Uncompressed bytes of a gzip file, counted up to ``need`` (then ``need``); fast via ISIZE."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() >= 18:  # 10-byte header + 8-byte trailer
            fh.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", fh.read(4))
            if isize == need % 2**32 and need < 2**32:
                return need
    count = 0
    try:
        with gzip.open(path, "rb") as fh:
            while count < need:
                block = fh.read(min(_BLOCK, need - count))
                if not block:
                    break
                count += len(block)
    except (OSError, EOFError, zlib.error):  # truncated or damaged stream: what was read counts
        pass
    return count


def check_nifti_size(path: str | os.PathLike, what: str = "image", max_voxels: int = MAX_VOXELS) -> None:
    """DataError (one line naming the file) when the header's claimed data size is implausible
    or larger than the file; reads the header and at most the gzip stream, never the voxels."""
    path = Path(path)
    try:
        img = nib.load(str(path))  # the header only: the voxels stay on disk
        shape = tuple(int(s) for s in img.header.get_data_shape())
        itemsize = img.header.get_data_dtype().itemsize
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for a broken header
        raise DataError(f"{path}: cannot read {what} NIfTI ({type(e).__name__}: {e})".replace("\n", " ")) from None
    voxels = math.prod(shape)
    if voxels > max_voxels:
        raise DataError(
            f"{path}: cannot read {what} NIfTI (header claims shape {list(shape)} = {voxels:.3g} "
            f"voxels, more than the {max_voxels:.3g} accepted)"
        )
    offset = getattr(img.header, "get_data_offset", lambda: 0)()
    need = int(offset) + voxels * itemsize
    gz = path.name.endswith(".gz")
    have = _gzip_length(path, need) if gz else path.stat().st_size
    if have < need:
        raise DataError(
            f"{path}: cannot read {what} NIfTI (header claims {need} bytes of header and voxels, "
            f"the file holds {have}{' uncompressed' if gz else ''}: truncated or a forged header)"
        )
