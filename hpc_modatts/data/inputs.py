"""What a stage reads before it starts, with one-line errors naming the config key to fix.

``open_store`` (``data.store``), ``load_split`` (``data.split`` viewed as fold ``data.fold``),
``require_done`` (an earlier stage's run folder holds its DONE marker) and ``val_case_list``
(the validation cases, capped by ``train.val_cases``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from hpc_modatts.config import ConfigError, ExperimentConfig
from hpc_modatts.data.splits import Split
from hpc_modatts.data.store import Store
from hpc_modatts.runs import is_done


def open_store(path: str | os.PathLike, what: str = "data.store") -> Store:
    """Open a store, with a one-line error naming the config key when unset or missing."""
    if not str(path):
        raise ConfigError(f"{what} is not set: give the path of a converted store")
    return Store.open(path)


def load_split(cfg: ExperimentConfig, use_fold: bool = True) -> Split:
    """The experiment's Split (``data.split``), viewed as fold ``data.fold`` when it has folds."""
    if not cfg.data.split:
        raise ConfigError("data.split is not set: make one with `hpc-modatts split`")
    split = Split.load(cfg.data.split, store=cfg.data.store or None)  # refuses another store's split
    if split.source != cfg.data.source or split.target != cfg.data.target:
        raise ConfigError(
            f"data.source/target={cfg.data.source}->{cfg.data.target} but split "
            f"{cfg.data.split} is {split.source}->{split.target}"
        )
    if use_fold and split.folds:
        split = split.fold(cfg.data.fold)
    elif use_fold and cfg.data.fold != 0:
        raise ConfigError(f"data.fold={cfg.data.fold} but split {cfg.data.split} has no folds")
    return split


def require_done(run_dir: Path, what: str, marker: str = "DONE") -> Path:
    """``run_dir`` if its stage finished, else a ConfigError naming the stage to run first."""
    if not is_done(run_dir, marker):
        raise ConfigError(f"{what} {run_dir} has not finished (no {marker} marker): run that stage first")
    return Path(run_dir)


def val_case_list(cases: Sequence[str], cap: int) -> list[str]:
    """The validation cases, capped at ``train.val_cases`` (0 = all)."""
    return list(cases[:cap] if cap else cases)
