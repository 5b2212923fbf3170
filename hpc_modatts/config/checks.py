"""``ConfigError`` and the value checks every config section runs in ``__post_init__``."""

from __future__ import annotations

import math
import re
from typing import Any


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


def check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")


def check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    if not math.isfinite(value):  # nan passes both comparisons below
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
"""Allowed experiment names: one folder under run_root, safe in an sbatch ``--job-name``."""


def check_one_line(key: str, value: str) -> str:
    """``value`` unless it holds a line break or NUL (it may reach a generated shell script)."""
    if any(c in value for c in "\n\r\0"):
        raise ConfigError(f"{key}={value!r} must be one line (no newline, carriage return or NUL)")
    return value


def check_name(name: str) -> str:
    """An experiment name: ``[A-Za-z0-9._-]+``, not ``.``, no ``..`` (one folder under run_root)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name or name == ".":
        raise ConfigError(
            f"name={name!r} must match [A-Za-z0-9._-]+ without '..' "
            "(it is a folder under run_root and the SLURM job name)"
        )
    return name
