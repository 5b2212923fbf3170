"""Synthesis: pseudo-target 3D volumes from the source training volumes (thesis 5.5.1).

"Once the translation model was trained, 2D source slices were augmented into pseudo-target
images using the LAST state of the translation model. The latter were then assembled back to
constitute the synthetic target 3D volumes." We synthesise with the translator state that
stage 1 SELECTED instead (``best_model.pt``: the highest ``hpc_modatts.train.fidelity.
selection_score`` among its validations, which needs no paired data): after the thesis's 200
epochs the last state is a converged one, after a short schedule it is wherever the adversarial
game happens to be (documented in docs/results.md with the numbers of both).

Every axial slice of every ``split.source_train`` case is translated S->T (G_T(E_S(x))),
restacked into an (X, Y, Z) volume (background outside the brain kept at exactly -1) and
written to a Store of kind ``synthetic`` under the TARGET modality name, with the case's
attributes (geometry, hemisphere split, weak labels) and, for ``split.source_labeled`` cases
only, the source mask and labels (the annotated fraction stays what the split says).

Output: ``train.pseudo_target_store`` (default ``<translator_run>/synth.zarr``); marker
``DONE_synthesize`` in the translator run folder (``hpc_modatts.pipeline.dag.SYNTH_MARKER``),
recording the store path. Sharded over ranks (rank r translates cases r, r + world, ...); each
case is written atomically by ``Store.write_case`` and complete cases are skipped on rerun.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpc_modatts.config import ConfigError, ExperimentConfig, save_config, stage_config
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.inputs import load_split, open_store, require_done
from hpc_modatts.data.labels import REGIONS, region_array
from hpc_modatts.data.preprocess import normalise
from hpc_modatts.data.slices import fit_slices, map_slices, unfit_slices
from hpc_modatts.data.store import Store
from hpc_modatts.distributed.engine import autocast_context, use_bf16
from hpc_modatts.distributed.env import barrier, init_distributed, shard
from hpc_modatts.runs import DONE, mark_done, stage_dir, translator_dir
from hpc_modatts.train.best_model import BEST_MODEL, load_best_model

log = logging.getLogger(__name__)

MARKER = "DONE_synthesize"
_DROP_ATTRS = ("complete", "has_mask", "shape")


# ----------------------------------------------------------------------------- the translator
def load_translator(run_dir: str | Path) -> tuple[nn.Module, ExperimentConfig, int]:
    """The stage-1 translator selected by its run (``best_model.pt`` of ``translate/`` or of the
    restart its DONE marker names), eval mode: (model, config, step).

    ``load_best_model`` reads it weights-only with an allow-listed factory (docs/reliability.md);
    the step comes from the run's DONE marker (-1 when it has none or it is unreadable).
    """
    run_dir = Path(run_dir)
    model_dir = translator_dir(run_dir)  # translate/, or the restart its DONE marker selected
    if not (model_dir / BEST_MODEL).is_file():
        raise DataError(
            f"{model_dir}: no {BEST_MODEL} (the translator has not finished a validation); train the translator first"
        )
    model, cfg = load_best_model(model_dir, "gen")
    step = -1
    if (run_dir / DONE).is_file():
        try:
            step = int(json.loads((run_dir / DONE).read_text()).get("best_step", -1))
        except (OSError, ValueError, TypeError, AttributeError) as e:  # informational only
            log.warning("%s: unreadable DONE marker (%s); translator step unknown", run_dir / DONE, e)
    return model, cfg, step


# ----------------------------------------------------------------------------- one case
def translate_volume(
    model: nn.Module,
    image: np.ndarray,
    brain: np.ndarray,
    size: tuple[int, int],
    device: torch.device,
    batch: int = 16,
    where: str = "pseudo-target",
) -> np.ndarray:
    """(X, Y, Z) source volume -> (X, Y, Z) pseudo-target volume, -1 outside the brain.

    The restacked tanh outputs are normalised like every real volume of a store
    (``data.preprocess.normalise``: (v - mean) / (5 std) over the brain, clipped to [-1, 1]):
    stage 2 is validated and tested on real target volumes in that convention, and raw
    translations are not in it.
    """
    slices = fit_slices(image, size, fill=-1.0)  # (Z, H, W)
    translated = map_slices(model.to_target, slices, device, batch)  # (Z, H, W)
    volume = unfit_slices(translated, image.shape, fill=-1.0)  # (X, Y, Z)
    volume, _ = normalise(volume, brain > 0, where)  # -1 outside the brain
    return volume.astype(np.float32)


def synthesize_case(
    model: nn.Module,
    src: Any,
    out: Any,
    case: str,
    source: str,
    target: str,
    annotated: bool,
    size: tuple[int, int],
    device: torch.device,
    info: dict,
) -> None:
    """Translate one source case and write it (atomically) into the synthetic store."""
    image = src.read_image(case, source)
    brain = src.read_brain(case)
    pseudo = translate_volume(model, image, brain, size, device, where=f"{out.path}: case {case!r}")
    mask = src.read_mask(case) if annotated else None
    if annotated and mask is None:
        raise DataError(f"{src.path}: case {case!r} is in split.source_labeled but has no mask")
    labels = src.read_labels(case) if annotated else None
    names = set(src.array_names(case)) if annotated else set()  # tumour regions go along (data.region)
    regions = {n: src.read_array(case, n) for n in map(region_array, REGIONS[1:]) if n in names}
    attrs = {k: v for k, v in src.attrs(case).items() if k not in _DROP_ATTRS}
    attrs["synthetic"] = {"from": source, "to": target, **info}
    out.write_case(
        case, images={target: pseudo}, mask=mask, labels=labels, brain=brain, extra=regions or None, attrs=attrs
    )


# ----------------------------------------------------------------------------- stage
def paths(cfg: ExperimentConfig) -> tuple[Path, Path]:
    """(translator run folder, synthetic store) of ``cfg``."""
    translator_run = Path(cfg.train.translator_run or stage_dir(cfg.run_dir, "translate"))
    store = Path(cfg.train.pseudo_target_store or translator_run / "synth.zarr")
    return translator_run, store


def is_synthesized(cfg: ExperimentConfig) -> bool:
    """True when ``DONE_synthesize`` exists and names this config's synthetic store."""
    translator_run, store = paths(cfg)
    marker = translator_run / MARKER
    if not marker.is_file():
        return False
    return Path(json.loads(marker.read_text()).get("store", "")).resolve() == store.resolve()


def run(cfg: ExperimentConfig) -> Path:
    """Write the pseudo-target store; returns its path (skips when already DONE)."""
    cfg = stage_config(cfg, "synthesize")
    translator_run, out_path = paths(cfg)
    if is_synthesized(cfg):
        log.info("synthesize: %s is DONE, skipping", out_path)
        return out_path
    src = open_store(cfg.data.store)
    split = load_split(cfg, use_fold=False)  # every source_train case, for every fold
    require_done(translator_run, "translator run (train.translator_run)")
    env = init_distributed(cfg.distributed)
    model, tcfg, step = load_translator(translator_run)
    if tuple(tcfg.data.slice_size) != tuple(cfg.data.slice_size):
        log.warning(
            "synthesize: translator trained on %s slices, synthesising with %s",
            tcfg.data.slice_size,
            cfg.data.slice_size,
        )
    model.to(env.device)
    if env.is_main:  # one creator (removes stale temporary cases), then everyone opens it
        save_config(cfg, translator_run / "synthesize.yaml")
        Store.create(
            out_path,
            kind="synthetic",
            source=split.source,
            target=split.target,
            source_store=str(cfg.data.store),
            translator_run=str(translator_run),
        )
    barrier()
    out = Store.open(out_path)
    done = set(out.case_ids)
    labeled = set(split.source_labeled)
    info = {"translator_run": str(translator_run), "translator_step": step}
    todo = [c for c in shard(split.source_train, env.rank, env.world_size) if c not in done]
    log.info("synthesize: rank %d translates %d case(s) %s->%s", env.rank, len(todo), split.source, split.target)
    with torch.no_grad(), autocast_context(use_bf16(cfg.distributed, env.device), env.device):
        for case in todo:
            synthesize_case(
                model,
                src,
                out,
                case,
                split.source,
                split.target,
                case in labeled,
                cfg.data.slice_size,
                env.device,
                info,
            )
    barrier()
    if env.is_main:
        missing = sorted(set(split.source_train) - set(out.case_ids))
        if missing:
            raise DataError(f"{out_path}: {len(missing)} case(s) were not written: {missing[:5]}")
        mark_done(translator_run, MARKER, store=str(out_path), cases=len(split.source_train), translator_step=step)
    barrier()
    return out_path


def pseudo_target_store(cfg: ExperimentConfig) -> Path:
    """The synthetic store the segmentation stage reads; ConfigError when synthesis has not run."""
    translator_run, store = paths(cfg)
    if not (store / "zarr.json").is_file():
        raise ConfigError(
            f"pseudo-target store {store} does not exist: run `hpc-modatts synthesize` first "
            f"(or set train.pseudo_target_store)"
        )
    if not is_synthesized(cfg):
        raise ConfigError(
            f"pseudo-target store {store} is incomplete ({translator_run / MARKER} missing or "
            f"naming another store): rerun `hpc-modatts synthesize` (it resumes)"
        )
    return store
