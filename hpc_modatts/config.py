"""Typed experiment configuration: dataclasses, YAML loading, dotted overrides.

Every field has a docstring (the string literal under it) and every section checks its
values in ``__post_init__``. A config is loaded from YAML (``load_config``), then overridden
on the command line with ``key.sub=value`` (``apply_overrides``); a wrong key or value fails
with a ``ConfigError`` naming the key and what is allowed. ``save_config`` writes the resolved
config beside every output (see ``hpc_modatts.runs``).

Numbers follow the thesis, section 5.5.1 (experimental settings of MoDATTS).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

import yaml

from hpc_modatts.data.aliases import canonical
from hpc_modatts.runs import atomic_write_text

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11; annotations only
    from importlib.resources.abc import Traversable


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


BUILTIN_CONFIGS = files("hpc_modatts") / "configs"
"""The shipped experiment configs (package data): the paper's and the CPU demo's."""


MODALITIES = ("t1", "t1ce", "t2", "flair", "ceT1", "hrT2", "ct")


def _check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")


def _check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    if not math.isfinite(value):  # nan passes both comparisons below
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


# ----------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    store: str = ""
    """Path of the converted zarr store (``hpc-modatts convert``)."""
    split: str = ""
    """Path of the split JSON (``hpc-modatts split``): which case plays source/target, folds."""
    source: str = "t1"
    """Annotated source modality name as stored (e.g. t1, t1ce, ceT1)."""
    target: str = "t2"
    """Target modality to segment (e.g. t2, flair, hrT2)."""
    fold: int = 0
    """Cross-validation fold of the segmentation stage (index into the split's folds)."""
    slice_size: tuple[int, int] = (240, 240)
    """Stage 1: 2D axial slices are padded/cropped to this (H, W)."""
    patch_size: tuple[int, int, int] = (96, 160, 64)
    """Stage 2: 3D patch (X, Y, Z) of a half-brain, the paper's 96x160x64."""
    half_volumes: bool = True
    """Stage 2 works on hemispheres (left/right halves) carrying A/P weak labels."""
    augment: bool = True
    """On-the-fly MONAI augmentation (2D for stage 1, nnU-Net-style 3D for stage 2)."""
    num_workers: int = 0
    """DataLoader worker processes per rank (fork-safe, stores are reopened lazily)."""
    min_tumour_fraction: float = 0.01
    """2D slice weak labels: diseased if tumour covers >= this fraction of the brain area."""
    region: Literal["whole", "core", "enhancing"] = "whole"
    """Training target: whole tumour (the thesis), or for BraTS stores the tumour core or the
    enhancing tumour (hpc_modatts.data.labels; stored as mask / mask_core / mask_enhancing)."""

    def __post_init__(self) -> None:
        # BraTS 2023-2025 names (t1c, t2f, ...) mean the stored t1ce, flair, ...: hpc_modatts.data.aliases
        self.source, self.target = canonical(self.source), canonical(self.target)
        _check_choice("data.region", self.region, ("whole", "core", "enhancing"))
        slice_size, patch_size = tuple(int(v) for v in self.slice_size), tuple(int(v) for v in self.patch_size)
        if len(slice_size) != 2:
            raise ConfigError(f"data.slice_size={list(slice_size)} must have 2 values (H, W)")
        if len(patch_size) != 3:
            raise ConfigError(f"data.patch_size={list(patch_size)} must have 3 values (X, Y, Z)")
        self.slice_size, self.patch_size = (slice_size[0], slice_size[1]), (patch_size[0], patch_size[1], patch_size[2])
        for k, v in (("data.slice_size", self.slice_size), ("data.patch_size", self.patch_size)):
            if min(v) < 8:
                raise ConfigError(f"{k}={list(v)}: every side must be >= 8")
        _check_positive("data.num_workers", self.num_workers, allow_zero=True)
        _check_positive("data.fold", self.fold, allow_zero=True)
        if self.source == self.target and self.source:
            raise ConfigError(f"data.source and data.target are both {self.source!r}; they must differ")


@dataclass
class ModelConfig:
    translator_size: Literal["tiny", "full"] = "full"
    """Stage 1 TransUNet generator size: full = R50-ViT-B/16, tiny = for tests / CPU demo."""
    keep_background: bool = True
    """Stage-1 translators copy their input's background (voxels at the fill value -1) to their
    output, so the discriminators judge brain only. Beyond the thesis; on the demo it turned the
    stage-1 GAN from 2 of 5 seeds flipping the tumour contrast to 5 of 5 (docs/results.md)."""
    segmenter_size: Literal["tiny", "small", "semi8m", "full"] = "full"
    """Stage 2 MedFormer size: full ~38 M, semi8m = the paper's reduced 8 M, small/tiny for CPU."""
    common_fraction: float = 0.75
    """GenSeg: fraction of bottleneck channels forming the common code c (rest is unique u)."""
    separate_seg_decoder: bool = False
    """Ablation: a separate segmentation decoder instead of the shared residual/seg decoder."""
    pretrained: str = ""
    """Local file with ImageNet R50-ViT-B/16 weights for the translator encoder (never downloaded)."""
    checkpointing: list[str] = field(default_factory=list)
    """Activation checkpointing policy: block kinds to recompute (bmdh, conv, vit)."""
    channels_last: bool = True
    """Store convolution weights channels-last (``hpc_modatts.models.layout``): same values, about
    2x faster small-channel 3D convolutions on CPU; the layout tensor cores prefer on CUDA."""
    disc_scales: int = 3
    """Number of scales of the multi-scale discriminators."""
    disc_channels: tuple[int, ...] = (60, 120, 240, 480)
    """Discriminator widths per downsampling layer (Table 5.1)."""

    def __post_init__(self) -> None:
        _check_choice("model.translator_size", self.translator_size, ("tiny", "full"))
        _check_choice("model.segmenter_size", self.segmenter_size, ("tiny", "small", "semi8m", "full"))
        if not 0.0 < self.common_fraction < 1.0:
            raise ConfigError(f"model.common_fraction={self.common_fraction} must be in (0, 1)")
        for p in self.checkpointing:
            _check_choice("model.checkpointing", p, ("bmdh", "conv", "vit", "decoder"))
        self.disc_channels = tuple(int(c) for c in self.disc_channels)
        _check_positive("model.disc_scales", self.disc_scales)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """Learning rate (thesis 5.5.1: 1e-4)."""
    betas: tuple[float, float] = (0.5, 0.999)
    """Adam betas (thesis 5.5.1: 0.5, 0.999)."""
    amsgrad: bool = True
    """AMSGrad variant of Adam, the paper's optimiser."""
    weight_decay: float = 0.0
    """L2 weight decay."""
    grad_clip: float = 0.0
    """Gradient-norm clipping; 0 disables (DeepSpeed's default of 1.0 is overridden)."""
    disc_lr: float = 0.0
    """Learning rate of the discriminators (engine ``disc``); 0 = ``lr`` as in the thesis. A larger
    value (two time-scale update rule) lets short GAN schedules keep adversarial pressure."""

    def __post_init__(self) -> None:
        _check_positive("optim.lr", self.lr)
        _check_positive("optim.disc_lr", self.disc_lr, allow_zero=True)
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"optim.betas={list(betas)} must be two values in [0, 1)")
        self.betas = (betas[0], betas[1])
        _check_positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("optim.grad_clip", self.grad_clip, allow_zero=True)


@dataclass
class DistributedConfig:
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3 (partition optimiser state / gradients / parameters)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto = bf16 on CUDA, fp32 on CPU (bf16 is ~6x slower on CPU, fp16 refused)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; auto = nccl on CUDA, gloo on CPU."""
    offload_optimizer: bool = False
    """ZeRO-Offload of the optimiser state to CPU memory (stages 1-3)."""
    threads_per_rank: int = 0
    """torch intra-op threads per rank; 0 = cores / local ranks."""

    def __post_init__(self) -> None:
        _check_choice("distributed.zero_stage", self.zero_stage, (0, 1, 2, 3))
        _check_choice("distributed.precision", self.precision, ("auto", "fp32", "bf16"))
        _check_choice("distributed.backend", self.backend, ("auto", "nccl", "gloo"))
        _check_positive("distributed.threads_per_rank", self.threads_per_rank, allow_zero=True)


@dataclass
class LossWeights:
    """Raw loss weights; the trainer normalises the active ones to sum 1 (thesis 5.5.1)."""

    adv: float = 1.0
    """Adversarial (hinge) weight. Stage 1: 1. Stage 2 GenSeg: 5 (BraTS and CrossMoDA)."""
    seg: float = 1.0
    """Stage 1 Dice on annotated source slices and on their translations: 1."""
    cyc: float = 10.0
    """Stage 1 cycle-consistency L1: 10."""
    rec: float = 50.0
    """Stage 2 GenSeg image reconstruction L1: 50 BraTS, 75 CrossMoDA."""
    lat: float = 5.0
    """Stage 2 GenSeg latent reconstruction L1: 5 BraTS, 10 CrossMoDA."""
    seg_pt: float = -1.0
    """lambda_seg^pT, Dice on pseudo-target volumes; -1 = from the source-annotation fraction
    (100 at 100 %, 50/25/1/0.1 at 70/40/10/1 %)."""
    st: float = -1.0
    """lambda_st, self-training Dice on pseudo-labels; -1 = equal to lambda_seg^pT."""
    seg_t: float = 100.0
    """Dice on annotated real target volumes (target-labeled fraction > 0 / upper bound)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("seg_pt", "st") and v == -1.0:
                continue
            _check_positive(f"train.weights.{f.name}", v, allow_zero=True)


def lambda_seg_pt_for_fraction(fraction: float) -> float:
    """lambda_seg^pT from the source-annotation fraction (thesis 5.5.1): interpolate the table."""
    table = [(0.01, 0.1), (0.10, 1.0), (0.40, 25.0), (0.70, 50.0), (1.00, 100.0)]
    if fraction <= table[0][0]:
        return table[0][1]
    for (f0, w0), (f1, w1) in zip(table, table[1:]):
        if fraction <= f1:
            return w0 + (w1 - w0) * (fraction - f0) / (f1 - f0)
    return table[-1][1]


@dataclass
class TrainConfig:
    stage: Literal["translate", "synthesize", "segment", "self-train"] = "segment"
    """Which stage this config trains."""
    variant: Literal["self-supervised", "semi-supervised", "source-supervised", "target-supervised"] = "self-supervised"
    """Stage 2 variant: MoDATTS self-/semi-supervised, or the lower/upper bounds."""
    epochs: int = 300
    """Epochs (stage 1: 200, stage 2: 300, each self-training round: 150)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = run all epochs). Used by tests and the demo."""
    steps_per_epoch: int = 0
    """Samples drawn per epoch = steps_per_epoch x global batch (0 = one pass over the data)."""
    batch_size: int = 2
    """Global batch size (stage 1: 15, stage 2: 2), split over ranks."""
    val_every: int = 0
    """Validate every N steps (0 = at the end of every epoch)."""
    val_cases: int = 0
    """Cap on validation cases per validation (0 = all)."""
    checkpoint_every: int = 0
    """Also write the latest checkpoint every N steps without validating (0 = only when
    validating): bounds the work a preempted or timed-out SLURM job loses on requeue."""
    log_every: int = 10
    """Write metrics.jsonl every N steps."""
    seed: int = 0
    """Seed of weights, sampling and augmentation."""
    weights: LossWeights = field(default_factory=LossWeights)
    """Loss weights before normalisation."""
    rounds: int = 3
    """Self-training rounds k (thesis: 3 rounds of 150 epochs)."""
    round: int = 0
    """Self-training: run only this round (1..rounds; the pipeline's one job per round);
    0 = run rounds 1..rounds in turn, skipping finished ones."""
    alpha: float = 0.6
    """Self-training pseudo-label threshold on probabilities."""
    max_volume_factor: float = 3.0
    """Plausibility bound (``hpc_modatts.train.guards``): a model predicting, for any validation
    case, a tumour larger than this multiple of the largest annotated training tumour is never
    selected as best, and pseudo-labels beyond it stop self-training with an error."""
    healthy_pseudo_labels: Literal["zero", "keep"] = "zero"
    """Self-training pseudo-labels in hemispheres weakly labelled healthy (A): ``zero`` them (they
    are known to be wrong; beyond the thesis, see docs/results.md for the ablation) or ``keep``
    them as thresholded (the thesis)."""
    init_from: str = ""
    """Run folder whose best model initialises this run (self-training rounds)."""
    translator_run: str = ""
    """Stage 1 run folder used by synthesis."""
    pseudo_target_store: str = ""
    """Store of synthesised pseudo-target volumes (default: <translator_run>/synth.zarr)."""
    pseudo_labels: str = ""
    """Store of pseudo-labels for self-training (written by the previous round)."""
    resume: bool = True
    """Resume from the run folder's latest checkpoint when one exists."""
    stage_overrides: dict[str, dict] = field(default_factory=dict)
    """Per-stage values of ``train.*`` keys (and of ``optim.*`` / ``model.*`` keys under ``optim`` /
    ``model``), merged over
    those sections when a stage runs, e.g. ``{translate: {epochs: 200, batch_size: 15,
    weights: {adv: 1}, optim: {disc_lr: 4e-4}}, self-train: {epochs: 150}}``
    (thesis 5.5.1: stage 1 200 epochs batch 15; stage 2 300 epochs batch 2; rounds 150 epochs).
    Applied by ``hpc_modatts.train.common.stage_config`` (command-line overrides win)."""

    def __post_init__(self) -> None:
        _check_choice("train.stage", self.stage, ("translate", "synthesize", "segment", "self-train"))
        self._check_stage_overrides()
        _check_choice("train.variant", self.variant,
                      ("self-supervised", "semi-supervised", "source-supervised", "target-supervised"))
        for k in ("epochs", "batch_size", "rounds"):
            _check_positive(f"train.{k}", getattr(self, k))
        for k in ("max_steps", "steps_per_epoch", "val_every", "val_cases", "seed", "round", "checkpoint_every"):
            _check_positive(f"train.{k}", getattr(self, k), allow_zero=True)
        _check_positive("train.log_every", self.log_every)
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"train.alpha={self.alpha} must be in (0, 1)")
        if not self.max_volume_factor > 0:
            raise ConfigError(f"train.max_volume_factor={self.max_volume_factor} must be > 0")
        _check_choice("train.healthy_pseudo_labels", self.healthy_pseudo_labels, ("zero", "keep"))
        if isinstance(self.weights, dict):
            self.weights = _build(LossWeights, self.weights, "train.weights")

    def _check_stage_overrides(self) -> None:
        """Every per-stage block names a stage and holds valid ``train.*`` keys and values."""
        if not isinstance(self.stage_overrides, dict):
            raise ConfigError(f"train.stage_overrides={self.stage_overrides!r} must be a mapping stage -> keys")
        for stage, values in self.stage_overrides.items():
            _check_choice("train.stage_overrides", stage, ("translate", "synthesize", "segment", "self-train"))
            key = f"train.stage_overrides.{stage}"
            if not isinstance(values, dict):
                raise ConfigError(f"{key}={values!r} must be a mapping of train keys")
            for bad in ("stage", "stage_overrides"):
                if bad in values:
                    raise ConfigError(f"{key}.{bad} cannot be set per stage")
            train_keys = {k: v for k, v in values.items() if k not in STAGE_SECTIONS}
            try:  # checks names and values; a value error names the field only, so prefix the block
                _build(TrainConfig, train_keys, key)
                for section, cls in STAGE_SECTIONS.items():
                    if section in values:
                        if not isinstance(values[section], dict):
                            raise ConfigError(f"{section}={values[section]!r} must be a mapping of {section} keys")
                        _build(cls, values[section], f"{key}.{section}")
            except ConfigError as e:
                raise ConfigError(str(e) if key in str(e) else f"{key}.{e}") from None


@dataclass
class PipelineConfig:
    executor: Literal["local", "debug", "slurm"] = "local"
    """submitit executor: slurm (afterok chains), local (subprocesses, in order), debug (in-process)."""
    cluster: str = ""
    """Cluster preset: a name in launchers/ or a YAML path (partition, gpus, time...)."""
    folds: int = 1
    """Folds of the segmentation stage run in parallel; prediction ensembles them."""
    variants: list[str] = field(default_factory=lambda: ["self-supervised"])
    """Stage 2 variants the pipeline trains (and evaluates side by side)."""
    self_training_rounds: int = 0
    """Self-training rounds after segmentation (0 = none)."""
    gpus_per_node: int = 0
    """GPUs (= SLURM tasks = ranks) per training job; 0 = CPU tasks (see tasks_per_node)."""
    tasks_per_node: int = 1
    """Ranks (SLURM tasks) per node of a training job when gpus_per_node is 0, for CPU tests and
    CPU clusters; with GPUs there is always one task per GPU and this is ignored."""
    nodes: int = 1
    """Nodes per training job."""
    timeout_min: int = 60
    """Per-job time limit (minutes); jobs are requeued from their checkpoint on timeout."""
    cpus_per_task: int = 2
    """CPU cores per task."""
    mem_gb: int = 0
    """Memory per node in GB (0 = the cluster default)."""
    source_dir: str = ""
    """NIfTI dataset folder converted into ``data.store`` by the pipeline's convert node when
    the store does not exist yet ("" = the store must already exist)."""
    layout: str = "auto"
    """Layout of ``source_dir`` for the convert node: auto (from the file names), brats, crossmoda
    or manifest (see ``hpc_modatts.data.layouts``)."""

    def __post_init__(self) -> None:
        _check_choice("pipeline.executor", self.executor, ("local", "debug", "slurm"))
        for k in ("folds", "nodes", "timeout_min", "cpus_per_task", "tasks_per_node"):
            _check_positive(f"pipeline.{k}", getattr(self, k))
        for k in ("self_training_rounds", "gpus_per_node", "mem_gb"):
            _check_positive(f"pipeline.{k}", getattr(self, k), allow_zero=True)
        for v in self.variants:
            _check_choice("pipeline.variants", v,
                          ("self-supervised", "semi-supervised", "source-supervised", "target-supervised"))


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
        raise ConfigError(f"name={name!r} must match [A-Za-z0-9._-]+ without '..' "
                          "(it is a folder under run_root and the SLURM job name)")
    return name


@dataclass
class InferConfig:
    """How a 3D model is applied to whole volumes (``hpc_modatts.infer.inferer``): validation,
    pseudo-labels and ``predict`` all use these settings."""

    mode: Literal["auto", "hemisphere", "whole"] = "auto"
    """hemisphere = each half alone, centred like a training patch, the other half at the
    background value (what half-volume training shows the model); whole = sliding windows over
    the whole volume; auto = hemisphere when ``data.half_volumes``."""
    overlap: float = 0.5
    """Sliding-window overlap where a region is larger than the patch (MONAI, gaussian blending)."""
    sw_batch_size: int = 2
    """Windows per forward pass."""
    threshold: float = 0.5
    """Probability above which a voxel is tumour (validation Dice and predicted masks)."""

    def __post_init__(self) -> None:
        _check_choice("infer.mode", self.mode, ("auto", "hemisphere", "whole"))
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"infer.overlap={self.overlap} must be in [0, 1)")
        _check_positive("infer.sw_batch_size", self.sw_batch_size)
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"infer.threshold={self.threshold} must be in (0, 1)")


STAGE_SECTIONS: dict[str, type] = {"optim": OptimConfig, "model": ModelConfig}
"""Config sections a ``train.stage_overrides.<stage>`` block may also override."""


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
                setattr(self, f.name, _build(_resolve_type(ExperimentConfig, f), v, f.name))

    @property
    def run_dir(self) -> Path:
        return Path(self.run_root) / self.name


# ----------------------------------------------------------------------------- building
def _resolve_type(cls: Any, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {[f.name for f in dataclasses.fields(tp)]}")
        return _build(tp, value, key)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(key, arg, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}={value!r} matches none of {get_args(tp)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}={list(value)} must have {len(args)} values")
            return tuple(_coerce(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        out = [_coerce(f"{key}[{i}]", inner, v) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}={value!r} must be an integer")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} must be an integer") from None
        if not math.isfinite(f) or f != int(f):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a number")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} must be a number") from None
        if not math.isfinite(f):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return f
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}={value!r} must be a string")
        return check_one_line(key, "" if value is None else str(value))
    return value


def _build(cls: Any, data: dict, prefix: str = "") -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; allowed keys: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        kwargs[k] = _coerce(key, _resolve_type(cls, names[k]), v)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def config_from_dict(data: dict | None) -> ExperimentConfig:
    """Build and check an ExperimentConfig from a (nested) dict."""
    return _build(ExperimentConfig, dict(data or {}))


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
        if cls is TrainConfig and p == "stage_overrides":
            return  # a mapping, not a section: TrainConfig._check_stage_overrides checks its keys on rebuild
        cls = _resolve_type(cls, names[p])


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
    raise ConfigError(f"config file {path} does not exist and is not a built-in config "
                      f"({', '.join(builtin_configs())})")


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
