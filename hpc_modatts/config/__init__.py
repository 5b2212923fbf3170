"""Typed experiment configuration: dataclasses, YAML loading, dotted overrides, stage merging.

``from hpc_modatts.config import X`` is the way in; the modules, read bottom-up:

* ``checks``: ``ConfigError`` and the value checks of every section;
* ``names``: the stage and variant names, each listed once;
* ``build``: a section dataclass from plain data, every value checked against its type;
* ``sections``: data, model, optim, distributed, pipeline, infer; ``training``: the ``train``
  section and the loss weights;
* ``experiment``: ``ExperimentConfig``, YAML loading, ``key.sub=value`` overrides, saving;
* ``stages``: the config a stage runs with (``train.stage_overrides`` merged in, derived weights).

Numbers follow the thesis, section 5.5.1 (experimental settings of MoDATTS).
"""

from hpc_modatts.config.checks import NAME_PATTERN, ConfigError, check_name, check_one_line
from hpc_modatts.config.experiment import (
    BUILTIN_CONFIGS,
    ExperimentConfig,
    apply_overrides,
    builtin_configs,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from hpc_modatts.config.names import (
    END_TO_END_VARIANTS,
    EXECUTORS,
    MODATTS_VARIANTS,
    SLICE_VARIANTS,
    STAGES,
    TABLE_ORDER,
    VARIANTS,
    Executor,
    Stage,
    Variant,
    variant_dims,
)
from hpc_modatts.config.sections import (
    MODALITIES,
    DataConfig,
    DistributedConfig,
    InferConfig,
    ModelConfig,
    OptimConfig,
    PipelineConfig,
)
from hpc_modatts.config.stages import replace_cfg, resolve_mgenseg_seg, resolve_seg_pt, resolve_st, stage_config
from hpc_modatts.config.training import (
    STAGE_SECTIONS,
    LossWeights,
    MGenSegWeights,
    TrainConfig,
    lambda_seg_pt_for_fraction,
)

__all__ = [
    "BUILTIN_CONFIGS",
    "END_TO_END_VARIANTS",
    "EXECUTORS",
    "Executor",
    "TABLE_ORDER",
    "MODALITIES",
    "MODATTS_VARIANTS",
    "NAME_PATTERN",
    "SLICE_VARIANTS",
    "STAGES",
    "STAGE_SECTIONS",
    "VARIANTS",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "ExperimentConfig",
    "InferConfig",
    "LossWeights",
    "MGenSegWeights",
    "ModelConfig",
    "OptimConfig",
    "PipelineConfig",
    "Stage",
    "TrainConfig",
    "Variant",
    "apply_overrides",
    "builtin_configs",
    "check_name",
    "check_one_line",
    "config_from_dict",
    "config_to_dict",
    "lambda_seg_pt_for_fraction",
    "load_config",
    "replace_cfg",
    "resolve_mgenseg_seg",
    "resolve_seg_pt",
    "resolve_st",
    "save_config",
    "stage_config",
    "variant_dims",
]
