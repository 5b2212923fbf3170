"""The config a stage runs with: ``train.stage_overrides[stage]`` and ``train.variant_overrides[variant]``
merged over ``train`` (and over ``optim`` / ``model``), copies with some ``train`` fields replaced,
and the two loss weights that follow from the data when set to -1 (``resolve_seg_pt``,
``resolve_st``; thesis 5.5.1, Eq. 5.13)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from hpc_modatts.config.checks import ConfigError
from hpc_modatts.config.experiment import ExperimentConfig, config_from_dict, config_to_dict
from hpc_modatts.config.names import STAGES
from hpc_modatts.config.training import STAGE_SECTIONS, VARIANT_STAGES, lambda_seg_pt_for_fraction


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def stage_config(cfg: ExperimentConfig, stage: str, variant: str | None = None) -> ExperimentConfig:
    """``cfg`` for ``stage`` (and ``variant``, default ``train.variant``): its
    ``train.stage_overrides[stage]`` merged into ``train``, then, for the stages that train a
    variant (``VARIANT_STAGES``), ``train.variant_overrides[variant]`` and that block's own
    ``stage_overrides[stage]``.

    The result has ``train.stage = stage``, ``train.variant = variant`` and no override blocks left,
    so applying it again is a no-op (the CLI and ``pipeline.dag.node_config`` apply it with the
    variant they will set, then the user's ``key=value`` overrides, so those win; ``run`` applies it
    again harmlessly).
    """
    if stage not in STAGES:
        raise ConfigError(f"train.stage={stage!r} is not one of {list(STAGES)}")
    data = config_to_dict(cfg)
    train = data["train"]
    variant = variant or train["variant"]
    blocks = [(train.pop("stage_overrides", None) or {}).get(stage, {})]
    variant_blocks = train.pop("variant_overrides", None) or {}
    if stage in VARIANT_STAGES:  # the variant's block, then its own block for this stage
        variant_block = copy.deepcopy(variant_blocks.get(variant, {}))
        blocks += [variant_block, (variant_block.pop("stage_overrides", None) or {}).get(stage, {})]
    for block in blocks:
        overrides = copy.deepcopy(block)
        for section in STAGE_SECTIONS:  # optim / model keys of this stage / variant
            data[section] = _merge(data[section], overrides.pop(section, None) or {})
        train = _merge(train, overrides)
    train.update(stage=stage, variant=variant, stage_overrides={}, variant_overrides={})
    data["train"] = train
    return config_from_dict(data)


def replace_cfg(cfg: ExperimentConfig, **train: Any) -> ExperimentConfig:
    """A copy of ``cfg`` with some ``train`` fields replaced."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def resolve_seg_pt(cfg: ExperimentConfig, split: Any) -> float:
    """lambda_seg^pT: the configured value, or from the source-annotation fraction (thesis 5.5.1)."""
    w = cfg.train.weights.seg_pt
    return float(w) if w != -1.0 else _lambda_for_source_fraction(split)


def _lambda_for_source_fraction(split: Any) -> float:
    fraction = len(split.source_labeled) / max(1, len(split.source_train))
    return float(lambda_seg_pt_for_fraction(fraction))


def resolve_mgenseg_seg(cfg: ExperimentConfig, split: Any) -> float:
    """M-GenSeg's lambda_seg: the configured value, or lambda_seg^pT's table (``resolve_seg_pt``)."""
    w = cfg.train.mgenseg_weights.seg
    return float(w) if w != -1.0 else _lambda_for_source_fraction(split)


def resolve_st(cfg: ExperimentConfig, split: Any) -> float:
    """lambda_st: the configured value, or lambda_seg^pT (thesis 5.4.2, Eq. 5.13)."""
    w = cfg.train.weights.st
    return resolve_seg_pt(cfg, split) if w == -1.0 else float(w)
