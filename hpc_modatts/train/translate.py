"""Stage 1: tumour-aware cross-modality translation on 2D axial slices (thesis 5.4.1, 5.5.1).

CycleGAN between the source modality S and the target modality T with two TransUNet
generators sharing each encoder between a translation decoder and a segmentation decoder:

* ``s2t`` = E_S + G_T (translation S->T) + G_seg^S (segments source images),
* ``t2s`` = E_T + G_S (translation T->S) + G_seg^T (segments target-like images),

and one 2D multi-scale discriminator per modality. Losses (Eq. 5.1-5.4): hinge adversarial per
modality (real X_m vs translated), cycle L1 ||X_S - X_S''|| + ||X_T - X_T''||, soft Dice on the
annotated source slices for G_seg^S(E_S(X_S)) and G_seg^T(E_T(X_S')); weights adv 1, seg 1,
cyc 10 normalised to sum 1. Beyond the thesis (both 0 there and in the shipped configs):
``train.disc_warmup_steps`` discriminator-only steps first, then the generators' adversarial
weight ramped over ``train.adv_ramp_steps``; ``train.restarts`` trains a translation that ends below
the contrast target again with another seed (``stage1_restarts.py``). ``report.png``:
``translate_report.py``. ``hpc-modatts train translate CONFIG``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpc_modatts.config import ExperimentConfig, stage_config
from hpc_modatts.data.batches import PairedDataset, paired_case_ids
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.inputs import load_split, open_store, val_case_list
from hpc_modatts.data.labels import read_region, region_array
from hpc_modatts.data.loaders import SliceDataset
from hpc_modatts.data.slices import brain_slices, fit_slices, map_slices
from hpc_modatts.data.store import IMAGE_FILL as BACKGROUND
from hpc_modatts.data.store import Store
from hpc_modatts.distributed.engine import unwrap
from hpc_modatts.distributed.env import init_distributed
from hpc_modatts.infer.metrics import dice_of
from hpc_modatts.losses import dice_loss, hinge_d_loss, hinge_g_loss, l1, normalise_weights
from hpc_modatts.models.discriminator import DiscriminatorPair
from hpc_modatts.models.sizes import build_translator
from hpc_modatts.runs import is_done, stage_dir
from hpc_modatts.train import fidelity
from hpc_modatts.train.best_model import build_model
from hpc_modatts.train.stage1_restarts import selected_step, selected_validation, train_attempts
from hpc_modatts.train.synthesize import translate_volume
from hpc_modatts.train.task import TaskDefaults
from hpc_modatts.train.trainer import Trainer
from hpc_modatts.train.translate_report import write_report

log = logging.getLogger(__name__)

SOURCE, TARGET = "source", "target"


# ----------------------------------------------------------------------------- models
class CycleTranslators(nn.Module):
    """Both stage-1 generators; ``forward`` runs the two cycles in one call (ZeRO-3 friendly)."""

    def __init__(self, size: str = "full", pretrained: str = "", keep_background: bool = False) -> None:
        super().__init__()
        self.s2t = build_translator(size, pretrained=pretrained)  # E_S, G_T, G_seg^S
        self.t2s = build_translator(size, pretrained=pretrained)  # E_T, G_S, G_seg^T
        self.keep_background = keep_background

    def _outside_brain(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y`` with the background of ``x`` (voxels at the fill value) copied over (model.keep_background).

        Beyond the thesis: the normaliser clips brain voxels at mean - 5 std (never reached in
        practice), so only background and padding sit at exactly -1. Without this the
        discriminators spend themselves on the generators' imperfect background and the stage-1
        GAN more often flips the tumour contrast (docs/results.md)."""
        if not self.keep_background:
            return y
        return torch.where(x <= BACKGROUND + 1e-3, torch.full_like(y, BACKGROUND), y)

    def forward(self, x_s: torch.Tensor, x_t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both cycles; every tensor (B, 1, H, W)."""
        f_s = self.s2t.encode(x_s)
        s_to_t = self._outside_brain(self.s2t.translate(f_s), x_s)  # X_S'  = G_T(E_S(X_S))
        f_s1 = self.t2s.encode(s_to_t)
        f_t = self.t2s.encode(x_t)
        t_to_s = self._outside_brain(self.t2s.translate(f_t), x_t)  # X_T'  = G_S(E_T(X_T))
        return {
            "s_to_t": s_to_t,
            "s_cycled": self._outside_brain(self.t2s.translate(f_s1), x_s),  # X_S'' = G_S(E_T(X_S'))
            "seg_s": self.s2t.segment(f_s),  # G_seg^S(E_S(X_S))
            "seg_s_translated": self.t2s.segment(f_s1),  # G_seg^T(E_T(X_S'))
            "t_to_s": t_to_s,
            "t_cycled": self._outside_brain(self.s2t.translate(self.s2t.encode(t_to_s)), x_t),  # X_T''
        }

    @torch.no_grad()
    def to_target(self, x_s: torch.Tensor) -> torch.Tensor:
        """Synthesis: X_S' = G_T(E_S(X_S)), (B, 1, H, W) in [-1, 1]."""
        return self._outside_brain(self.s2t.translate(self.s2t.encode(x_s)), x_s)

    def segment_source(self, x_s: torch.Tensor) -> torch.Tensor:
        return self.s2t.segment(self.s2t.encode(x_s))

    def segment_target(self, x_t: torch.Tensor) -> torch.Tensor:
        return self.t2s.segment(self.t2s.encode(x_t))


def build_cycle_translators(
    size: str = "full", pretrained: str = "", keep_background: bool = False
) -> CycleTranslators:
    """Factory recorded in best_model.pt (``load_best_model(run, "gen")``); checkpoints written
    before ``keep_background`` existed load with the old behaviour (False)."""
    return CycleTranslators(size, pretrained, keep_background)


def build_discriminators(domains: list[str], spatial_dims: int, channels: list[int], scales: int) -> DiscriminatorPair:
    return DiscriminatorPair(tuple(domains), spatial_dims, tuple(channels), scales)


# ----------------------------------------------------------------------------- task
class TranslateTask(TaskDefaults):
    """The stage-1 Task: data, losses and the generator/discriminator steps."""

    name = "translate"
    select_on = "score"  # fidelity.selection_score, not the translator's own Dice

    def __init__(self, cfg: ExperimentConfig, split: Any, run_dir: Path) -> None:
        self.cfg, self.split, self.run_dir = cfg, split, Path(run_dir)
        w = cfg.train.weights
        self.weights = normalise_weights({"adv": w.adv, "seg": w.seg, "cyc": w.cyc})
        self.val_cases = val_case_list(split.val, cfg.train.val_cases)
        # annotated source cases translated at each validation (as many as validation cases)
        self.fidelity_cases = list(split.source_labeled[: max(1, len(self.val_cases))])
        self._step = 0
        self.disc_warmup = cfg.train.disc_warmup_steps
        if 0 < cfg.train.max_steps <= self.disc_warmup:  # e.g. a 2-step smoke run of the demo config
            log.warning(
                "translate: train.disc_warmup_steps=%d >= train.max_steps=%d, no warm-up "
                "(the generators would never train)",
                self.disc_warmup,
                cfg.train.max_steps,
            )
            self.disc_warmup = 0

    def adv_scale(self, step: int) -> float:
        """Factor on the generators' adversarial weight at optimiser step ``step`` (0-based):
        k/N at their k-th step of ``train.adv_ramp_steps`` = N, then 1."""
        ramp = self.cfg.train.adv_ramp_steps
        return min(1.0, (step - self.disc_warmup + 1) / ramp) if ramp else 1.0

    def wants_more_steps(self, best: dict[str, float]) -> bool:
        """``train.extend_fraction``: train on while the translation selected for synthesis renders the
        tumours with less than ``train.extend_until_contrast`` of the real target contrast (or no
        validation was selected yet). Needs no paired data: validation cases only. Without a ratio
        (no tumour to measure in the validation cases) more steps cannot tell: no extension."""
        if not best:
            return True
        ratio = best.get("contrast_ratio", math.nan)  # the trainer keeps finite metrics only
        return math.isfinite(ratio) and ratio < self.cfg.train.extend_until_contrast

    def batch_ids(self, batch: dict) -> list[str]:
        return paired_case_ids(batch)

    def model_factory(self, name: str) -> tuple[str, dict]:
        m = self.cfg.model
        if name == "gen":
            return (
                "hpc_modatts.train.translate:build_cycle_translators",
                {"size": m.translator_size, "pretrained": m.pretrained, "keep_background": m.keep_background},
            )
        return (
            "hpc_modatts.train.translate:build_discriminators",
            {
                "domains": [SOURCE, TARGET],
                "spatial_dims": 2,
                "channels": list(m.disc_channels),
                "scales": m.disc_scales,
            },
        )

    def build(self, env: Any) -> dict[str, nn.Module]:
        return {"gen": build_model(self.model_factory("gen")), "disc": build_model(self.model_factory("disc"))}

    def train_dataset(self) -> torch.utils.data.Dataset:
        d, s = self.cfg.data, self.split
        src = SliceDataset(
            d.store,
            s.source_train,
            s.source,
            annotated=set(s.source_labeled),
            size=d.slice_size,
            augment=d.augment,
            seed=self.cfg.train.seed,
            mask_name=region_array(d.region),
        )
        tgt = SliceDataset(
            d.store,
            s.target_train,
            s.target,
            annotated=set(),
            size=d.slice_size,
            augment=d.augment,
            seed=self.cfg.train.seed + 1,
        )
        return PairedDataset(src, tgt, SOURCE, TARGET)

    def train_step(self, batch: dict, engines: dict, step: int) -> dict[str, Any]:
        self._step = step + 1  # optimiser steps done after this one (the trainer counts from 0)
        gen, disc = engines["gen"], engines["disc"]
        x_s, x_t = batch[SOURCE]["image"], batch[TARGET]["image"]  # (B, 1, H, W)
        if step < self.disc_warmup:  # discriminators only, against the generators as they are
            with torch.no_grad():
                out = gen(x_s, x_t)
            return {"disc": self._discriminator_step(disc, x_s, x_t, out)}
        mask, has_mask = batch[SOURCE]["mask"], batch[SOURCE]["has_mask"].bool()
        out = gen(x_s, x_t)

        # generator update: discriminators frozen so their parameters get no gradient, and
        # called as plain modules (a DeepSpeed engine's forward hooks its outputs' backward to
        # that engine, which must not run inside the generator's engine.backward)
        d_net = unwrap(disc)
        d_net.requires_grad_(False)
        adv = hinge_g_loss(d_net(TARGET, out["s_to_t"])) + hinge_g_loss(d_net(SOURCE, out["t_to_s"]))
        cyc = l1(out["s_cycled"], x_s) + l1(out["t_cycled"], x_t)
        seg = dice_loss(out["seg_s"].float(), mask, has_mask) + dice_loss(
            out["seg_s_translated"].float(), mask, has_mask
        )
        w, scale = self.weights, self.adv_scale(step)
        loss = scale * w["adv"] * adv + w["cyc"] * cyc + w["seg"] * seg
        gen.backward(loss)
        gen.step()
        d_net.requires_grad_(True)
        d_loss = self._discriminator_step(disc, x_s, x_t, out)
        return {"loss": loss, "adv": adv, "cyc": cyc, "seg": seg, "disc": d_loss, "adv_scale": scale}

    def _discriminator_step(self, disc: Any, x_s: torch.Tensor, x_t: torch.Tensor, out: dict) -> torch.Tensor:
        """One discriminator update on detached translations (hinge, Eq. 5.1); returns its loss."""
        d_loss = hinge_d_loss(disc(TARGET, x_t), disc(TARGET, out["s_to_t"].detach())) + hinge_d_loss(
            disc(SOURCE, x_s), disc(SOURCE, out["t_to_s"].detach())
        )
        disc.backward(d_loss)
        disc.step()
        return d_loss

    # ------------------------------------------------------------------ validation
    def validate(self, engines: dict, env: Any) -> dict[str, float] | None:
        """Translation fidelity (``hpc_modatts.train.fidelity``) and slice-wise segmentation Dice;
        None without validation cases (no annotated target case, e.g. CrossMoDA): the last model is kept.

        * ``contrast_ratio``: tumour contrast of translated annotated SOURCE volumes over that of
          the real TARGET validation volumes; ``appearance``: 1 - W1(translated, real target) /
          W1(source, real target) on brain intensities (1 = distributed like the target, 0 = no
          closer than the untranslated source); ``score`` = their mean with the ratio capped at
          1: the checkpoint criterion (``select_on``), needs no paired data.
        * ``disc_accuracy`` / ``disc_auc``: the target discriminator on the real target validation
          slices vs the translated source slices, at its decision boundary / by ranking (0.5 = chance).
        * ``paired_corr`` / ``paired_mae``: validation cases that also hold the source modality
          (phantom, BraTS): translated vs the same case's real target. Reported, never selected on.
        * ``dice`` / ``dice_source``: G_seg^T(E_T(X_T)) on real target slices / G_seg^S on source.
        A panel (source / translated / cycled / predicted mask) goes to ``panels/step_N.png``.
        """
        if not self.val_cases:  # no annotated target case (CrossMoDA's hrT2): the last model is kept
            return None
        model, disc = unwrap(engines["gen"]), unwrap(engines["disc"])
        store = Store.open(self.cfg.data.store)
        device = env.device
        out = {"dice": self._slice_dice(store, model.segment_target, self.split.target, device)}
        if all(self.split.source in store.modalities(c) for c in self.val_cases):
            out["dice_source"] = self._slice_dice(store, model.segment_source, self.split.source, device)
        out.update(self._fidelity(store, model, disc, device))
        self._panel(store, model, device, write=env.is_main)  # forwards on every rank (ZeRO-3)
        return {k: v for k, v in out.items() if math.isfinite(v)}  # metrics.jsonl stays strict JSON

    def _fidelity(self, store: Any, model: CycleTranslators, disc: nn.Module, device: torch.device) -> dict:
        size, src, tgt = self.cfg.data.slice_size, self.split.source, self.split.target
        real_values, real_contrast, real_slices = [], [], []
        for case in self.val_cases:
            image, brain, mask = store.read_image(case, tgt), store.read_brain(case), store.read_mask(case)
            real_values.append(fidelity.brain_values(image, brain))
            if mask is not None:
                real_contrast.append(fidelity.tumour_contrast(image, mask, brain, store.attrs(case)["spacing"]))
            real_slices.append(brain_slices(image, brain, size))
        trans_values, src_values, trans_contrast, fake_slices = [], [], [], []
        for case in self.fidelity_cases:
            image, brain, mask = store.read_image(case, src), store.read_brain(case), store.read_mask(case)
            pseudo = translate_volume(model, image, brain, size, device, where=f"validation case {case!r}")
            trans_values.append(fidelity.brain_values(pseudo, brain))
            src_values.append(fidelity.brain_values(image, brain))
            trans_contrast.append(fidelity.tumour_contrast(pseudo, mask, brain, store.attrs(case)["spacing"]))
            fake_slices.append(brain_slices(pseudo, brain, size))
        real = np.concatenate(real_values)
        w_trans = fidelity.wasserstein(np.concatenate(trans_values), real)
        w_src = fidelity.wasserstein(np.concatenate(src_values), real)
        rc = [c for c in real_contrast if c is not None]
        tc = [c for c in trans_contrast if c is not None]
        ratio = float(np.mean(tc) / np.mean(rc)) if rc and tc and np.mean(rc) != 0 else float("nan")
        appearance = 1.0 - w_trans / w_src if w_src > 0 else 0.0
        out = {
            "contrast_ratio": ratio,
            "tumour_contrast": float(np.mean(tc)) if tc else float("nan"),
            "real_tumour_contrast": float(np.mean(rc)) if rc else float("nan"),
            "wasserstein": w_trans,
            "appearance": appearance,
            **fidelity.disc_separation(
                lambda x: disc(TARGET, x), np.concatenate(real_slices), np.concatenate(fake_slices), device
            ),
            "score": fidelity.selection_score(ratio, appearance),
        }
        paired = [c for c in self.val_cases if src in store.modalities(c)]
        if paired:
            rows = [
                fidelity.paired_fidelity(
                    translate_volume(model, store.read_image(c, src), store.read_brain(c), size, device),
                    store.read_image(c, tgt),
                    store.read_brain(c),
                )
                for c in paired
            ]
            out.update({k: float(np.mean([r[k] for r in rows])) for k in rows[0]})
        return out

    def _slice_dice(self, store: Any, segment: Any, modality: str, device: torch.device) -> float:
        size = self.cfg.data.slice_size
        scores = []
        for case in self.val_cases:
            mask = read_region(store, case, self.cfg.data.region)
            if mask is None:
                continue
            slices = fit_slices(store.read_image(case, modality), size, fill=-1.0)  # (Z, H, W)
            prob = map_slices(lambda x: torch.sigmoid(segment(x).float()), slices, device)
            truth = fit_slices(mask.astype(np.float32), size, fill=0.0)
            scores.append(dice_of(prob > 0.5, truth > 0.5))
        if not scores:
            raise DataError(f"{self.cfg.data.store}: no validation case of {self.val_cases[:5]} has a mask")
        return float(np.mean(scores))

    def _panel(self, store: Any, model: CycleTranslators, device: torch.device, write: bool) -> None:
        """Source / translated / cycled / predicted mask / true mask of one annotated source slice."""
        cases = self.split.source_labeled or self.split.source_train
        case = cases[0]
        image, mask = store.read_image(case, self.split.source), read_region(store, case, self.cfg.data.region)
        z = int(np.argmax(mask.sum(axis=(0, 1)))) if mask is not None else image.shape[2] // 2
        size = self.cfg.data.slice_size
        x = torch.from_numpy(fit_slices(image[:, :, z : z + 1], size, -1.0)[:, None]).to(device)
        translated = model.to_target(x)
        cycled = model.t2s.translate(model.t2s.encode(translated))
        pred = torch.sigmoid(model.segment_source(x).float())
        cols = {"source": x, "translated": translated, "cycled": cycled, "predicted mask": pred}
        cols = {k: v.float()[0, 0].cpu().numpy() for k, v in cols.items()}
        if mask is not None:
            cols["true mask"] = fit_slices(mask[:, :, z : z + 1].astype(np.float32), size, 0.0)[0]
        if write:
            from hpc_modatts.infer.panels import write_panel  # matplotlib: loaded only to draw

            write_panel(
                self.run_dir / "panels" / f"step_{self._step:08d}.png",
                cols,
                title=f"{case} z={z} ({self.split.source}->{self.split.target})",
            )


# ----------------------------------------------------------------------------- stage
def run(cfg: ExperimentConfig) -> Path:
    """Train the translator; returns ``<run_root>/<name>/translate`` (skips when DONE).

    With ``train.restarts`` a translation that ends below the contrast target is trained again from
    scratch (seed + k, in ``translate/restart_<k>/``) and DONE names the attempt synthesis uses.
    """
    cfg = stage_config(cfg, "translate")
    run_dir = stage_dir(cfg.run_dir, "translate")
    if is_done(run_dir):
        log.info("translate: %s is DONE, skipping", run_dir)
        return run_dir
    open_store(cfg.data.store)
    split = load_split(cfg, use_fold=False)  # one translator for every fold
    env = init_distributed(cfg.distributed)
    if cfg.train.restarts:
        selected = train_attempts(cfg, run_dir, env, lambda c, d: TranslateTask(c, split, d))
    else:
        Trainer(cfg, TranslateTask(cfg, split, run_dir), run_dir, env).fit()
        selected = run_dir
    if env.is_main:
        write_report(cfg, split, run_dir)
        warning = fidelity.translation_warning(selected_validation(selected, selected_step(selected)))
        if warning:
            log.warning("translate: %s", warning)
    return run_dir
