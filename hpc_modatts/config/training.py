"""The ``train`` config section: stage, variant, schedule and the loss weights (thesis 5.5.1)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from hpc_modatts.config.build import build_section
from hpc_modatts.config.checks import ConfigError, check_choice, check_positive
from hpc_modatts.config.names import STAGES, VARIANTS, Stage, Variant
from hpc_modatts.config.sections import ModelConfig, OptimConfig

STAGE_SECTIONS: dict[str, type] = {"optim": OptimConfig, "model": ModelConfig}
"""Config sections a ``train.stage_overrides.<stage>`` (or ``variant_overrides.<variant>``) block may
also override."""

VARIANT_STAGES: tuple[str, ...] = ("segment", "self-train")
"""The stages that train a variant: the ones ``train.variant_overrides`` applies to."""

BLOCK_KEYS = ("stage", "stage_overrides", "variant", "variant_overrides")
"""``train`` keys an override block cannot set (they choose or hold the blocks)."""


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
            check_positive(f"train.weights.{f.name}", v, allow_zero=True)


@dataclass
class MGenSegWeights:
    """Raw loss weights of M-GenSeg (``train.variant=m-genseg``, thesis 4.3.2 Eq. 4.5 and 4.3.3);
    the task normalises the active ones to sum 1 ("All weights sum to 1")."""

    mod_adv: float = 3.0
    """lambda_adv^mod: hinge adversarial of the modality translation (real S vs T->S, real T vs S->T): 3."""
    mod_cyc: float = 20.0
    """lambda_cyc^mod: cycle L1 over A and P slices of both modalities (Eq. 4.4): 20."""
    gen_adv: float = 6.0
    """lambda_adv^Gen: hinge adversarial of healthy <-> diseased translation on both modalities: 6."""
    gen_rec: float = 20.0
    """lambda_rec^Gen: GenSeg image reconstruction L1 (X_AA, X_PP; Eq. 4.4): 20."""
    gen_lat: float = 2.0
    """lambda_lat^Gen: GenSeg latent reconstruction L1: 2."""
    seg: float = -1.0
    """lambda_seg: Dice on annotated source slices and on their translations (Eq. 4.3). The thesis
    tunes it per annotation fraction without giving values; -1 = MoDATTS's lambda_seg^pT table from
    the source-annotation fraction (100 at 100 %, 50/25/1/0.1 at 70/40/10/1 %)."""
    seg_t: float = -1.0
    """Dice on annotated real target slices (target-labeled fraction > 0, thesis 4.4.2 "Reaching
    supervised performance"); -1 = equal to lambda_seg."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not (f.name in ("seg", "seg_t") and v == -1.0):
                check_positive(f"train.mgenseg_weights.{f.name}", v, allow_zero=True)


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
    stage: Stage = "segment"
    """Which stage this config trains."""
    variant: Variant = "self-supervised"
    """Stage 2 variant: MoDATTS self-/semi-supervised (3D or -2d), the lower/upper bounds, or
    M-GenSeg (``m-genseg``, end to end, no stage 1)."""
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
    mgenseg_weights: MGenSegWeights = field(default_factory=MGenSegWeights)
    """Loss weights of the ``m-genseg`` variant (thesis 4.3.3), before normalisation."""
    disc_warmup_steps: int = 0
    """Stage 1: discriminator-only optimiser steps before the generators' first update, counted in
    ``max_steps`` (0 = none, the thesis). The discriminators first learn real images against the
    untrained generators' output, so they lead when the generators start. Skipped, with a warning,
    in a run no longer than it. Not set in the demo: with 50 (and ``adv_ramp_steps`` 100) its
    discriminator starts at held-out AUC 0.74-0.89 on three seeds, but seed 0's self-supervised
    test Dice fell 0.769 -> 0.622 (docs/results.md, "The discriminator's held-out ranking")."""
    adv_ramp_steps: int = 0
    """Stage 1: the generators' adversarial weight grows linearly over their first N steps after
    ``disc_warmup_steps`` (step k of N: k/N of ``weights.adv``); 0 = the full weight from the first
    step (the thesis). After a warm-up, a discriminator that leads at full weight made one demo
    seed's generator swing and its translation fail (docs/results.md)."""
    extend_fraction: float = 0.0
    """Up to this fraction of the planned schedule (``max_steps``, or ``epochs`` x steps per epoch)
    more optimiser steps, ``val_every`` at a time and not beyond ``epochs``, while the task says the
    best validation so far is not good enough (``Task.wants_more_steps``; stage 1: the selected
    translation keeps less than ``extend_until_contrast`` of the real target tumour's contrast).
    0 = the fixed schedule (the thesis). Relative, so a short smoke run stays short. Beyond the
    thesis, for short schedules: on the demo phantom, stage 1 of training seed 1 was still learning
    at step 300 on six data splits (contrast ratio 0.22-0.54) while seed 0 had learnt on all six
    (docs/results.md, "Stage 1 that trains until it translates"). Needs ``val_every`` > 0 and a
    constant learning rate."""
    extend_until_contrast: float = 0.6
    """Stage 1 with ``extend_fraction``: the tumour contrast ratio (pseudo-target / real target,
    ``hpc_modatts.train.fidelity``) at which the selected translation is good enough to stop at
    ``max_steps``; 0.6 is issue 8's fidelity target."""
    restarts: int = 0
    """Stage 1: when the selected translation still keeps less than ``extend_until_contrast`` of the
    real target tumour's contrast at the end of its schedule (extension included), train it again
    from scratch with ``train.seed`` + k in ``translate/restart_<k>/`` (k = 1..restarts, stopping at
    the first that reaches it); synthesis uses the attempt with the highest selection score
    (validation cases only, no paired data). 0 = one attempt (the thesis). Beyond the thesis: on the
    demo phantom one training seed ended below the target on 2 of 7 data splits, another seed on none
    (docs/results.md, "Stage 1 restarts")."""
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
    keep_better_model: bool = True
    """A self-training round whose validation score is below that of the model it started from
    hands that model on: its best_model.pt becomes a copy of it and its DONE marker says so
    (``model_from``). Beyond the thesis, which always takes the round's model: a round fine-tunes
    on pseudo-labels of the previous model, and a worse validation means it amplified their errors
    (docs/results.md, "Self-training rounds that validate worse")."""
    keep_better_margin: float = 0.05
    """How far below its start model's validation score a round must fall before
    ``keep_better_model`` hands the start model on. The two scores are means over the same few
    validation cases (6 in the demo) whose per-case Dice spreads by 0.1-0.16, so differences under
    ~0.05 (one standard error) are noise: on the demo such a rule kept a round-0 model that
    validated 0.005 higher and tested 0.11 lower (docs/results.md)."""
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
    Applied by ``hpc_modatts.config.stages.stage_config`` (command-line overrides win)."""
    variant_overrides: dict[str, dict] = field(default_factory=dict)
    """Per-variant values, as ``stage_overrides`` but keyed by ``train.variant`` and applied to the
    stages that train a variant (segment, self-train) after the stage's block, e.g. the 2D variants'
    batch in slices: ``{self-supervised-2d: {batch_size: 16}}`` (M-GenSeg's 2D batch is 15, thesis
    4.3.3; a 3D batch of 2 half volumes is 2 slices in 2D). A variant block may hold its own
    ``stage_overrides`` (segment / self-train), merged last for that stage: ``{self-supervised-2d:
    {max_steps: 300, stage_overrides: {self-train: {max_steps: 30}}}}``. Command-line overrides still win."""

    def __post_init__(self) -> None:
        check_choice("train.stage", self.stage, STAGES)
        self._check_blocks("stage_overrides", STAGES)
        self._check_blocks("variant_overrides", VARIANTS, nested=VARIANT_STAGES)
        check_choice("train.variant", self.variant, VARIANTS)
        for k in ("epochs", "batch_size", "rounds"):
            check_positive(f"train.{k}", getattr(self, k))
        for k in (
            "max_steps",
            "steps_per_epoch",
            "val_every",
            "val_cases",
            "seed",
            "round",
            "checkpoint_every",
            "disc_warmup_steps",
            "adv_ramp_steps",
            "restarts",
        ):
            check_positive(f"train.{k}", getattr(self, k), allow_zero=True)
        check_positive("train.log_every", self.log_every)
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"train.alpha={self.alpha} must be in (0, 1)")
        if not 0 <= self.keep_better_margin < 1:
            raise ConfigError(f"train.keep_better_margin={self.keep_better_margin} must be in [0, 1)")
        check_positive("train.extend_fraction", self.extend_fraction, allow_zero=True)
        if not 0 < self.extend_until_contrast <= 1:
            raise ConfigError(f"train.extend_until_contrast={self.extend_until_contrast} must be in (0, 1]")
        if not self.max_volume_factor > 0:
            raise ConfigError(f"train.max_volume_factor={self.max_volume_factor} must be > 0")
        check_choice("train.healthy_pseudo_labels", self.healthy_pseudo_labels, ("zero", "keep"))
        if isinstance(self.weights, dict):
            self.weights = build_section(LossWeights, self.weights, "train.weights")
        if isinstance(self.mgenseg_weights, dict):
            self.mgenseg_weights = build_section(MGenSegWeights, self.mgenseg_weights, "train.mgenseg_weights")

    def _check_blocks(
        self, name: str, choices: tuple[str, ...], nested: tuple[str, ...] = (), blocks: Any = None
    ) -> None:
        """Every block of ``train.<name>`` names one of ``choices`` and holds valid ``train.*`` keys
        and values (``optim`` / ``model`` keys under those names); with ``nested``, a block may hold
        its own ``stage_overrides`` for those stages (checked the same way, one level deep)."""
        blocks = getattr(self, name) if blocks is None else blocks
        if not isinstance(blocks, dict):
            raise ConfigError(f"train.{name}={blocks!r} must be a mapping {name.split('.')[-1].split('_')[0]} -> keys")
        for choice, values in blocks.items():
            check_choice(f"train.{name}", choice, choices)
            key = f"train.{name}.{choice}"
            if not isinstance(values, dict):
                raise ConfigError(f"{key}={values!r} must be a mapping of train keys")
            if nested and "stage_overrides" in values:
                values = dict(values)
                self._check_blocks(f"{name}.{choice}.stage_overrides", nested, blocks=values.pop("stage_overrides"))
            for bad in BLOCK_KEYS:
                if bad in values:
                    raise ConfigError(f"{key}.{bad} cannot be set in an override block")
            train_keys = {k: v for k, v in values.items() if k not in STAGE_SECTIONS}
            try:  # checks names and values; a value error names the field only, so prefix the block
                build_section(TrainConfig, train_keys, key)
                for section, cls in STAGE_SECTIONS.items():
                    if section in values:
                        if not isinstance(values[section], dict):
                            raise ConfigError(f"{section}={values[section]!r} must be a mapping of {section} keys")
                        build_section(cls, values[section], f"{key}.{section}")
            except ConfigError as e:
                raise ConfigError(str(e) if key in str(e) else f"{key}.{e}") from None
