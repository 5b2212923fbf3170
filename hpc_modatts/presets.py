"""Cluster presets: the SLURM shape and sbatch options of a cluster, one YAML each.

A preset is looked up by name in ``hpc_modatts/clusters/`` (package data) or
``$HPC_MODATTS_PRESETS``, or given as a YAML path. Two users read the same file: the pipeline's
jobs (``hpc_modatts.pipeline``: sbatch options, and the shape of nodes whose config keeps the
defaults) and ``convert --scheduler slurm``'s dask workers (``hpc_modatts.data.cluster``).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hpc_modatts.config import ConfigError, ExperimentConfig, PipelineConfig, apply_overrides

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11; annotations only
    from importlib.resources.abc import Traversable

PRESETS_DIR: Path | Traversable = (
    Path(os.environ["HPC_MODATTS_PRESETS"])
    if os.environ.get("HPC_MODATTS_PRESETS")
    else files("hpc_modatts") / "clusters"
)
"""Where cluster presets are looked up by name: the package's ``clusters/`` (package data, read
through importlib.resources so a wheel install has them), or $HPC_MODATTS_PRESETS."""
PRESET_KEYS = {
    "partition",
    "account",
    "qos",
    "constraint",
    "gpus_per_node",
    "cpus_per_task",
    "mem_gb",
    "timeout_min",
    "nodes",
    "signal_delay_s",
    "setup",
    "additional",
    "description",
    "interface",
}
"""Keys a preset YAML may hold (``additional``: extra ``#SBATCH --key=value`` options; ``interface``:
the network interface of ``convert --scheduler slurm``'s dask workers, e.g. ib0)."""
SHAPE_KEYS = ("gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "nodes")
"""Preset keys that fill the pipeline.* fields a config leaves at their defaults."""


def available_presets() -> list[str]:
    if not PRESETS_DIR.is_dir():
        return []
    return sorted(p.name[:-5] for p in PRESETS_DIR.iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A cluster preset by name (in ``PRESETS_DIR``) or YAML path; ConfigError if unknown/bad."""
    p: Path | Traversable = Path(name_or_path)
    if not p.is_file():
        p = PRESETS_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ConfigError(
            f"pipeline.cluster={name_or_path!r}: no such preset; available: "
            f"{available_presets()} (in {PRESETS_DIR}) or a YAML path"
        )
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"cluster preset {p}: top level must be a mapping")
    unknown = sorted(set(data) - PRESET_KEYS)
    if unknown:
        raise ConfigError(f"cluster preset {p}: unknown key {unknown[0]}; allowed: {sorted(PRESET_KEYS)}")
    return data


def apply_preset(cfg: ExperimentConfig, preset: dict[str, Any]) -> ExperimentConfig:
    """Fill the pipeline.* shape fields that ``cfg`` leaves at their defaults from the preset."""
    defaults = PipelineConfig()
    items = [
        f"pipeline.{k}={int(preset[k])}"
        for k in SHAPE_KEYS
        if k in preset and getattr(cfg.pipeline, k) == getattr(defaults, k)
    ]
    return apply_overrides(cfg, items)
