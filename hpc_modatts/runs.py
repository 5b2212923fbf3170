"""Run folders: predictable layout, DONE markers, atomic writes, the resolved config.

Layout of one experiment (nnU-Net-style hand-off through folders)::

    <run_root>/<name>/
        translate/                 stage 1 (checkpoints/, metrics.jsonl, config.yaml, DONE)
        translate/restart_<k>/     stage 1 trained again with seed + k (train.restarts; DONE names the one used)
        translate/synth.zarr       pseudo-target volumes written by synthesis (DONE_synthesize)
        segment-<variant>/fold_<k>/            stage 2
        segment-<variant>/fold_<k>/round_<i>/  self-training rounds
        predict-<variant>/         NIfTI masks in the original geometry
        evaluate-<variant>/        metrics.csv, metrics.json, panels/
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from hpc_modatts.data.errors import DataError

DONE = "DONE"

# The mode a plain open() would give a new file: mkstemp creates 0600 files, and outputs on a
# shared project folder must stay readable by the group as before. Read once at import (the
# umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _fsync_dir(folder: Path) -> None:
    """Persist a rename: fsync the folder (skipped where the file system refuses it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """THE atomic-write helper: yield an exclusive temp path beside ``path``; write it in the body.

    On success the temp file is fsynced, renamed over ``path`` (``os.replace``) and the folder
    fsynced, so a crash leaves the old file or the new one, never a mix; on any error the temp
    file is removed. The temp name is unique (``tempfile.mkstemp``: no clash between processes
    or threads writing the same file) and ends like ``path`` (``suffix``, default its suffixes)
    so writers that pick a format from the name (nibabel, matplotlib) still work. DataError when
    ``path`` is an existing folder.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_path``)."""
    return atomic_write_bytes(path, text.encode())


def strict_json_value(obj: Any) -> Any:
    """``obj`` with every NaN/Inf number replaced by None (JSON has no NaN: strict readers reject it)."""
    if isinstance(obj, dict):
        return {k: strict_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(v) for v in obj]
    if isinstance(obj, numbers.Real) and not isinstance(obj, numbers.Integral):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (NaN/Inf written as null), atomically."""
    text = json.dumps(strict_json_value(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike, missing: str) -> Any:
    """THE reader of our JSON records: the document at ``path``, or DataError naming the file.

    ``missing`` completes the message when the file does not exist (what that means, e.g.
    "does not exist: not a pipeline run folder"); unreadable or invalid JSON is one line too.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} {missing}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not valid JSON ({type(e).__name__}: {e})") from None


def mark_done(run_dir: str | os.PathLike, marker: str = DONE, **info: Any) -> Path:
    """Write the DONE marker (JSON with a timestamp and ``info``) once a stage has finished."""
    return atomic_write_json(Path(run_dir) / marker, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})


def is_done(run_dir: str | os.PathLike, marker: str = DONE) -> bool:
    return (Path(run_dir) / marker).is_file()


def translator_dir(run_dir: str | os.PathLike) -> Path:
    """The stage-1 attempt synthesis uses: ``translate/`` itself, or the ``translate/restart_<k>/``
    that its DONE marker names (``train.restarts``). The name is checked, never taken as a path."""
    run_dir = Path(run_dir)
    done = read_json(run_dir / DONE, "does not exist: stage 1 has not finished") if is_done(run_dir) else {}
    name = done.get("attempt", "") if isinstance(done, dict) else ""
    if not name:
        return run_dir
    if not (isinstance(name, str) and re.fullmatch(r"restart_[1-9][0-9]{0,2}", name)):
        raise DataError(f"{run_dir / DONE}: attempt {name!r} is not a stage-1 restart folder (restart_<k>)")
    return run_dir / name


def prepare_run_dir(run_dir: str | os.PathLike, cfg: Any | None = None) -> Path:
    """Create the run folder and write the resolved config beside its outputs."""
    from hpc_modatts.config import save_config  # config imports this module (atomic writes)

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        save_config(cfg, run_dir / "config.yaml")
    return run_dir


def stage_dir(
    root: str | os.PathLike, stage: str, variant: str | None = None, fold: int | None = None, round_: int | None = None
) -> Path:
    """The canonical folder of a stage of one experiment (see module docstring)."""
    d = Path(root)
    if stage == "translate":
        return d / "translate"
    if stage in ("segment", "self-train"):
        d = d / f"segment-{variant}" / f"fold_{fold or 0}"
        if stage == "self-train":
            d = d / f"round_{round_}"
        return d
    if stage in ("predict", "evaluate"):
        return d / f"{stage}-{variant}"
    return d / stage
