"""Run folders: predictable layout, DONE markers, atomic writes, the resolved config.

Layout of one experiment (nnU-Net-style hand-off through folders)::

    <run_root>/<name>/
        translate/                 stage 1 (checkpoints/, metrics.jsonl, config.yaml, DONE)
        translate/synth.zarr       pseudo-target volumes written by synthesis (DONE_synthesize)
        segment-<variant>/fold_<k>/            stage 2
        segment-<variant>/fold_<k>/round_<i>/  self-training rounds
        predict-<variant>/         NIfTI masks in the original geometry
        evaluate-<variant>/        metrics.csv, metrics.json, panels/
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hpc_modatts.config import save_config

DONE = "DONE"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def mark_done(run_dir: str | os.PathLike, marker: str = DONE, **info: Any) -> Path:
    """Write the DONE marker (JSON with a timestamp and ``info``) once a stage has finished."""
    return atomic_write_json(Path(run_dir) / marker, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})


def is_done(run_dir: str | os.PathLike, marker: str = DONE) -> bool:
    return (Path(run_dir) / marker).is_file()


def prepare_run_dir(run_dir: str | os.PathLike, cfg: Any | None = None) -> Path:
    """Create the run folder and write the resolved config beside its outputs."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        save_config(cfg, run_dir / "config.yaml")
    return run_dir


def stage_dir(root: str | os.PathLike, stage: str, variant: str | None = None,
              fold: int | None = None, round_: int | None = None) -> Path:
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
