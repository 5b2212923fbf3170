"""Self-training rounds after the segmentation stage (thesis 5.4.2 "Self-training", 5.5.1).

Round i (1..k, k = ``train.rounds``, 3 rounds of 150 epochs in the paper):

1. predict tumour probabilities on every unannotated target training volume with the best
   model of the previous step (round 1: ``train.init_from`` or the segment run of the same
   variant/fold; round i > 1: round i-1) with THE inferer (``hpc_modatts.infer.inferer``) and
   threshold them at ``train.alpha`` (0.6) into pseudo-labels Y_pl^{i-1}, written to
   ``<round dir>/pseudo_labels.zarr`` (array ``pseudo_label`` per case, Store kind
   ``pseudo_labels``; sharded over ranks, resumable). Guards (``hpc_modatts.train.guards``):
   labels in hemispheres weakly labelled healthy are zeroed (``train.healthy_pseudo_labels``),
   every case's volume is recorded (attributes, ``pseudo_labels.json``, the log) and a label
   beyond the plausibility bound stops the round with a one-line error;
2. fine-tune that model with L_ST = L_init + lambda_st * Dice(Y_pl^{i-1}, prediction)
   (Eq. 5.13; lambda_st = lambda_seg^pT when ``train.weights.st`` is -1).

Every round has its own run folder ``segment-<variant>/fold_<k>/round_<i>`` and DONE marker;
finished rounds are skipped. ``train.round = i`` runs only round i (one pipeline job per round).
Target cases with real masks (``split.target_labeled``) keep them (weight ``seg_t``) and get no
pseudo-labels. ``hpc-modatts train self-train CONFIG [train.rounds=K]``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpc_modatts.config import ConfigError, ExperimentConfig, replace_cfg, stage_config
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.inputs import load_split, open_store, require_done
from hpc_modatts.data.store import Store
from hpc_modatts.distributed.engine import autocast_context, use_bf16
from hpc_modatts.distributed.env import barrier, init_distributed, shard
from hpc_modatts.infer.inferer import inferer_from_config
from hpc_modatts.runs import DONE, atomic_path, atomic_write_json, is_done, read_json, stage_dir
from hpc_modatts.train.best_model import BEST_MODEL, load_best_model
from hpc_modatts.train.guards import voxel_ml, zero_healthy
from hpc_modatts.train.segment import make_task, volume_bound
from hpc_modatts.train.segment_task import SelfTrainingRound
from hpc_modatts.train.trainer import Trainer

log = logging.getLogger(__name__)

PSEUDO_LABEL = "pseudo_label"
_DROP_ATTRS = ("complete", "has_mask", "shape")


def round_dir(cfg: ExperimentConfig, i: int) -> Path:
    return stage_dir(cfg.run_dir, "self-train", cfg.train.variant, cfg.data.fold, round_=i)


def init_dir(cfg: ExperimentConfig, i: int, explicit: bool) -> Path:
    """The run whose best model round ``i`` starts from (and predicts pseudo-labels with)."""
    if explicit and cfg.train.init_from:
        return Path(cfg.train.init_from)
    if i == 1:
        return stage_dir(cfg.run_dir, "segment", cfg.train.variant, cfg.data.fold)
    return round_dir(cfg, i - 1)


# ----------------------------------------------------------------------------- pseudo-labels
def pseudo_label_case(
    model: torch.nn.Module,
    store: Any,
    case: str,
    modality: str,
    inferer: Any,
    alpha: float,
    device: torch.device,
    healthy: str = "zero",
) -> np.ndarray:
    """(X, Y, Z) uint8 pseudo-label: probabilities > alpha inside the brain; A hemispheres zeroed
    when ``healthy`` is "zero"."""
    attrs = store.attrs(case)
    brain = store.read_brain(case)
    split = attrs.get("hemisphere_split")
    prob = inferer(lambda p: torch.sigmoid(model(p).float()), store.read_image(case, modality), brain, split, device)[0]
    label = ((prob > alpha) & (brain > 0)).astype(np.uint8)
    if healthy == "zero":
        label = zero_healthy(label, split, attrs.get("weak_labels"))
    return label


def make_pseudo_labels(cfg: ExperimentConfig, cases: list[str], model_dir: Path, out_path: Path, env: Any) -> Path:
    """Predict + threshold every case into a ``pseudo_labels`` store; skips complete cases."""
    src = open_store(cfg.data.store)
    split = load_split(cfg)
    bound = volume_bound(cfg, split)
    inferer = inferer_from_config(cfg)
    where = f"self-training round {cfg.train.round} ({out_path})"
    if env.is_main:
        Store.create(
            out_path, kind="pseudo_labels", alpha=cfg.train.alpha, model_run=str(model_dir), modality=cfg.data.target
        )
    barrier()
    out = Store.open(out_path)
    todo = [c for c in shard(cases, env.rank, env.world_size) if c not in set(out.case_ids)]
    if todo:
        model, _ = load_best_model(model_dir, "gen")
        model.to(env.device)
        with torch.no_grad(), autocast_context(use_bf16(cfg.distributed, env.device), env.device):
            for case in todo:
                label = pseudo_label_case(
                    model,
                    src,
                    case,
                    cfg.data.target,
                    inferer,
                    cfg.train.alpha,
                    env.device,
                    cfg.train.healthy_pseudo_labels,
                )
                attrs = {k: v for k, v in src.attrs(case).items() if k not in _DROP_ATTRS}
                volume = float(label.sum()) * voxel_ml(attrs["spacing"])
                log.info("%s: case %s pseudo-label %.1f ml (bound %.1f ml)", where, case, volume, bound.limit_ml)
                bound.check_pseudo_label(case, volume, where)
                attrs["pseudo_label"] = {
                    "alpha": cfg.train.alpha,
                    "model_run": str(model_dir),
                    "foreground_voxels": int(label.sum()),
                    "volume_ml": volume,
                    "healthy_hemispheres": cfg.train.healthy_pseudo_labels,
                }
                out.write_case(case, images={}, extra={PSEUDO_LABEL: label}, attrs=attrs)
    barrier()
    done = Store.open(out_path)
    missing = sorted(set(cases) - set(done.case_ids))
    if missing:
        raise DataError(f"{out_path}: pseudo-labels missing for {len(missing)} case(s): {missing[:5]}")
    if env.is_main:
        volumes = {c: done.attrs(c)["pseudo_label"]["volume_ml"] for c in cases}
        atomic_write_json(
            Path(out_path).parent / "pseudo_labels.json",
            {
                "alpha": cfg.train.alpha,
                "limit_ml": bound.limit_ml,
                "largest_annotated_ml": bound.largest_ml,
                "healthy_hemispheres": cfg.train.healthy_pseudo_labels,
                "volume_ml": volumes,
            },
        )
        log.info(
            "%s: %d pseudo-labels, %.1f ml mean, %.1f ml max",
            where,
            len(volumes),
            float(np.mean(list(volumes.values()))),
            max(volumes.values()),
        )
    return out_path


# ----------------------------------------------------------------------------- rounds
def run_round(cfg: ExperimentConfig, i: int, explicit: bool) -> Path:
    """Self-training round ``i``: pseudo-labels from the previous model, then fine-tuning."""
    run_dir = round_dir(cfg, i)
    prev = require_done(init_dir(cfg, i, explicit), f"round {i}: model to start from")
    if is_done(run_dir):
        log.info("self-train: round %d %s is DONE, skipping", i, run_dir)
        if cfg.train.keep_better_model:  # idempotent: completes a decision a crash interrupted
            keep_better_model(run_dir, prev, init_distributed(cfg.distributed).is_main, cfg.train.keep_better_margin)
        return run_dir
    if not (prev / BEST_MODEL).is_file():
        raise ConfigError(f"round {i}: {prev} has no {BEST_MODEL} to start from")
    pl_path = (
        Path(cfg.train.pseudo_labels) if (explicit and cfg.train.pseudo_labels) else run_dir / "pseudo_labels.zarr"
    )
    cfg_i = replace_cfg(cfg, round=i, init_from=str(prev), pseudo_labels=str(pl_path))
    task = make_task(cfg_i, run_dir, SelfTrainingRound(init_from=prev, pseudo_labels=pl_path))
    unannotated = [c for c in task.split.target_train if c not in task.target_labeled]
    if not unannotated:
        raise ConfigError("self-training needs unannotated target cases; every target_train case is annotated")
    env = init_distributed(cfg.distributed)
    make_pseudo_labels(cfg_i, unannotated, prev, pl_path, env)
    Trainer(cfg_i, task, run_dir, env=env).fit()
    if cfg.train.keep_better_model:
        keep_better_model(run_dir, prev, env.is_main, cfg.train.keep_better_margin)
    return run_dir


def keep_better_model(run_dir: Path, prev: Path, is_main: bool, margin: float = 0.0) -> bool:
    """If the finished round ``run_dir`` validated more than ``margin`` below ``prev`` (the run it
    started from), make its best model a copy of ``prev``'s and record it in its DONE; True when it did.

    Both scores are the runs' selected validations (DONE ``best_score``, same cases and metric);
    an implausible round (DONE ``plausible`` false) counts as worse than a plausible start.
    Every step is atomic and the decision is taken again from the two DONE markers, so a rerun
    after a crash between the copy and the marker completes it.
    """
    done, before = read_json(run_dir / DONE, "is missing"), read_json(prev / DONE, "is missing")
    if "model_from" in done:
        return done["model_from"] != str(run_dir)
    new, old = done.get("best_score"), before.get("best_score")
    if before.get("model_from", str(prev)) != str(prev):  # prev itself handed on an earlier model
        old = before.get("start_score")
    worse = (
        old is not None
        and before.get("plausible", True)
        and (not done.get("plausible", True) or new is None or new < old - margin)
    )
    if is_main:
        if worse:
            with atomic_path(run_dir / BEST_MODEL) as tmp:
                shutil.copyfile(prev / BEST_MODEL, tmp)
            log.warning(
                "self-train: %s validated %s, more than %.2f below the %.3f of the model it started from: "
                "keeping that model",
                run_dir.name,
                "nothing plausible" if new is None else f"{new:.3f}",
                margin,
                old,
            )
        extra = {"model_from": str(prev if worse else run_dir), "round_score": new, "start_score": old}
        if worse:  # the model handed on is prev's: so is its plausibility (evaluate reads it here)
            extra |= {"plausible": before.get("plausible", True), "round_plausible": done.get("plausible", True)}
        atomic_write_json(run_dir / DONE, {**done, **extra})
    barrier()
    return bool(worse)


def run(cfg: ExperimentConfig) -> Path:
    """Run the self-training rounds (all of them, or only ``train.round``); returns the last round's folder."""
    cfg = stage_config(cfg, "self-train")
    single = cfg.train.round > 0
    rounds = [cfg.train.round] if single else list(range(1, cfg.train.rounds + 1))
    # an explicit init_from / pseudo_labels applies to the first round run here only
    last = run_round(cfg, rounds[0], explicit=True)
    for i in rounds[1:]:
        last = run_round(cfg, i, explicit=False)
    return last
