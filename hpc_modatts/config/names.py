"""The names of the training stages and of the stage-2 variants, each listed once.

The ``Literal`` types annotate the config fields (``train.stage``, ``train.variant``); the tuples
are for checks and loops. ``hpc_modatts.train.segment_variants.VARIANT_TASKS`` maps each variant to its Task.
"""

from __future__ import annotations

from typing import Literal, get_args

Stage = Literal["translate", "synthesize", "segment", "self-train"]
STAGES: tuple[str, ...] = get_args(Stage)
"""The training stages, in pipeline order (``train.stage``)."""

Variant = Literal[
    "self-supervised",
    "semi-supervised",
    "source-supervised",
    "target-supervised",
    "self-supervised-2d",
    "semi-supervised-2d",
    "m-genseg",
]
VARIANTS: tuple[str, ...] = get_args(Variant)
"""Stage-2 variants: MoDATTS self-/semi-supervised, the lower and upper bounds, MoDATTS-2D, then
M-GenSeg (``END_TO_END_VARIANTS``)."""

SLICE_VARIANTS: tuple[str, ...] = ("self-supervised-2d", "semi-supervised-2d")
"""MoDATTS-2D (thesis 5.5.1 "Model comparison", 5.5.2: "a 2D version of MoDATTS", 87 % of
target-supervised on BraTS): stage 1 unchanged; stage 2 the same two variants with a 2D MedFormer
on axial slices of the hemispheres (``data.volume_slices``), predicted slice by slice into volumes.
Variants of their own rather than a ``model.dims`` option, so that their run folders, pipeline
nodes and table rows sit beside the 3D ones in one experiment."""

END_TO_END_VARIANTS: tuple[str, ...] = ("m-genseg",)
"""M-GenSeg (thesis chapter 4): ONE 2D model trained end to end on source slices with masks and target
slices with weak labels (modality translation and healthy <-> diseased translation together, no
stage 1, no synthesis, no self-training); predicted slice by slice into volumes like MoDATTS-2D.
Its segment node is its only training node (``pipeline.dag``)."""

MODATTS_VARIANTS: tuple[str, ...] = ("self-supervised", "semi-supervised", *SLICE_VARIANTS)
"""MoDATTS proper: trained on pseudo-target volumes (so after translate + synthesize), self-trained.
The bounds (``source-supervised``, ``target-supervised``) are the same segmenter on real masks only."""

TABLE_ORDER: tuple[str, ...] = (
    "source-supervised",
    "self-supervised",
    "semi-supervised",
    *SLICE_VARIANTS,
    *END_TO_END_VARIANTS,
    "target-supervised",
)
"""Row order of every results table: the lower bound, MoDATTS self- and semi-supervised (3D, then 2D),
M-GenSeg, the upper bound."""


def variant_dims(variant: str) -> int:
    """Spatial dims of a variant's segmenter: 2 for MoDATTS-2D (``SLICE_VARIANTS``) and M-GenSeg
    (``END_TO_END_VARIANTS``), else 3."""
    return 2 if variant in SLICE_VARIANTS or variant in END_TO_END_VARIANTS else 3


Executor = Literal["local", "debug", "slurm"]
EXECUTORS: tuple[str, ...] = get_args(Executor)
"""Where a pipeline runs: local subprocesses in waves, in-process (debug), or SLURM via submitit."""
