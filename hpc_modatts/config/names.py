"""The names of the training stages and of the stage-2 variants, each listed once.

The ``Literal`` types annotate the config fields (``train.stage``, ``train.variant``); the tuples
are for checks and loops. ``hpc_modatts.train.segment_variants.VARIANT_TASKS`` maps each variant to its Task.
"""

from __future__ import annotations

from typing import Literal, get_args

Stage = Literal["translate", "synthesize", "segment", "self-train"]
STAGES: tuple[str, ...] = get_args(Stage)
"""The training stages, in pipeline order (``train.stage``)."""

Variant = Literal["self-supervised", "semi-supervised", "source-supervised", "target-supervised"]
VARIANTS: tuple[str, ...] = get_args(Variant)
"""Stage-2 variants: MoDATTS self-/semi-supervised, then the lower and upper bounds."""

MODATTS_VARIANTS: tuple[str, ...] = VARIANTS[:2]
"""MoDATTS proper: trained on pseudo-target volumes (so after translate + synthesize), self-trained.
The bounds (``source-supervised``, ``target-supervised``) are the same segmenter on real masks only."""

TABLE_ORDER: tuple[str, ...] = ("source-supervised", *MODATTS_VARIANTS, "target-supervised")
"""Row order of every results table: the lower bound, MoDATTS self- and semi-supervised, the upper bound."""

Executor = Literal["local", "debug", "slurm"]
EXECUTORS: tuple[str, ...] = get_args(Executor)
"""Where a pipeline runs: local subprocesses in waves, in-process (debug), or SLURM via submitit."""
