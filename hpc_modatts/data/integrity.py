"""Store integrity: array checksums, owner-tagged temp folders, the exclusive store lock.

Written for ``hpc_modatts.data.store`` (which uses all three) and ``verify``:

* ``array_record`` / ``check_arrays``: the sha256 of every array's decoded bytes is kept in the
  case attributes, so a deleted chunk or shard (which zarr silently reads back as the fill
  value), a deleted array or ``zarr.json``, or a flipped byte that changes a value is caught.
  Hashing decoded values (not files) keeps the check independent of codecs and sharding.
* ``temp_name`` / ``temp_owner_alive``: a case is written in a temp folder named after its
  writer (host, pid), so start-up clean-up removes only folders whose writer is gone.
* ``store_lock``: one convert run per store at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import zarr

from hpc_modatts.data.errors import DataError

log = logging.getLogger(__name__)

STALE_AFTER_S = 24 * 3600
"""A temp folder whose writer cannot be checked (another host) is stale after this long."""
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
"""This host's name as it appears in temp folder names (no "~", which separates the fields)."""


def array_record(data: np.ndarray) -> dict:
    """What ``arrays`` holds per array: sha256 of the decoded C-order bytes, dtype, shape."""
    data = np.ascontiguousarray(data)
    h = hashlib.sha256(f"{data.dtype.str}{list(data.shape)}".encode())
    h.update(data.data.cast("B"))  # the buffer itself, no copy
    return {"sha256": h.hexdigest(), "dtype": data.dtype.str, "shape": list(data.shape)}


def check_arrays(
    folder: Path, records: Mapping[str, Mapping], on_array: Callable[[str, np.ndarray], None] | None = None
) -> list[str]:
    """Problems of the arrays in a case folder against their records (empty list: all intact).

    Reads every array fully: a missing array or ``zarr.json``, an unreadable or deleted chunk or
    shard, or any changed value is reported. ``on_array(name, data)`` sees each intact array.
    """
    folder = Path(folder)
    present = (
        {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")} if folder.is_dir() else set()
    )
    problems = [f"array {n!r} is not in the case's array list" for n in sorted(present - set(records))]
    for name, rec in sorted(records.items()):
        if not (folder / name / "zarr.json").is_file():
            problems.append(f"array {name!r} is missing" if name not in present else f"array {name!r} has no zarr.json")
            continue
        try:
            data = np.asarray(zarr.open_array(str(folder / name), mode="r", zarr_format=3)[...])
        except Exception as e:  # noqa: BLE001 - zarr/numcodecs raise many types for damaged files
            problems.append(f"array {name!r} is unreadable ({type(e).__name__}: {e})".replace("\n", " ")[:300])
            continue
        if array_record(data) != dict(rec):
            problems.append(f"array {name!r} does not match its checksum (a chunk or shard was changed or deleted)")
        elif on_array is not None:
            on_array(name, data)
    return problems


def temp_name(prefix: str, case: str) -> str:
    """A temp/old folder name that says who owns it: ``<prefix><case>~<host>~<pid>~<rand>``."""
    return f"{prefix}{case}~{HOST}~{os.getpid()}~{os.urandom(3).hex()}"


def temp_owner_alive(name: str) -> bool | None:
    """Whether the process that named a ``temp_name`` folder still runs (None: cannot tell, e.g.
    it ran on another host or the name predates owner tags)."""
    parts = name.rsplit("~", 3)  # the case id may hold "~"; host, pid and rand cannot
    if len(parts) != 4 or parts[1] != HOST or not parts[2].isdigit():
        return None
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def store_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of the store at ``path`` (file ``.<name>.lock`` beside it).

    For a whole writer run (``convert``): a second run is refused at once with one line naming
    the holder. ``flock`` is released by the kernel when the holder dies, so a killed run never
    leaves a stale lock (on NFS flock is emulated with POSIX locks; Lustre needs ``-o flock``).
    """
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DataError(
                f"{path}: another convert run is writing this store ({holder}); "
                f"wait for it to finish (lock file {lock})"
            ) from None
        except OSError as e:  # a file system without locks: carry on, as before locks existed
            log.warning("%s: cannot lock (%s); make sure no other convert writes this store", lock, e)
            break
        try:  # the previous holder unlinks the file on release: make sure we locked the live one
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        yield lock
    finally:
        lock.unlink(missing_ok=True)  # while still holding it (see the inode check above)
        with contextlib.suppress(OSError):  # also for any forked child still holding the descriptor
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
