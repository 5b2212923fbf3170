"""Stage 2: 3D tumour segmentation on the target modality (thesis 5.4.2, 5.5.1).

Variants (``train.variant``):

* ``self-supervised``: MedFormer E + G_seg trained with soft Dice on the pseudo-target volumes
  of synthesis (L_seg^pT, Eq. 5.5).
* ``semi-supervised``: GenSeg on REAL target half-volumes with A/P weak labels, plus L_seg^pT
  (Eq. 5.6-5.12): P->A X_PA = G_com(c_P), X_PP = X_PA + G_res(c_P, u_P); A->P X_AA = G_com(c_A),
  X_AP = X_AA + G_res(c_A, u ~ N(0, I)); hinge adversarial with two 3D discriminators (X_A vs
  X_PA, X_P vs X_AP), L_rec = |X_AA - X_A| + |X_PP - X_P|, L_lat (re-encoded X_PA and X_AP keep
  c; u_AP matches the sampled u). Pseudo-target images are excluded from the GenSeg terms.
* ``source-supervised`` (lower bound, no adaptation): Dice on real SOURCE volumes with masks.
* ``target-supervised`` (upper bound): Dice on real target volumes, every target_train mask.

Both MoDATTS variants add Dice on real annotated target volumes when ``split.target_labeled``
is not empty (``train.weights.seg_t``) and, in self-training rounds, Dice on the pseudo-labels
(``lambda_st``, Eq. 5.13; see ``self_training``). Active weights are normalised to sum 1.
Validation: whole-volume Dice on the target validation cases with THE inferer
(``hpc_modatts.infer.inferer``: hemisphere by hemisphere, as training saw them) plus the volume
guards of ``hpc_modatts.train.guards`` (predicted vs reference volume, false positives in healthy
hemispheres); the trainer keeps the best plausible model.
``hpc-modatts train segment CONFIG [train.variant=...]``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from hpc_modatts.config import ConfigError, ExperimentConfig
from hpc_modatts.data.labels import region_array
from hpc_modatts.distributed.engine import unwrap
from hpc_modatts.infer.inferer import inferer_from_config
from hpc_modatts.train import common
from hpc_modatts.train.guards import VolumeBound, largest_annotated_ml, validate_segmenter
from hpc_modatts.train.task import TaskDefaults
from hpc_modatts.train.translate import DiscriminatorPair

log = logging.getLogger(__name__)

MODATTS_VARIANTS = ("self-supervised", "semi-supervised")
A, P = "A", "P"


class KeyedDataset(Dataset):
    """Wrap a dataset so that its items come as ``{key: item}`` (same batch layout as pairs)."""

    def __init__(self, dataset: Dataset, key: str) -> None:
        self.dataset, self.key = dataset, key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {self.key: self.dataset[i]}

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def annotated_cases(cfg: ExperimentConfig, split: Any) -> list[str]:
    """The cases whose masks a variant trains on (all in ``data.store``)."""
    if cfg.train.variant == "target-supervised":
        return list(split.target_train)
    return list(dict.fromkeys([*split.source_labeled, *split.target_labeled]))


def volume_bound(cfg: ExperimentConfig, split: Any) -> VolumeBound:
    """``train.max_volume_factor`` x the largest tumour (``data.region``) the variant trains on (guards)."""
    from hpc_modatts.data.store import Store

    largest = largest_annotated_ml(Store.open(cfg.data.store), annotated_cases(cfg, split), cfg.data.region)
    return VolumeBound(cfg.train.max_volume_factor, largest)


def build_discriminators_3d(channels: list[int], scales: int) -> DiscriminatorPair:
    """The GenSeg discriminators (Table 5.1 with 3D kernels): "A" (X_A vs X_PA), "P" (X_P vs X_AP)."""
    return DiscriminatorPair((A, P), 3, tuple(channels), scales)


def _zero(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A zero that keeps every tensor in the graph (same backward on every rank)."""
    return sum(t.sum() for t in tensors) * 0.0


def _masked_l1(a: torch.Tensor, b: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """Mean |a - b| over the selected samples (sel: (B,) bool); a graph-keeping 0 when none."""
    if not sel.any():
        return _zero([a])
    return (a[sel] - b[sel]).abs().mean()


def _pick(logits: list[torch.Tensor], sel: torch.Tensor) -> list[torch.Tensor] | None:
    return [scale[sel] for scale in logits] if sel.any() else None


class SegmentTask(TaskDefaults):
    """Stage-2 Task for every variant; self-training rounds add ``pseudo_labels`` + ``init_from``."""

    name = "segment"

    def __init__(self, cfg: ExperimentConfig, split: Any, run_dir: Path, synth_store: Path | None = None,
                 init_from: Path | None = None, pseudo_labels: Path | None = None) -> None:
        self.cfg, self.split, self.run_dir = cfg, split, Path(run_dir)
        self.variant = cfg.train.variant
        self.synth_store, self.init_from, self.pseudo_labels = synth_store, init_from, pseudo_labels
        if self.variant in MODATTS_VARIANTS and synth_store is None:
            raise ConfigError(f"train.variant={self.variant} needs the pseudo-target store of synthesis")
        self.genseg = self.variant == "semi-supervised"
        self.target_labeled = set(split.target_labeled)
        self.weights = self._weights()
        self.val_cases = common.val_case_list(split.val, cfg.train.val_cases)
        self.inferer = inferer_from_config(cfg)
        self.bound = volume_bound(cfg, split)
        if pseudo_labels is not None:
            self.name = "self-train"

    # ------------------------------------------------------------------ set-up
    def _weights(self) -> dict[str, float]:
        from hpc_modatts.losses import normalise_weights

        w = self.cfg.train.weights
        if self.variant not in MODATTS_VARIANTS:
            return {"seg": 1.0}
        raw = {"seg_pt": common.resolve_seg_pt(self.cfg, self.split),
               "seg_t": w.seg_t if self.target_labeled else 0.0,
               "st": common.resolve_st(self.cfg, self.split) if self.pseudo_labels else 0.0}
        if self.genseg:
            raw.update(adv=w.adv, rec=w.rec, lat=w.lat)
        return {k: v for k, v in normalise_weights(raw).items() if v > 0}

    def batch_ids(self, batch: dict) -> list[str]:
        return common.paired_batch_ids(batch)

    def model_factory(self, name: str) -> tuple[str, dict]:
        m = self.cfg.model
        if name == "gen":
            return ("hpc_modatts.models:build_segmenter",
                    {"size": m.segmenter_size, "genseg": self.genseg, "common_fraction": m.common_fraction,
                     "separate_seg_decoder": m.separate_seg_decoder})
        return ("hpc_modatts.train.segment:build_discriminators_3d",
                {"channels": list(m.disc_channels), "scales": m.disc_scales})

    def build(self, env: Any) -> dict[str, nn.Module]:
        from hpc_modatts.models import apply_activation_checkpointing

        models = {"gen": common.build_from(self.model_factory("gen"))}
        if self.genseg:
            models["disc"] = common.build_from(self.model_factory("disc"))
        if self.init_from is not None:  # self-training: start from the previous best (thesis 5.4.2)
            self._load_init(models)
        if self.cfg.model.checkpointing:
            apply_activation_checkpointing(models["gen"], list(self.cfg.model.checkpointing))
        return models

    def _load_init(self, models: dict[str, nn.Module]) -> None:
        from hpc_modatts.train.checkpoint import BEST_MODEL, load_weights

        assert self.init_from is not None
        payload = load_weights(Path(self.init_from) / BEST_MODEL)
        for name, model in models.items():
            if name not in payload["models"]:
                raise ConfigError(f"train.init_from={self.init_from}: best model has no {name!r} "
                                  f"(has {sorted(payload['models'])}); was it trained with the same variant?")
            model.load_state_dict(payload["models"][name])

    # ------------------------------------------------------------------ data
    def train_dataset(self) -> Dataset:
        from hpc_modatts.data.loaders import VolumeDataset

        d, s, seed = self.cfg.data, self.split, self.cfg.train.seed

        def volumes(store, cases, modality, annotated, offset, **kw) -> VolumeDataset:
            return VolumeDataset(store, cases, modality, patch_size=d.patch_size, half=d.half_volumes,
                                 annotated=set(annotated), augment=d.augment, seed=seed + offset,
                                 mask_name=region_array(d.region), **kw)

        if self.variant == "source-supervised":
            return KeyedDataset(volumes(d.store, s.source_labeled, s.source, s.source_labeled, 0), "sup")
        if self.variant == "target-supervised":
            return KeyedDataset(volumes(d.store, s.target_train, s.target, s.target_train, 0), "sup")
        pt = volumes(self.synth_store, s.source_labeled, s.target, s.source_labeled, 0)
        real_cases = s.target_train if (self.genseg or self.pseudo_labels) else s.target_labeled
        if not real_cases:
            return KeyedDataset(pt, "pt")
        extra = {"extra_mask": "pseudo_label", "extra_store": self.pseudo_labels} if self.pseudo_labels else {}
        real = volumes(d.store, real_cases, s.target, s.target_labeled, 1, **extra)
        return common.PairedDataset(pt, real, "pt", "real")

    def check_data(self) -> None:
        """One-line errors for variants whose data is missing."""
        s = self.split
        if self.variant == "source-supervised" and not s.source_labeled:
            raise ConfigError("train.variant=source-supervised: the split has no annotated source case")
        if self.variant in MODATTS_VARIANTS and not s.source_labeled:
            raise ConfigError(f"train.variant={self.variant}: the split has no annotated source case "
                              f"(split.source_labeled is empty), so no pseudo-target masks")
        if self.genseg and not s.target_train:
            raise ConfigError("train.variant=semi-supervised needs real target cases (split.target_train is empty)")
        if self.variant == "target-supervised":
            from hpc_modatts.data.store import Store

            store = Store.open(self.cfg.data.store)
            bare = [c for c in s.target_train if store.mask(c) is None]
            if bare:
                raise ConfigError(f"train.variant=target-supervised needs masks on every target_train case; "
                                  f"{len(bare)} have none in {store.path} (e.g. {bare[:3]})")

    # ------------------------------------------------------------------ step
    def train_step(self, batch: dict, engines: dict, step: int) -> dict[str, Any]:
        dice_loss = common.pooled_dice_loss  # healthy hemispheres count (see its docstring)
        gen = engines["gen"]
        if "sup" in batch:
            loss = dice_loss(gen(batch["sup"]["image"]).float(), batch["sup"]["mask"], batch["sup"]["has_mask"])
            gen.backward(loss)
            gen.step()
            return {"loss": loss, "seg": loss}
        w, terms = self.weights, {}
        pt = batch["pt"]
        terms["seg_pt"] = dice_loss(gen(pt["image"]).float(), pt["mask"], pt["has_mask"])
        real = batch.get("real")  # always there for GenSeg (check_data: target_train is not empty)
        outputs: dict = {}
        if self.genseg:
            assert real is not None
            outputs = self._genseg_terms(real, engines, terms)
        elif real is not None:
            outputs = {"real_logits": gen(real["image"])}
        if real is not None and ("seg_t" in w or "st" in w):
            self._real_dice_terms(real, outputs["real_logits"], terms)
        loss = sum(w[k] * v for k, v in terms.items() if k in w)
        gen.backward(loss)
        gen.step()
        logged = {"loss": loss, **terms}
        if self.genseg:
            assert real is not None
            logged["disc"] = self._disc_step(real, outputs, engines["disc"])
        return logged

    def _real_dice_terms(self, real: dict, logits: torch.Tensor, terms: dict) -> None:
        """Dice on real target volumes: true masks (seg_t) and pseudo-labels (st) apart."""
        dice_loss = common.pooled_dice_loss

        has = real["has_mask"].bool().reshape(-1)
        true = torch.tensor([c in self.target_labeled for c in real["case"]], device=has.device)
        if "seg_t" in self.weights:
            terms["seg_t"] = dice_loss(logits.float(), real["mask"], has & true)
        if "st" in self.weights:
            terms["st"] = dice_loss(logits.float(), real["mask"], has & ~true)

    def _genseg_terms(self, real: dict, engines: dict, terms: dict) -> dict:
        """GenSeg on the real batch (Eq. 5.6-5.11), every sample down both paths so that every
        rank runs the same forwards (ZeRO-3); the per-sample weak label selects the terms."""
        from hpc_modatts.losses import hinge_g_loss

        net, disc = unwrap(engines["gen"]), unwrap(engines["disc"])  # plain modules: see translate.py
        x = real["image"]                                                 # (B, 1, X, Y, Z)
        is_p, is_a = real["weak"].reshape(-1) == 1, real["weak"].reshape(-1) == 0  # (B,)
        c, u, skips = net.encode(x)
        u_rand = net.sample_u(u)
        u_mix = torch.where(is_p.view(-1, *[1] * (u.ndim - 1)), u, u_rand)  # u_P for P, N(0,I) for A
        x_com = net.decode_common(c, skips)           # X_PA (P samples) / X_AA (A samples)
        x_res = x_com + net.decode_residual(c, u_mix, skips)  # X_PP (P) / X_AP (A)
        terms["rec"] = _masked_l1(x_com, x, is_a) + _masked_l1(x_res, x, is_p)
        c_com, _, _ = net.encode(x_com)               # re-encode X_PA: keeps c_P
        c_res, u_res, _ = net.encode(x_res)           # re-encode X_AP: keeps c_A, u_AP = u
        terms["lat"] = (_masked_l1(c_com, c, is_p) + _masked_l1(c_res, c, is_a)
                        + _masked_l1(u_res, u_rand, is_a))
        common.set_requires_grad(disc, False)
        fake_a, fake_p = disc(A, x_com), disc(P, x_res)
        g_a, g_p = _pick(fake_a, is_p), _pick(fake_p, is_a)
        terms["adv"] = ((hinge_g_loss(g_a) if g_a else _zero(fake_a)) + (hinge_g_loss(g_p) if g_p else _zero(fake_p)))
        common.set_requires_grad(disc, True)
        wants_real_seg = "seg_t" in self.weights or "st" in self.weights
        real_logits = net.decode_segmentation(c, u, skips) if wants_real_seg else None
        return {"x_com": x_com.detach(), "x_res": x_res.detach(), "is_a": is_a, "is_p": is_p,
                "real_logits": real_logits}

    def _disc_step(self, real: dict, out: dict, disc: Any) -> torch.Tensor:
        """Hinge update of both discriminators: X_A vs X_PA ("A"), X_P vs X_AP ("P")."""
        from hpc_modatts.losses import hinge_d_loss

        x, is_a, is_p = real["image"], out["is_a"], out["is_p"]
        real_a, real_p = disc(A, x), disc(P, x)
        fake_a, fake_p = disc(A, out["x_com"]), disc(P, out["x_res"])
        loss = _zero(real_a + real_p + fake_a + fake_p)
        if is_a.any() and is_p.any():  # each pair needs a real A and a real P sample
            loss = loss + hinge_d_loss(_pick(real_a, is_a), _pick(fake_a, is_p))
            loss = loss + hinge_d_loss(_pick(real_p, is_p), _pick(fake_p, is_a))
        disc.backward(loss)
        disc.step()
        return loss

    # ------------------------------------------------------------------ validation
    def validate(self, engines: dict, env: Any) -> dict[str, float] | None:
        """Whole-volume Dice of ``data.region`` + volume guards on the target validation cases (every
        rank, same cases); None without validation cases (no annotated target case, e.g. CrossMoDA):
        the last model is kept."""
        from hpc_modatts.data.store import Store

        if not self.val_cases:
            return None
        gen = engines["gen"]
        return validate_segmenter(lambda p: torch.sigmoid(gen(p).float()), Store.open(self.cfg.data.store),
                                  self.val_cases, self.split.target, self.inferer, self.cfg.infer.threshold,
                                  self.bound, env.device, region=self.cfg.data.region)


# ----------------------------------------------------------------------------- stage
def run(cfg: ExperimentConfig) -> Path:
    """Train one variant on one fold; returns ``segment-<variant>/fold_<k>`` (skips when DONE)."""
    from hpc_modatts.runs import is_done, stage_dir
    from hpc_modatts.train.trainer import Trainer

    cfg = common.stage_config(cfg, "segment")
    run_dir = stage_dir(cfg.run_dir, "segment", cfg.train.variant, cfg.data.fold)
    if is_done(run_dir):
        log.info("segment: %s is DONE, skipping", run_dir)
        return run_dir
    task = make_task(cfg, run_dir)
    return Trainer(cfg, task, run_dir).fit()


def make_task(cfg: ExperimentConfig, run_dir: Path, init_from: Path | None = None,
              pseudo_labels: Path | None = None) -> SegmentTask:
    """The SegmentTask of ``cfg`` with its inputs checked (store, split, pseudo-target store)."""
    from hpc_modatts.train.synthesize import pseudo_target_store

    common.open_store(cfg.data.store)
    split = common.load_split(cfg)
    synth = pseudo_target_store(cfg) if cfg.train.variant in MODATTS_VARIANTS else None
    task = SegmentTask(cfg, split, run_dir, synth, init_from=init_from, pseudo_labels=pseudo_labels)
    task.check_data()
    return task
