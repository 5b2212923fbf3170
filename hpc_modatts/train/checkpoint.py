"""Checkpoints of a run: crash-consistent latest/best DeepSpeed checkpoints and best_model.pt.

Layout inside ``<run_dir>/checkpoints/``::

    step_00000120/               one complete checkpoint ("tag")
        gen/ disc/               DeepSpeed ``save_checkpoint(step_.., tag=<engine>)`` per engine
        rng_rank<r>.pt           python/numpy/torch(/cuda) RNG states of rank r
        trainer.json             counters, best score, sampler position
        config.yaml              the resolved config
    latest                       text file: the tag of the newest COMPLETE checkpoint
    best                         text file: the tag of the best-validation-Dice checkpoint
    ../best_model.pt             plain torch state dicts (fp32, gathered) + config, for inference

A tag folder is written in full, every rank passes a barrier, and only then rank 0 points
``latest`` (and ``best``) at it with an atomic ``os.replace``; folders no pointer names are
deleted afterwards (and on the next start). A kill at any moment leaves ``latest`` naming a
complete checkpoint or the previous one. DeepSpeed's own ``latest`` file is disabled
(``save_latest=False``): our pointer is the single source of truth.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from hpc_modatts.config import config_from_dict, config_to_dict, save_config
from hpc_modatts.data.errors import DataError
from hpc_modatts.distributed.env import barrier
from hpc_modatts.runs import atomic_write_json, atomic_write_text

CKPT_DIR = "checkpoints"
BEST_MODEL = "best_model.pt"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def read_pointer(run_dir: str | os.PathLike, which: str = "latest") -> str | None:
    """The tag ``checkpoints/<which>`` points at, when that checkpoint exists."""
    ptr = Path(run_dir) / CKPT_DIR / which
    if not ptr.is_file():
        return None
    tag = ptr.read_text().strip()
    return tag if tag and (ptr.parent / tag / "trainer.json").is_file() else None


def rng_state() -> dict:
    """Every RNG a step may draw from (python, numpy, torch CPU, torch CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, step: int, engines: dict[str, Any], trainer_state: dict,
                    cfg: Any, env: Any, best: bool = False) -> str:
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


def load_checkpoint(run_dir: Path, tag: str, engines: dict[str, Any], env: Any) -> dict:
    """Restore engines (weights + optimiser), this rank's RNG states; return trainer state."""
    folder = Path(run_dir) / CKPT_DIR / tag
    for name, engine in engines.items():
        path, _ = engine.load_checkpoint(str(folder), tag=name, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise DataError(f"{folder}: checkpoint of model {name!r} is missing or unreadable")
    state = json.loads((folder / "trainer.json").read_text())
    rng_file = folder / f"rng_rank{env.rank}.pt"
    if rng_file.is_file() and state.get("world_size") == env.world_size:
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    return state


# ----------------------------------------------------------------------------- best model
def save_best_model(run_dir: Path, engines: dict[str, Any], cfg: Any, factories: dict,
                    step: int, dice: float, task_name: str) -> None:
    """Gather every engine's fp32 weights (collective) and write best_model.pt on rank 0."""
    from hpc_modatts.distributed.engine import gathered_state_dict

    models = {name: gathered_state_dict(engine) for name, engine in engines.items()}
    if all(sd is not None for sd in models.values()):  # rank 0
        payload = {"models": models, "factories": {k: v for k, v in factories.items() if v},
                   "config": config_to_dict(cfg), "step": step, "dice": dice, "task": task_name}
        _atomic_torch_save(payload, Path(run_dir) / BEST_MODEL)
    barrier()


def _build_from_factory(factory: tuple[str, dict]) -> nn.Module:
    target, kwargs = factory
    module_name, _, fn_name = target.partition(":")
    return getattr(importlib.import_module(module_name), fn_name)(**kwargs)


def load_best_model(run_dir: str | os.PathLike, name: str | None = "gen",
                    build_fn: Callable[[Any], nn.Module] | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """The run's best model as a plain ``nn.Module`` in eval mode, and its config.

    ``name`` selects the model (``"gen"``; None or a missing "gen" with a single saved model
    picks that one). ``build_fn(cfg)`` rebuilds the architecture; without it the factory the
    task recorded (``Task.model_factory``) is used.
    """
    if callable(name):  # load_best_model(run_dir, build_fn) form
        name, build_fn = "gen", name
    path = Path(run_dir) / BEST_MODEL
    if not path.is_file():
        raise DataError(f"{run_dir}: no {BEST_MODEL}; the run has not finished a validation (train it first)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated/corrupt file
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    models = payload["models"]
    if name is None or (name not in models and len(models) == 1):
        name = next(iter(models)) if len(models) == 1 else name
    if name not in models:
        raise DataError(f"{path}: no model {name!r}; it holds {sorted(models)}")
    cfg = config_from_dict(payload["config"])
    if build_fn is not None:
        model = build_fn(cfg)
    elif name in payload.get("factories", {}):
        model = _build_from_factory(payload["factories"][name])
    else:
        raise DataError(f"{path}: model {name!r} has no recorded factory; pass build_fn")
    model.load_state_dict(models[name])
    if cfg.model.channels_last:  # the layout the run trained with (hpc_modatts.models.layout)
        from hpc_modatts.models.layout import to_channels_last

        to_channels_last(model)
    return model.eval(), cfg
