"""The whole experiment config: ``ExperimentConfig``, YAML loading, dotted overrides, saving.

A config is loaded from YAML (``load_config``; a shipped config loads by name), then overridden
on the command line with ``key.sub=value`` (``apply_overrides``); a wrong key or value fails with
a ``ConfigError`` naming the key and what is allowed. ``save_config`` writes the resolved config
beside every output (see ``hpc_modatts.runs``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hpc_modatts.config.build import build_section, field_type
from hpc_modatts.config.checks import ConfigError, check_name, check_one_line
from hpc_modatts.config.names import MODATTS_VARIANTS
from hpc_modatts.config.sections import (
    DataConfig,
    DistributedConfig,
    InferConfig,
    ModelConfig,
    OptimConfig,
    PipelineConfig,
)
from hpc_modatts.config.training import TrainConfig
from hpc_modatts.runs import atomic_write_text, stage_dir

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11; annotations only
    from importlib.resources.abc import Traversable

BUILTIN_CONFIGS = files("hpc_modatts") / "configs"
"""The shipped experiment configs (package data): the paper's and the CPU demo's."""


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    """Experiment name: the folder under run_root and the SLURM job name; letters, digits, '.',
    '_' and '-' only, no '..'."""
    run_root: str = "runs"
    """Where run folders are created: <run_root>/<name>/<stage>[/fold_k][/round_i]."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data: store, split, modalities, patch sizes."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architectures and sizes."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser (client torch Adam with AMSGrad)."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """DeepSpeed: ZeRO stage, precision, backend."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Stage, variant, schedule, loss weights."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """Executor and stage graph."""
    infer: InferConfig = field(default_factory=InferConfig)
    """Whole-volume inference (validation, pseudo-labels, predict)."""

    def __post_init__(self) -> None:
        check_name(self.name)
        check_one_line("run_root", str(self.run_root))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                setattr(self, f.name, build_section(field_type(ExperimentConfig, f), v, f.name))

    @property
    def run_dir(self) -> Path:
        return Path(self.run_root) / self.name

    def final_model_dirs(self, variant: str) -> list[Path]:
        """Run folders whose best models ``predict`` ensembles: one per fold, of the last round."""
        rounds = self.pipeline.self_training_rounds if variant in MODATTS_VARIANTS else 0
        if rounds:
            return [stage_dir(self.run_dir, "self-train", variant, k, rounds) for k in range(self.pipeline.folds)]
        return [stage_dir(self.run_dir, "segment", variant, k) for k in range(self.pipeline.folds)]


def config_from_dict(data: dict | None) -> ExperimentConfig:
    """Build and check an ExperimentConfig from a (nested) dict."""
    return build_section(ExperimentConfig, dict(data or {}))


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict (lists instead of tuples) of a config, suitable for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(cfg: ExperimentConfig, overrides: list[str] | None) -> ExperimentConfig:
    """Apply ``key.sub=value`` strings (values parsed as YAML) and re-check everything."""
    if not overrides:
        return cfg
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _check_path(key)
        _set_dotted(data, key, value)
    return config_from_dict(data)


def _check_path(dotted: str) -> None:
    """Fail early, naming the allowed keys, when a dotted key does not exist."""
    cls: Any = ExperimentConfig
    parts = dotted.split(".")
    for i, p in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"unknown key {dotted}: {'.'.join(parts[:i])} is not a section")
        names = {f.name: f for f in dataclasses.fields(cls)}
        if p not in names:
            where = ".".join(parts[:i])
            raise ConfigError(f"unknown key {dotted}; allowed keys{' in ' + where if where else ''}: {sorted(names)}")
        if cls is TrainConfig and p in ("stage_overrides", "variant_overrides"):
            return  # a mapping, not a section: TrainConfig._check_blocks checks its keys on rebuild
        cls = field_type(cls, names[p])


def builtin_configs() -> list[str]:
    """Names of the configs shipped inside the package (``hpc_modatts/configs/*.yaml``)."""
    return sorted(f.name[:-5] for f in BUILTIN_CONFIGS.iterdir() if f.name.endswith(".yaml"))


def _builtin_config(path: Path) -> Traversable:
    """The shipped config named like ``path`` (``demo_cpu``, ``demo_cpu.yaml``, ``configs/demo_cpu.yaml``):
    package data read through importlib.resources, so it works from a wheel as from a checkout."""
    for candidate in (path.name, f"{path.name}.yaml"):
        f = BUILTIN_CONFIGS / candidate
        if f.is_file():
            return f
    raise ConfigError(
        f"config file {path} does not exist and is not a built-in config ({', '.join(builtin_configs())})"
    )


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        p: Path | Traversable = Path(path)
        if not p.is_file():
            p = _builtin_config(Path(path))
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return apply_overrides(cfg, overrides)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML atomically (temp name, then rename)."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
