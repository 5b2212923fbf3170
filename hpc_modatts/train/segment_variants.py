"""One Task class per stage-2 variant (``train.variant``), each overriding the hooks it needs
(models, data, weights, the step) of ``segment_task.SegmentTask``; ``VARIANT_TASKS`` maps names
to classes.

* ``SourceSupervisedTask`` (``source-supervised``, lower bound, no adaptation) and
  ``TargetSupervisedTask`` (``target-supervised``, upper bound): a MedFormer trained with Dice
  on real SOURCE volumes with masks / on real target volumes (every target_train mask).
* ``PseudoTargetTask`` (``self-supervised``): MedFormer E + G_seg trained with soft Dice on the
  pseudo-target volumes of synthesis (L_seg^pT, Eq. 5.5).
* ``GenSegTask`` (``semi-supervised``): GenSeg on REAL target half-volumes with A/P weak labels,
  plus L_seg^pT (Eq. 5.6-5.12): P->A X_PA = G_com(c_P), X_PP = X_PA + G_res(c_P, u_P); A->P
  X_AA = G_com(c_A), X_AP = X_AA + G_res(c_A, u ~ N(0, I)); hinge adversarial with two 3D
  discriminators (X_A vs X_PA, X_P vs X_AP), L_rec = |X_AA - X_A| + |X_PP - X_P|, L_lat
  (re-encoded X_PA and X_AP keep c; u_AP matches the sampled u). Pseudo-target images are
  excluded from the GenSeg terms.

* ``SliceTask`` (``segment_task``) mixes into both: ``PseudoTargetTask2D`` (``self-supervised-2d``) and
  ``GenSegTask2D`` (``semi-supervised-2d``) are MoDATTS-2D (thesis 5.5.1 "Model comparison"):
  the same objectives on 2D axial slices of the hemispheres (``data.volume_slices``: pseudo-target
  slices with the source masks; real target slices with the M-GenSeg slice weak labels), a 2D
  MedFormer and 2D discriminators.
* ``MGenSegTask`` (``m-genseg``, ``train.mgenseg``): M-GenSeg, end to end on source and target
  slices (thesis chapter 4).

Both MoDATTS variants add Dice on real annotated target volumes when ``split.target_labeled``
is not empty (``train.weights.seg_t``) and, in a self-training round, Dice on its pseudo-labels
(``lambda_st``, Eq. 5.13). Active weights are normalised to sum 1; every Dice is pooled over the
batch (``losses.pooled_dice_loss``: healthy hemispheres count).
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from hpc_modatts.config import ConfigError, ExperimentConfig, resolve_seg_pt, resolve_st
from hpc_modatts.data.batches import KeyedDataset, PairedDataset
from hpc_modatts.data.store import Store
from hpc_modatts.distributed.engine import unwrap
from hpc_modatts.losses import normalise_weights, pooled_dice_loss
from hpc_modatts.models.discriminator import DiscriminatorPair
from hpc_modatts.train.genseg_objective import A, P, genseg_disc_loss, genseg_terms
from hpc_modatts.train.mgenseg import MGenSegTask
from hpc_modatts.train.segment_task import SegmentTask, SelfTrainingRound, SliceTask


def build_discriminators_3d(channels: list[int], scales: int) -> DiscriminatorPair:
    """The GenSeg discriminators (Table 5.1 with 3D kernels): "A" (X_A vs X_PA), "P" (X_P vs X_AP)."""
    return DiscriminatorPair((A, P), 3, tuple(channels), scales)


def build_discriminators_2d(channels: list[int], scales: int) -> DiscriminatorPair:
    """MoDATTS-2D's GenSeg discriminators (Table 5.1, the 2D kernels of stage 1): "A", "P"."""
    return DiscriminatorPair((A, P), 2, tuple(channels), scales)


# ----------------------------------------------------------------------------- the bounds
class SupervisedTask(SegmentTask):
    """Dice on real volumes with masks, nothing else (the bounds); ``supervised_data`` says which."""

    @abstractmethod
    def supervised_data(self) -> tuple[list[str], str]:
        """(cases, modality) trained on; every case is annotated."""

    def train_dataset(self) -> Dataset:
        cases, modality = self.supervised_data()
        return KeyedDataset(self._volumes(self.cfg.data.store, cases, modality, cases, 0), "sup")

    def train_step(self, batch: dict, engines: dict, step: int) -> dict[str, Any]:
        gen, sup = engines["gen"], batch["sup"]
        loss = pooled_dice_loss(gen(sup["image"]).float(), sup["mask"], sup["has_mask"])
        gen.backward(loss)
        gen.step()
        return {"loss": loss, "seg": loss}


class SourceSupervisedTask(SupervisedTask):
    """Lower bound: the segmenter on annotated SOURCE volumes, applied to the target unchanged."""

    variant = "source-supervised"

    def supervised_data(self) -> tuple[list[str], str]:
        return list(self.split.source_labeled), self.split.source

    def check_data(self) -> None:
        if not self.split.source_labeled:
            raise ConfigError("train.variant=source-supervised: the split has no annotated source case")


class TargetSupervisedTask(SupervisedTask):
    """Upper bound: the segmenter on every target training volume with its real mask."""

    variant = "target-supervised"

    @classmethod
    def annotated_cases(cls, split: Any) -> list[str]:
        return list(split.target_train)

    def supervised_data(self) -> tuple[list[str], str]:
        return list(self.split.target_train), self.split.target

    def check_data(self) -> None:
        store = Store.open(self.cfg.data.store)
        bare = [c for c in self.split.target_train if store.mask(c) is None]
        if bare:
            raise ConfigError(
                f"train.variant=target-supervised needs masks on every target_train case; "
                f"{len(bare)} have none in {store.path} (e.g. {bare[:3]})"
            )


# ----------------------------------------------------------------------------- MoDATTS
class PseudoTargetTask(SegmentTask):
    """MoDATTS self-supervised: Dice on pseudo-target volumes (``pt``) and on real target volumes
    (``real``: annotated ones, plus pseudo-labelled ones in a self-training round)."""

    variant = "self-supervised"

    def __init__(
        self,
        cfg: ExperimentConfig,
        split: Any,
        run_dir: Path,
        synth_store: Path | None = None,
        self_training: SelfTrainingRound | None = None,
    ) -> None:
        if synth_store is None:
            raise ConfigError(f"train.variant={self.variant} needs the pseudo-target store of synthesis")
        super().__init__(cfg, split, run_dir, synth_store, self_training)

    def _raw_weights(self) -> dict[str, float]:
        w = self.cfg.train.weights
        return {
            "seg_pt": resolve_seg_pt(self.cfg, self.split),
            "seg_t": w.seg_t if self.target_labeled else 0.0,
            "st": resolve_st(self.cfg, self.split) if self.self_training else 0.0,
        }

    def _weights(self) -> dict[str, float]:
        return {k: v for k, v in normalise_weights(self._raw_weights()).items() if v > 0}

    def check_data(self) -> None:
        if not self.split.source_labeled:
            raise ConfigError(
                f"train.variant={self.variant}: the split has no annotated source case "
                f"(split.source_labeled is empty), so no pseudo-target masks"
            )

    # ------------------------------------------------------------------ data
    def real_cases(self) -> list[str]:
        """The real target cases paired with the pseudo-targets (none: pseudo-targets alone)."""
        s = self.split
        return list(s.target_train if self.self_training else s.target_labeled)

    def train_dataset(self) -> Dataset:
        d, s = self.cfg.data, self.split
        pt = self._volumes(self.synth_store, s.source_labeled, s.target, s.source_labeled, 0)
        real_cases = self.real_cases()
        if not real_cases:
            return KeyedDataset(pt, "pt")
        extra = (
            {"extra_mask": "pseudo_label", "extra_store": self.self_training.pseudo_labels}
            if self.self_training
            else {}
        )
        real = self._volumes(d.store, real_cases, s.target, s.target_labeled, 1, **extra)
        return PairedDataset(pt, real, "pt", "real")

    # ------------------------------------------------------------------ step
    def train_step(self, batch: dict, engines: dict, step: int) -> dict[str, Any]:
        gen, w = engines["gen"], self.weights
        pt = batch["pt"]
        terms = {"seg_pt": pooled_dice_loss(gen(pt["image"]).float(), pt["mask"], pt["has_mask"])}
        real = batch.get("real")
        outputs = self._real_forward(real, engines, terms) if real is not None else {}
        if real is not None and ("seg_t" in w or "st" in w):
            self._real_dice_terms(real, outputs["real_logits"], terms)
        loss = sum(w[k] * v for k, v in terms.items() if k in w)
        gen.backward(loss)
        gen.step()
        logged = {"loss": loss, **terms}
        self._after_generator_step(real, outputs, engines, logged)
        return logged

    def _real_forward(self, real: dict, engines: dict, terms: dict) -> dict:
        """The real batch through the generator: its logits (``real_logits``), and any terms."""
        return {"real_logits": engines["gen"](real["image"])}

    def _after_generator_step(self, real: dict | None, outputs: dict, engines: dict, logged: dict) -> None:
        """Anything trained after the generator's step (GenSeg: the discriminators)."""

    def _real_dice_terms(self, real: dict, logits: torch.Tensor, terms: dict) -> None:
        """Dice on real target volumes: true masks (seg_t) and pseudo-labels (st) apart."""
        has = real["has_mask"].bool().reshape(-1)
        true = torch.tensor([c in self.target_labeled for c in real["case"]], device=has.device)
        if "seg_t" in self.weights:
            terms["seg_t"] = pooled_dice_loss(logits.float(), real["mask"], has & true)
        if "st" in self.weights:
            terms["st"] = pooled_dice_loss(logits.float(), real["mask"], has & ~true)


class GenSegTask(PseudoTargetTask):
    """MoDATTS semi-supervised: the pseudo-target Dice plus GenSeg on every real target
    half-volume (weak A/P labels), with two 3D discriminators."""

    variant = "semi-supervised"
    model_names = ("gen", "disc")

    def _raw_weights(self) -> dict[str, float]:
        w = self.cfg.train.weights
        return {**super()._raw_weights(), "adv": w.adv, "rec": w.rec, "lat": w.lat}

    def check_data(self) -> None:
        super().check_data()
        if not self.split.target_train:
            raise ConfigError(f"train.variant={self.variant} needs real target cases (split.target_train is empty)")

    def model_factory(self, name: str) -> tuple[str, dict]:
        m = self.cfg.model
        if name == "disc":  # the MODEL_FACTORIES key best_model.pt files hold (a name, not a path)
            return (
                "hpc_modatts.train.segment:build_discriminators_3d",
                {"channels": list(m.disc_channels), "scales": m.disc_scales},
            )
        key, kwargs = super().model_factory(name)
        return key, {**kwargs, "genseg": True}

    def real_cases(self) -> list[str]:
        return list(self.split.target_train)  # unannotated ones too: GenSeg needs only weak labels

    def _real_forward(self, real: dict, engines: dict, terms: dict) -> dict:
        return self._genseg_terms(real, engines, terms)

    def _after_generator_step(self, real: dict | None, outputs: dict, engines: dict, logged: dict) -> None:
        assert real is not None  # check_data: target_train is not empty
        logged["disc"] = self._disc_step(real, outputs, engines["disc"])

    def _genseg_terms(self, real: dict, engines: dict, terms: dict) -> dict:
        """GenSeg on the real batch (Eq. 5.6-5.11, ``genseg_objective.genseg_terms``) into ``terms``;
        the real Dice's logits from the same encoding."""
        net, disc = unwrap(engines["gen"]), unwrap(engines["disc"])  # plain modules: see translate.py
        code = net.encode(real["image"])  # x (B, 1, X, Y, Z) -> c, u, skips
        genseg, out = genseg_terms(net, disc, real["image"], real["weak"], code)
        terms.update(genseg)
        wants_real_seg = "seg_t" in self.weights or "st" in self.weights
        return {**out, "real_logits": net.decode_segmentation(*code) if wants_real_seg else None}

    def _disc_step(self, real: dict, out: dict, disc: Any) -> torch.Tensor:
        """Hinge update of both discriminators: X_A vs X_PA ("A"), X_P vs X_AP ("P")."""
        loss = genseg_disc_loss(disc, real["image"], out)
        disc.backward(loss)
        disc.step()
        return loss


# ----------------------------------------------------------------------------- MoDATTS-2D
class PseudoTargetTask2D(SliceTask, PseudoTargetTask):
    """MoDATTS-2D self-supervised: Dice on pseudo-target slices (+ real target slices, as 3D)."""

    variant = "self-supervised-2d"


class GenSegTask2D(SliceTask, GenSegTask):
    """MoDATTS-2D semi-supervised: + 2D GenSeg on real target slices with slice weak labels."""

    variant = "semi-supervised-2d"


VARIANT_TASKS: dict[str, type[SegmentTask]] = {
    cls.variant: cls
    for cls in (
        PseudoTargetTask,
        GenSegTask,
        SourceSupervisedTask,
        TargetSupervisedTask,
        PseudoTargetTask2D,
        GenSegTask2D,
        MGenSegTask,
    )
}
"""THE mapping ``train.variant`` -> Task class (the names: ``hpc_modatts.config.VARIANTS``)."""
