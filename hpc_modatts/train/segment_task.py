"""What every stage-2 variant shares (``hpc_modatts.train.segment_variants`` has one subclass per
variant): the segmenter, the start of a self-training round, validation and the volume guards.

Validation: whole-volume Dice on the target validation cases with THE inferer
(``hpc_modatts.infer.inferer``: hemisphere by hemisphere, as training saw them) plus the volume
guards of ``hpc_modatts.train.guards`` (predicted vs reference volume, false positives in healthy
hemispheres); the trainer keeps the best plausible model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from hpc_modatts.config import ConfigError, ExperimentConfig
from hpc_modatts.data.batches import paired_case_ids
from hpc_modatts.data.inputs import val_case_list
from hpc_modatts.data.labels import region_array
from hpc_modatts.data.loaders import VolumeDataset
from hpc_modatts.data.store import Store
from hpc_modatts.data.volume_slices import VolumeSliceDataset
from hpc_modatts.infer.inferer import inferer_from_config
from hpc_modatts.models.checkpointing import apply_activation_checkpointing
from hpc_modatts.train.best_model import BEST_MODEL, build_model
from hpc_modatts.train.guards import VolumeBound, largest_annotated_ml, validate_segmenter
from hpc_modatts.train.safe_load import load_weights
from hpc_modatts.train.task import TaskDefaults


@dataclass(frozen=True)
class SelfTrainingRound:
    """What a self-training round gives its task (thesis 5.4.2): the run whose best model it
    starts from, and the store of pseudo-labels it trains on (``hpc_modatts.train.self_training``)."""

    init_from: Path
    pseudo_labels: Path


def load_initial_weights(run_dir: Path, models: dict[str, nn.Module]) -> None:
    """Load every model of ``models`` from ``run_dir``'s best model (read weights-only)."""
    payload = load_weights(Path(run_dir) / BEST_MODEL)
    for name, model in models.items():
        if name not in payload["models"]:
            raise ConfigError(
                f"train.init_from={run_dir}: best model has no {name!r} "
                f"(has {sorted(payload['models'])}); was it trained with the same variant?"
            )
        model.load_state_dict(payload["models"][name])


class SegmentTask(TaskDefaults, ABC):
    """What every variant shares: the segmenter, the self-training start, validation and guards."""

    variant: str = ""
    """The ``train.variant`` this class trains (its key in ``VARIANT_TASKS``)."""
    model_names: tuple[str, ...] = ("gen",)
    """The models ``build`` makes, in this order (each from ``model_factory``)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        split: Any,
        run_dir: Path,
        synth_store: Path | None = None,
        self_training: SelfTrainingRound | None = None,
    ) -> None:
        self.cfg, self.split, self.run_dir = cfg, split, Path(run_dir)
        self.synth_store, self.self_training = synth_store, self_training
        self.target_labeled = set(split.target_labeled)
        self.weights = self._weights()
        self.val_cases = val_case_list(split.val, cfg.train.val_cases)
        self.inferer = inferer_from_config(cfg)
        self.bound = self.volume_bound(cfg, split)

    @property
    def name(self) -> str:
        return "segment" if self.self_training is None else "self-train"

    @classmethod
    def annotated_cases(cls, split: Any) -> list[str]:
        """The cases whose masks the variant trains on (all in ``data.store``)."""
        return list(dict.fromkeys([*split.source_labeled, *split.target_labeled]))

    @classmethod
    def volume_bound(cls, cfg: ExperimentConfig, split: Any) -> VolumeBound:
        """``train.max_volume_factor`` x the largest tumour (``data.region``) the variant trains on (guards)."""
        largest = largest_annotated_ml(Store.open(cfg.data.store), cls.annotated_cases(split), cfg.data.region)
        return VolumeBound(cfg.train.max_volume_factor, largest)

    def _weights(self) -> dict[str, float]:
        return {"seg": 1.0}

    def check_data(self) -> None:
        """One-line errors for a split that lacks what the variant trains on."""

    @abstractmethod
    def train_dataset(self) -> Dataset:
        """Items ``{"sup": volume}`` (the bounds) or ``{"pt": volume[, "real": volume]}`` (MoDATTS)."""

    @abstractmethod
    def train_step(self, batch: dict, engines: dict, step: int) -> dict[str, Any]:
        """The variant's losses, backward and step (see ``hpc_modatts.train.task``)."""

    def batch_ids(self, batch: dict) -> list[str]:
        return paired_case_ids(batch)

    # ------------------------------------------------------------------ models
    def model_factory(self, name: str) -> tuple[str, dict]:
        m = self.cfg.model
        return (
            "hpc_modatts.models:build_segmenter",
            {
                "size": m.segmenter_size,
                "genseg": False,
                "common_fraction": m.common_fraction,
                "separate_seg_decoder": m.separate_seg_decoder,
            },
        )

    def build(self, env: Any) -> dict[str, nn.Module]:
        models = {name: build_model(self.model_factory(name)) for name in self.model_names}
        if self.self_training is not None:  # start from the previous best (thesis 5.4.2)
            load_initial_weights(self.self_training.init_from, models)
        if self.cfg.model.checkpointing:
            apply_activation_checkpointing(models["gen"], list(self.cfg.model.checkpointing))
        return models

    def _volumes(
        self, store: Any, cases: list[str], modality: str, annotated: list[str], offset: int, **kw: Any
    ) -> VolumeDataset:
        d = self.cfg.data
        return VolumeDataset(
            store,
            cases,
            modality,
            patch_size=d.patch_size,
            half=d.half_volumes,
            annotated=set(annotated),
            augment=d.augment,
            seed=self.cfg.train.seed + offset,
            mask_name=region_array(d.region),
            **kw,
        )

    # ------------------------------------------------------------------ validation
    def validate(self, engines: dict, env: Any) -> dict[str, float] | None:
        """Whole-volume Dice of ``data.region`` + volume guards on the target validation cases (every
        rank, same cases); None without validation cases (no annotated target case, e.g. CrossMoDA):
        the last model is kept."""
        if not self.val_cases:
            return None
        gen = engines["gen"]
        return validate_segmenter(
            lambda p: torch.sigmoid(gen(p).float()),
            Store.open(self.cfg.data.store),
            self.val_cases,
            self.split.target,
            self.inferer,
            self.cfg.infer.threshold,
            self.bound,
            env.device,
            region=self.cfg.data.region,
        )


class SliceTask(SegmentTask):
    """Mixin of the 2D variants: overrides the two hooks that fix the dimension, the
    data (``_volumes``: slices of the same parts, ``data.volume_slices``, in-plane window
    ``data.patch_size[:2]``) and the models (``model_factory``: ``spatial_dims=2``, 2D
    discriminators). For MoDATTS-2D (``segment_variants``) losses, steps, validation,
    self-training and prediction are the 3D variant's: THE inferer runs the model slice by slice
    (``infer.inferer``). M-GenSeg (``train.mgenseg``) takes its slices and builds its own models."""

    def _volumes(
        self, store: Any, cases: list[str], modality: str, annotated: list[str], offset: int, **kw: Any
    ) -> VolumeSliceDataset:
        d = self.cfg.data
        return VolumeSliceDataset(
            store,
            cases,
            modality,
            slice_size=d.patch_size[:2],
            half=d.half_volumes,
            annotated=set(annotated),
            augment=d.augment,
            seed=self.cfg.train.seed + offset,
            mask_name=region_array(d.region),
            min_tumour_fraction=d.min_tumour_fraction,
            **kw,
        )

    def model_factory(self, name: str) -> tuple[str, dict]:
        key, kwargs = super().model_factory(name)
        if name == "disc":
            return "hpc_modatts.train.segment_variants:build_discriminators_2d", kwargs
        return key, {**kwargs, "spatial_dims": 2}
