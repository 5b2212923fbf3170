"""Crash-consistent latest/best DeepSpeed checkpoints of a run, and resume from them.

Layout inside ``<run_dir>/checkpoints/``::

    step_00000120/               one complete checkpoint ("tag")
        gen/ disc/               DeepSpeed ``save_checkpoint(step_.., tag=<engine>)`` per engine
        rng_rank<r>.pt           python/numpy/torch(/cuda) RNG states of rank r
        trainer.json             counters, best score, sampler position
        config.yaml              the resolved config
    latest                       text file: the tag of the newest COMPLETE checkpoint
    best                         text file: the tag of the best-validation checkpoint

(``../best_model.pt``, the selected model for inference, is ``hpc_modatts.train.best_model``.)

A tag folder is written in full, every rank passes a barrier, and only then rank 0 points
``latest`` (and ``best``) at it with an atomic ``os.replace``; folders no pointer names are
deleted afterwards (and on the next start). A kill at any moment leaves ``latest`` naming a
complete checkpoint or the previous one. DeepSpeed's own ``latest`` file is disabled
(``save_latest=False``): our pointer is the single source of truth.

Files are data, never code (docs/reliability.md): every ``.pt`` file is read with
``safe_load.load_weights`` (``torch.load(weights_only=True)``), RNG states are stored as tensors
and lists so they load that way, and DeepSpeed's own files are checked the same way before
DeepSpeed reads them.

Resume (``choose_resume_tag``) takes the checkpoint ``latest`` names when every file of it
loads; otherwise the newest other complete, loadable one (``best``'s), says so, points
``latest`` at it and moves the damaged folder aside (``damaged-<tag>``); it never deletes a
checkpoint while ``latest`` is unusable, and refuses (one line) when nothing loads.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpc_modatts.config import save_config
from hpc_modatts.data.errors import DataError
from hpc_modatts.distributed.env import barrier
from hpc_modatts.runs import atomic_path, atomic_write_json, atomic_write_text, read_json
from hpc_modatts.train.safe_load import load_weights

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
DAMAGED_PREFIX = "damaged-"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


TAG_PATTERN = re.compile(r"step_[0-9]{8,}")


def step_of(tag: str) -> int:
    return int(tag.split("_")[-1])


def read_pointer(run_dir: str | os.PathLike, which: str = "latest") -> str | None:
    """The tag ``checkpoints/<which>`` points at, when that checkpoint exists."""
    ptr = Path(run_dir) / CKPT_DIR / which
    if not ptr.is_file():
        return None
    tag = ptr.read_text().strip()
    return tag if tag and (ptr.parent / tag / "trainer.json").is_file() else None


def rng_state() -> dict:
    """Every RNG a step may draw from (python, numpy, torch CPU, torch CUDA), as tensors, lists
    and numbers only, so that the saved file loads with ``weights_only=True``."""
    version, keys, gauss = random.getstate()
    name, mt, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [int(version), list(keys), gauss],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(mt, np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((int(version), tuple(int(k) for k in keys), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(
    run_dir: Path, step: int, engines: dict[str, Any], trainer_state: dict, cfg: Any, env: Any, best: bool = False
) -> str:
    """Write checkpoint ``step`` on every rank, then point ``latest`` (and ``best``) at it."""
    root = Path(run_dir) / CKPT_DIR
    tag = tag_for(step)
    folder = root / tag
    if env.is_main and folder.exists() and tag not in _referenced(run_dir):
        shutil.rmtree(folder)  # leftover of a killed attempt at the same step
    barrier()
    for name, engine in engines.items():
        engine.save_checkpoint(str(folder), tag=name, client_state={}, save_latest=False)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(rng_state(), folder / f"rng_rank{env.rank}.pt")
    if env.is_main:
        save_config(cfg, folder / "config.yaml")
        atomic_write_json(folder / "trainer.json", {**trainer_state, "world_size": env.world_size})
    barrier()
    if env.is_main:
        atomic_write_text(root / "latest", tag + "\n")
        if best:
            atomic_write_text(root / "best", tag + "\n")
        prune_checkpoints(run_dir)
    barrier()
    return tag


def point_best(run_dir: Path, step: int, env: Any) -> None:
    """Point ``best`` at the existing checkpoint of ``step`` (written without validation)."""
    barrier()
    if env.is_main:
        atomic_write_text(Path(run_dir) / CKPT_DIR / "best", tag_for(step) + "\n")
    barrier()


def _referenced(run_dir: Path) -> set[str]:
    return {t for t in (read_pointer(run_dir, "latest"), read_pointer(run_dir, "best")) if t}


def prune_checkpoints(run_dir: str | os.PathLike) -> None:
    """Delete checkpoint folders (and temp files) that neither ``latest`` nor ``best`` names."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return
    keep = _referenced(Path(run_dir))
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step_") and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and p.name.startswith("."):
            p.unlink(missing_ok=True)


TRAINER_KEYS = {"step": int, "epoch": int, "batch_in_epoch": int, "best_step": int}


def read_trainer_state(folder: Path) -> dict:
    """``trainer.json`` of a checkpoint folder, checked; DataError naming the file."""
    path = Path(folder) / "trainer.json"
    state = read_json(path, "is missing (the checkpoint is incomplete)")
    if not isinstance(state, dict):
        raise DataError(f"{path}: must hold a JSON object")
    for key, tp in TRAINER_KEYS.items():
        if not isinstance(state.get(key), tp) or isinstance(state.get(key), bool):
            raise DataError(f"{path}: {key!r} must be an integer, got {state.get(key)!r}")
    for key in ("best_score", "best_dice"):  # "best_dice": checkpoints written before select_on
        if state.get(key) is not None and (not isinstance(state[key], (int, float)) or isinstance(state[key], bool)):
            raise DataError(f"{path}: {key!r} must be a number or null")
    total, best = state.get("total_steps"), state.get("best_metrics")  # written since train.extend_fraction
    if total is not None and (not isinstance(total, int) or isinstance(total, bool)):
        raise DataError(f"{path}: 'total_steps' must be an integer, got {total!r}")
    if best is not None and not (
        isinstance(best, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in best.values())
    ):
        raise DataError(f"{path}: 'best_metrics' must map metric names to numbers")
    return state


def check_checkpoint_files(folder: Path, models: list[str] | None = None) -> None:
    """Every ``.pt`` file of a checkpoint folder loads weights-only (DeepSpeed's data classes
    allowed), each of ``models`` has its DeepSpeed model states, and RNG files hold RNG states.

    Run before DeepSpeed's own loader, which unpickles with ``weights_only=False``: a file that
    passes references no code. DataError naming the first bad file.
    """
    folder = Path(folder)
    for name in models or []:
        if not any((folder / name).glob("*model_states.pt")):
            raise DataError(f"{folder / name}: no DeepSpeed model states of model {name!r}")
    for path in sorted(folder.rglob("*.pt")):
        obj = load_weights(path, deepspeed=True, mmap=not path.name.startswith("rng_rank"))
        holds_rng = isinstance(obj, dict) and {"python", "numpy", "torch"} <= set(obj)
        if path.name.startswith("rng_rank") and not holds_rng:
            raise DataError(f"{path}: not an RNG state file")


def check_checkpoint(run_dir: Path, tag: str, models: list[str] | None = None) -> dict:
    """Trainer state of checkpoint ``tag`` once all of it is checked loadable; DataError otherwise."""
    folder = Path(run_dir) / CKPT_DIR / tag
    if not folder.is_dir():
        raise DataError(f"{folder}: checkpoint folder is missing")
    state = read_trainer_state(folder)
    check_checkpoint_files(folder, models)
    return state


def _pointer_text(run_dir: Path, which: str) -> str | None:
    ptr = Path(run_dir) / CKPT_DIR / which
    try:
        return ptr.read_text().strip() if ptr.is_file() else None
    except (OSError, UnicodeDecodeError):
        return "<unreadable>"


def choose_resume_tag(run_dir: str | os.PathLike, models: list[str] | None = None) -> str | None:
    """The checkpoint to resume from (None: start at step 0), checked loadable; rank 0 only.

    ``latest`` when all of it loads; otherwise the newest other complete, loadable checkpoint:
    ``latest`` is repointed at it and the damaged folders (``latest``'s, newer ones) renamed
    ``damaged-<tag>-<time>`` (kept, not deleted), with a warning. DataError when ``latest``
    exists but no checkpoint loads, so a damaged run is never silently restarted from step 0
    (and its checkpoints never pruned).
    """
    run_dir = Path(run_dir)
    root = run_dir / CKPT_DIR
    latest = _pointer_text(run_dir, "latest")
    candidates = (
        sorted(
            (p.name for p in root.glob("step_*") if p.is_dir() and (p / "trainer.json").is_file()),
            key=step_of,
            reverse=True,
        )
        if root.is_dir()
        else []
    )
    if latest is None and not candidates:
        return None  # a fresh run (a folder without trainer.json is a killed first save)
    latest_ok = latest is not None and TAG_PATTERN.fullmatch(latest) is not None
    problems = []
    if latest is None:
        problems.append(f"{root / 'latest'} is missing")
    elif not latest_ok:
        problems.append(f"{root / 'latest'} holds {latest[:40]!r}, not a checkpoint tag")
    elif latest not in candidates:
        try:
            check_checkpoint(run_dir, latest, models)
        except DataError as e:  # the precise reason: folder or trainer.json missing
            problems.append(str(e))
    order = ([latest] if latest in candidates else []) + [c for c in candidates if c != latest]
    for tag in order:
        try:
            check_checkpoint(run_dir, tag, models)
        except DataError as e:
            problems.append(str(e))
            continue
        if tag != latest:
            log.warning("resume: %s; falling back to %s, the newest complete checkpoint that loads", problems[0], tag)
            damaged = [t for t in order if step_of(t) > step_of(tag)]
            if latest_ok and latest is not None and latest not in damaged:  # e.g. trainer.json lost: keep weights
                damaged.append(latest)
            _set_aside_damaged(run_dir, damaged)
            atomic_write_text(root / "latest", tag + "\n")
        return tag
    named = f"names {latest[:40]!r}" if latest is not None else "is missing"
    raise DataError(
        f"{root / 'latest'} {named} and no checkpoint of {run_dir} loads "
        f"({problems[0] if problems else 'no complete checkpoint folder'}); "
        f"nothing was deleted: move {root} aside to restart from step 0"
    )


def _set_aside_damaged(run_dir: Path, tags: list[str]) -> None:
    """Rename unloadable checkpoints ``damaged-<tag>-<time>`` (kept for inspection, never reused)."""
    for tag in tags:
        src = Path(run_dir) / CKPT_DIR / tag
        if src.is_dir():
            dst = src.with_name(f"{DAMAGED_PREFIX}{tag}-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(src, dst)
            log.warning("resume: moved the damaged checkpoint %s to %s", src, dst.name)


def load_checkpoint(run_dir: Path, tag: str, engines: dict[str, Any], env: Any) -> dict:
    """Restore engines (weights + optimiser), this rank's RNG states; return trainer state.

    Call ``check_checkpoint`` (``choose_resume_tag``) first: DeepSpeed reads its files with a
    full unpickler. A missing RNG file or another number of ranks resumes without this rank's
    RNG states: training continues, not bit-exact, with a warning.
    """
    folder = Path(run_dir) / CKPT_DIR / tag
    state = read_trainer_state(folder)
    for name, engine in engines.items():
        try:
            path, _ = engine.load_checkpoint(
                str(folder), tag=name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        except Exception as e:  # noqa: BLE001 - DeepSpeed raises many types for a bad folder
            raise DataError(
                f"{folder / name}: DeepSpeed cannot load it ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"[:400]
            ) from None
        if path is None:
            raise DataError(f"{folder}: checkpoint of model {name!r} is missing or unreadable")
    rng_file = folder / f"rng_rank{env.rank}.pt"
    if not rng_file.is_file():
        log.warning(
            "%s is missing: resuming without rank %d's RNG states, so the run continues "
            "but is NOT bit-exact with an uninterrupted one",
            rng_file,
            env.rank,
        )
    elif state.get("world_size") != env.world_size:
        log.warning(
            "%s: saved with %s rank(s), resuming on %d: RNG states not restored, the run "
            "is NOT bit-exact with an uninterrupted one",
            folder,
            state.get("world_size"),
            env.world_size,
        )
    else:
        set_rng_state(load_weights(rng_file))
    return state
