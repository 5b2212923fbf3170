"""M-GenSeg (``train.variant=m-genseg``, thesis chapter 4): cross-modality tumour segmentation
trained END TO END on 2D axial slices, no stage 1, no synthesis, no self-training.

Model (``models.mgenseg``): per modality an encoder, a common decoder, a residual/segmentation
decoder (shared weights, own norms and heads) and a modality-translation decoder, attention gates
in the skips. Each step sees a batch of SOURCE slices (masks on the annotated source cases, slice
weak labels) and a batch of TARGET slices (weak labels; masks on ``split.target_labeled``), both
from ``data.volume_slices`` (thesis 4.4.1: hemispheres cut into axial slices, diseased when the
tumour covers >= 1 % of the brain area, healthy without tumour).

Losses (thesis 4.3.2), weights ``train.mgenseg_weights`` (4.3.3: mod adv 3, mod cyc 20, gen adv 6,
gen rec 20, gen lat 2, lambda_seg per annotation fraction) normalised to sum 1:
- GenSeg on both modalities (Eq. 4.1-4.2; ``genseg_objective``, the MoDATTS semi-supervised
  terms): ``gen_rec``, ``gen_lat``, ``gen_adv`` summed over S and T, four discriminators
  ("SA": S_A vs S_PA, "SP": S_P vs S_AP, "TA", "TP").
- Modality translation, CycleGAN sharing the encoders (4.3.1): S_T = G_T(E_S(S)),
  S_TS = G_S(E_T(S_T)), T_S = G_S(E_T(T)), T_ST = G_T(E_S(T_S)); ``mod_cyc`` = L1(S_TS, S) +
  L1(T_ST, T) over every slice, A and P (Eq. 4.4); ``mod_adv`` = hinge, "S": real S vs T_S,
  "T": real T vs S_T, without distinction of A and P.
- ``seg`` (Eq. 4.3) = Dice(y_S, G_seg^S(E_S(S_P))) + Dice(y_S, G_seg^T(E_T(S_T))) on the
  annotated source slices (batch-pooled soft Dice, ``losses.pooled_dice_loss``, as every stage-2
  variant); ``seg_t``: Dice of G_seg^T(E_T(T)) on annotated target slices when there are any.
Each image is encoded once and its code feeds GenSeg, translation and segmentation. The
generator engine ``gen`` (both modalities) steps, then the discriminator engine ``disc`` (the six
discriminators) on the detached fakes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from hpc_modatts.config import ConfigError, resolve_mgenseg_seg
from hpc_modatts.data.batches import PairedDataset
from hpc_modatts.distributed.engine import unwrap
from hpc_modatts.losses import hinge_d_loss, hinge_g_loss, l1, normalise_weights, pooled_dice_loss
from hpc_modatts.train.genseg_objective import A, P, genseg_disc_loss, genseg_terms
from hpc_modatts.train.segment_task import SliceTask

SOURCE, TARGET = "source", "target"
S, T = "S", "T"
"""Modality-translation discriminators: "S" (real S vs T->S), "T" (real T vs S->T)."""
DOMAINS = (S + A, S + P, T + A, T + P, S, T)
"""Every discriminator of the ``disc`` engine: GenSeg's per modality, then the modality ones."""


class MGenSegTask(SliceTask):
    """M-GenSeg: source + target slices, both translation tasks, Dice on source and its translation."""

    variant = "m-genseg"
    model_names = ("gen", "disc")

    def _weights(self) -> dict[str, float]:
        w = self.cfg.train.mgenseg_weights
        seg = resolve_mgenseg_seg(self.cfg, self.split)
        seg_t = (seg if w.seg_t == -1.0 else w.seg_t) if self.target_labeled else 0.0
        raw = {
            "mod_adv": w.mod_adv,
            "mod_cyc": w.mod_cyc,
            "gen_adv": w.gen_adv,
            "gen_rec": w.gen_rec,
            "gen_lat": w.gen_lat,
            "seg": seg,
            "seg_t": seg_t,
        }
        return {k: v for k, v in normalise_weights(raw).items() if v > 0}

    def check_data(self) -> None:
        s = self.split
        if not s.source_labeled:
            raise ConfigError(
                f"train.variant={self.variant}: the split has no annotated source case "
                f"(split.source_labeled is empty): nothing teaches the segmentation"
            )
        if not s.target_train:
            raise ConfigError(f"train.variant={self.variant} needs target cases (split.target_train is empty)")

    def model_factory(self, name: str) -> tuple[str, dict]:
        m = self.cfg.model
        if name == "disc":
            return (
                "hpc_modatts.train.translate:build_discriminators",
                {
                    "domains": list(DOMAINS),
                    "spatial_dims": 2,
                    "channels": list(m.disc_channels),
                    "scales": m.disc_scales,
                },
            )
        return (
            "hpc_modatts.models:build_mgenseg",
            {
                "size": m.segmenter_size,
                "common_fraction": m.common_fraction,
                "separate_seg_decoder": m.separate_seg_decoder,
                "keep_background": m.keep_background,
            },
        )

    def train_dataset(self) -> Dataset:
        d, s = self.cfg.data, self.split
        source = self._volumes(d.store, s.source_train, s.source, s.source_labeled, 0)
        target = self._volumes(d.store, s.target_train, s.target, s.target_labeled, 1)
        return PairedDataset(source, target, SOURCE, TARGET)

    # ------------------------------------------------------------------ step
    def train_step(self, batch: dict, engines: dict, step: int) -> dict[str, Any]:
        gen, disc = engines["gen"], engines["disc"]
        net, d_net = unwrap(gen), unwrap(disc)  # plain modules inside the generator's graph (translate.py)
        src, tgt = batch[SOURCE], batch[TARGET]
        x_s, x_t = src["image"], tgt["image"]  # (B, 1, X, Y)
        code_s, code_t = net.source.encode(x_s), net.target.encode(x_t)  # (c, u, skips)
        terms: dict[str, torch.Tensor] = {}
        fakes = {}
        for m, model, part, code in ((S, net.source, src, code_s), (T, net.target, tgt, code_t)):
            genseg, fakes[m] = genseg_terms(model, d_net, part["image"], part["weak"], code, (m + A, m + P))
            for k, v in genseg.items():
                terms[f"gen_{k}"] = terms[f"gen_{k}"] + v if f"gen_{k}" in terms else v
        x_st = net.source.translate(*code_s, x_s)  # S_T  = G_T(E_S(S))
        x_ts = net.target.translate(*code_t, x_t)  # T_S  = G_S(E_T(T))
        code_st, code_ts = net.target.encode(x_st), net.source.encode(x_ts)
        terms["mod_cyc"] = (
            l1(net.target.translate(*code_st, x_st), x_s)  # S_TS = G_S(E_T(S_T))
            + l1(net.source.translate(*code_ts, x_ts), x_t)
        )  # T_ST = G_T(E_S(T_S))
        d_net.requires_grad_(False)
        terms["mod_adv"] = hinge_g_loss(d_net(T, x_st)) + hinge_g_loss(d_net(S, x_ts))
        d_net.requires_grad_(True)
        mask, has = src["mask"], src["has_mask"]
        terms["seg"] = pooled_dice_loss(net.source.decode_segmentation(*code_s).float(), mask, has) + pooled_dice_loss(
            net.target.decode_segmentation(*code_st).float(), mask, has
        )
        if "seg_t" in self.weights:
            terms["seg_t"] = pooled_dice_loss(
                net.target.decode_segmentation(*code_t).float(), tgt["mask"], tgt["has_mask"]
            )
        loss = sum(self.weights.get(k, 0.0) * v for k, v in terms.items())  # zero weights keep the graph
        gen.backward(loss)
        gen.step()

        d_loss = (
            genseg_disc_loss(disc, x_s, fakes[S], (S + A, S + P))
            + genseg_disc_loss(disc, x_t, fakes[T], (T + A, T + P))
            + hinge_d_loss(disc(T, x_t), disc(T, x_st.detach()))
            + hinge_d_loss(disc(S, x_s), disc(S, x_ts.detach()))
        )
        disc.backward(d_loss)
        disc.step()
        return {"loss": loss, **terms, "disc": d_loss}
