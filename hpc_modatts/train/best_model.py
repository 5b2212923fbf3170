"""``best_model.pt``: the model a run selected, as plain fp32 state dicts, and how to rebuild it.

The file holds the state dicts of every optimised model, the resolved config, the step and score,
and per model a factory ``(key, kwargs)`` recorded by the task (``Task.model_factory``). The key
must be in ``MODEL_FACTORIES`` (THE allow-list), so loading a file never imports a path it names;
the file itself is read weights-only (``safe_load.load_weights``). What synthesis,
pseudo-labelling and predict load.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from hpc_modatts.config import config_from_dict, config_to_dict
from hpc_modatts.data.errors import DataError
from hpc_modatts.distributed.engine import gathered_state_dict
from hpc_modatts.distributed.env import barrier
from hpc_modatts.models.layout import to_channels_last
from hpc_modatts.runs import atomic_path
from hpc_modatts.train.safe_load import load_weights

BEST_MODEL = "best_model.pt"

MODEL_FACTORIES: dict[str, str | Callable[..., nn.Module]] = {
    "hpc_modatts.models:build_segmenter": "hpc_modatts.models:build_segmenter",
    "hpc_modatts.models:build_mgenseg": "hpc_modatts.models:build_mgenseg",
    "hpc_modatts.train.segment:build_discriminators_3d": "hpc_modatts.train.segment_variants:build_discriminators_3d",
    "hpc_modatts.train.segment_variants:build_discriminators_2d": (
        "hpc_modatts.train.segment_variants:build_discriminators_2d"
    ),
    "hpc_modatts.train.translate:build_cycle_translators": "hpc_modatts.train.translate:build_cycle_translators",
    "hpc_modatts.train.translate:build_discriminators": "hpc_modatts.train.translate:build_discriminators",
}
"""THE allow-list of model factories a ``best_model.pt`` may name (``Task.model_factory``): the
file holds only the key; the callable comes from this dict (a "module:function" of this package,
imported on use, or a function registered by code with ``register_model_factory``). Keys are
names written into files: they stay when a factory moves (only the value changes)."""


def register_model_factory(name: str, fn: Callable[..., nn.Module]) -> None:
    """Allow ``name`` as a factory key, building with ``fn`` (for code outside hpc_modatts, e.g. tests)."""
    MODEL_FACTORIES[name] = fn


def build_model(factory: Any, where: str = "model factory") -> nn.Module:
    """Build a model from a ``(key, kwargs)`` factory whose key is in ``MODEL_FACTORIES``."""
    if not (
        isinstance(factory, (list, tuple))
        and len(factory) == 2
        and isinstance(factory[0], str)
        and isinstance(factory[1], dict)
        and all(isinstance(k, str) for k in factory[1])
    ):
        raise DataError(f"{where}: factory must be (name, {{keyword: value}}), got {factory!r}"[:300])
    name, kwargs = factory
    target = MODEL_FACTORIES.get(name)
    if target is None:
        raise DataError(f"{where}: model factory {name!r} is not allowed; allowed: {sorted(MODEL_FACTORIES)}")
    if isinstance(target, str):
        module_name, _, fn_name = target.partition(":")
        target = getattr(importlib.import_module(module_name), fn_name)
    return target(**kwargs)


def save_best_model(
    run_dir: Path, engines: dict[str, Any], cfg: Any, factories: dict, step: int, dice: float | None, task_name: str
) -> None:
    """Gather every engine's fp32 weights (collective) and write best_model.pt on rank 0."""
    models = {name: gathered_state_dict(engine) for name, engine in engines.items()}
    if all(sd is not None for sd in models.values()):  # rank 0
        payload = {
            "models": models,
            "factories": {k: v for k, v in factories.items() if v},
            "config": config_to_dict(cfg),
            "step": step,
            "dice": dice,
            "task": task_name,
        }
        with atomic_path(Path(run_dir) / BEST_MODEL) as tmp:
            torch.save(payload, tmp)
    barrier()


def load_best_model(
    run_dir: str | os.PathLike,
    name: str | None = "gen",
    build_fn: Callable[[Any], nn.Module] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, Any]:
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
    payload = load_weights(path)
    if not (
        isinstance(payload, dict)
        and isinstance(payload.get("models"), dict)
        and isinstance(payload.get("config"), dict)
    ):
        raise DataError(f"{path}: not a best_model.pt (needs 'models' and 'config' mappings)")
    models = payload["models"]
    if name is None or (name not in models and len(models) == 1):
        name = next(iter(models)) if len(models) == 1 else name
    if name not in models:
        raise DataError(f"{path}: no model {name!r}; it holds {sorted(models)}")
    cfg = config_from_dict(payload["config"])
    if build_fn is not None:
        model = build_fn(cfg)
    elif name in (payload.get("factories") or {}):
        model = build_model(payload["factories"][name], where=str(path))
    else:
        raise DataError(f"{path}: model {name!r} has no recorded factory; pass build_fn")
    try:
        model.load_state_dict(models[name])
    except (RuntimeError, TypeError, AttributeError) as e:  # wrong keys/shapes for the architecture
        raise DataError(
            f"{path}: model {name!r} does not fit its architecture "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"[:400]
        ) from None
    if cfg.model.channels_last:  # the layout the run trained with (hpc_modatts.models.layout)
        to_channels_last(model)
    return model.eval(), cfg
