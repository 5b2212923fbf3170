"""The config sections other than ``train``: data, model, optim, distributed, pipeline, infer.

Every field has a docstring (the string literal under it) and every section checks its values
in ``__post_init__``, raising a ``ConfigError`` that names the key. Numbers follow the thesis,
section 5.5.1 (experimental settings of MoDATTS).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from hpc_modatts.config.checks import ConfigError, check_choice, check_positive
from hpc_modatts.config.names import EXECUTORS, VARIANTS, Executor
from hpc_modatts.data.aliases import canonical

MODALITIES = ("t1", "t1ce", "t2", "flair", "ceT1", "hrT2", "ct")


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
        check_choice("data.region", self.region, ("whole", "core", "enhancing"))
        slice_size, patch_size = tuple(int(v) for v in self.slice_size), tuple(int(v) for v in self.patch_size)
        if len(slice_size) != 2:
            raise ConfigError(f"data.slice_size={list(slice_size)} must have 2 values (H, W)")
        if len(patch_size) != 3:
            raise ConfigError(f"data.patch_size={list(patch_size)} must have 3 values (X, Y, Z)")
        self.slice_size, self.patch_size = (slice_size[0], slice_size[1]), (patch_size[0], patch_size[1], patch_size[2])
        for k, v in (("data.slice_size", self.slice_size), ("data.patch_size", self.patch_size)):
            if min(v) < 8:
                raise ConfigError(f"{k}={list(v)}: every side must be >= 8")
        check_positive("data.num_workers", self.num_workers, allow_zero=True)
        check_positive("data.fold", self.fold, allow_zero=True)
        if self.source == self.target and self.source:
            raise ConfigError(f"data.source and data.target are both {self.source!r}; they must differ")


@dataclass
class ModelConfig:
    translator_size: Literal["tiny", "full"] = "full"
    """Stage 1 TransUNet generator size: full = R50-ViT-B/16, tiny = for tests / CPU demo."""
    keep_background: bool = True
    """Stage-1 translators copy their input's background (voxels at the fill value -1) to their
    output, so the discriminators judge brain only. Beyond the thesis: without it the stage-1 GAN
    on the demo often flipped the tumour contrast (docs/results.md)."""
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
        check_choice("model.translator_size", self.translator_size, ("tiny", "full"))
        check_choice("model.segmenter_size", self.segmenter_size, ("tiny", "small", "semi8m", "full"))
        if not 0.0 < self.common_fraction < 1.0:
            raise ConfigError(f"model.common_fraction={self.common_fraction} must be in (0, 1)")
        for p in self.checkpointing:
            check_choice("model.checkpointing", p, ("bmdh", "conv", "vit", "decoder"))
        self.disc_channels = tuple(int(c) for c in self.disc_channels)
        check_positive("model.disc_scales", self.disc_scales)


POLY_POWER = 0.9
"""Exponent of ``optim.decay: poly`` (nnU-Net's PolyLRScheduler)."""


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
    decay: Literal["constant", "poly"] = "constant"
    """How the learning rate of every engine follows the step: ``constant`` (thesis 5.5.1) or
    ``poly``, nnU-Net's polynomial decay lr x (1 - step / total_steps)^0.9 to 0 at the last step
    (short schedules end on a settled model instead of wherever a constant lr leaves it)."""

    def __post_init__(self) -> None:
        check_positive("optim.lr", self.lr)
        check_positive("optim.disc_lr", self.disc_lr, allow_zero=True)
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"optim.betas={list(betas)} must be two values in [0, 1)")
        self.betas = (betas[0], betas[1])
        check_positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        check_positive("optim.grad_clip", self.grad_clip, allow_zero=True)
        check_choice("optim.decay", self.decay, ("constant", "poly"))

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based) of ``total_steps`` (``decay``).

        A pure function of the step, so a resumed run sets exactly the lr it would have had."""
        if self.decay == "poly" and total_steps > 0:
            return self.lr * (1.0 - min(step, total_steps) / total_steps) ** POLY_POWER
        return self.lr

    def for_engine(self, engine_name: str) -> OptimConfig:
        """The settings of one engine: the discriminators (``disc``) take ``disc_lr`` when set."""
        return replace(self, lr=self.disc_lr) if engine_name == "disc" and self.disc_lr else self


@dataclass
class DistributedConfig:
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3 (partition optimiser state / gradients / parameters)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto = bf16 on CUDA, fp32 on CPU (bf16 is several times slower on CPU, fp16 refused)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; auto = nccl on CUDA, gloo on CPU."""
    offload_optimizer: bool = False
    """ZeRO-Offload of the optimiser state to CPU memory (stages 1-3)."""
    threads_per_rank: int = 0
    """torch intra-op threads per rank; 0 = cores / local ranks."""

    def __post_init__(self) -> None:
        check_choice("distributed.zero_stage", self.zero_stage, (0, 1, 2, 3))
        check_choice("distributed.precision", self.precision, ("auto", "fp32", "bf16"))
        check_choice("distributed.backend", self.backend, ("auto", "nccl", "gloo"))
        check_positive("distributed.threads_per_rank", self.threads_per_rank, allow_zero=True)


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
    """Windows per forward pass (2D variants: this many times ``data.patch_size`` Z slices)."""
    threshold: float = 0.5
    """Probability above which a voxel is tumour (validation Dice and predicted masks)."""

    def __post_init__(self) -> None:
        check_choice("infer.mode", self.mode, ("auto", "hemisphere", "whole"))
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"infer.overlap={self.overlap} must be in [0, 1)")
        check_positive("infer.sw_batch_size", self.sw_batch_size)
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"infer.threshold={self.threshold} must be in (0, 1)")


@dataclass
class PipelineConfig:
    executor: Executor = "local"
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
        check_choice("pipeline.executor", self.executor, EXECUTORS)
        for k in ("folds", "nodes", "timeout_min", "cpus_per_task", "tasks_per_node"):
            check_positive(f"pipeline.{k}", getattr(self, k))
        for k in ("self_training_rounds", "gpus_per_node", "mem_gb"):
            check_positive(f"pipeline.{k}", getattr(self, k), allow_zero=True)
        for v in self.variants:
            check_choice("pipeline.variants", v, VARIANTS)
