"""The evaluate pipeline node: ``evaluate-<variant>/`` from ``predict-<variant>/`` and the store.

``run(cfg)`` writes, for the split's test cases, the references (original label maps) and target
images in the predictions' geometry, then ``images/`` gets each case's pseudo-target (the case's
SOURCE image translated by the experiment's translator, when that run is DONE and the store has the
source modality for the case, as BraTS-like stores do) and links to the predict folder's GenSeg
extras (P->A healthy image, residual), so every panel shows what exists; then
``hpc_modatts.infer.evaluate.evaluate`` computes the metrics, with "% of target-supervised" when
that variant's evaluation exists and ``model_plausible`` from the training runs' DONE markers.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import nibabel as nib
import torch

from hpc_modatts.data.errors import DataError
from hpc_modatts.data.preprocess import to_original_geometry
from hpc_modatts.data.splits import Split
from hpc_modatts.data.store import Store
from hpc_modatts.infer.evaluate import evaluate
from hpc_modatts.infer.predict import EXTRAS
from hpc_modatts.runs import DONE, atomic_path, is_done, mark_done, read_json, stage_dir
from hpc_modatts.train.synthesize import load_translator, paths, translate_volume

log = logging.getLogger(__name__)


def run(cfg) -> Path:
    """Pipeline node: evaluate ``predict-<variant>`` on the split's test cases (target modality)."""
    v = cfg.train.variant
    out = stage_dir(cfg.run_dir, "evaluate", v)
    store = Store.open(cfg.data.store)
    split = Split.load(cfg.data.split, store=store)
    scheme = "binary"
    for case in split.test:  # references (original label maps) and target images on the predictions' grid
        attrs, mask, labels = store.attrs(case), store.read_mask(case), store.read_labels(case)
        if mask is None:
            raise DataError(f"case {case}: test case without a mask in {cfg.data.store}")
        if labels is not None and attrs.get("label_scheme"):
            mask, scheme = labels, attrs["label_scheme"]
        _save(to_original_geometry(mask, attrs, order=0), out / "reference" / f"{case}.nii.gz")
        _save(
            to_original_geometry(store.read_image(case, cfg.data.target), attrs, order=1, fill=-1.0),
            out / "images" / f"{case}.nii.gz",
        )
    pred = stage_dir(cfg.run_dir, "predict", v)
    write_pseudo_targets(cfg, store, split.source, split.test, out / "images")
    link_extras(pred, split.test, out / "images")
    ts = stage_dir(cfg.run_dir, "evaluate", "target-supervised") / "metrics.json"
    use_ts = v != "target-supervised" and ts.is_file()
    evaluate(
        pred,
        out / "reference",
        out,
        target_supervised=ts if use_ts else None,
        images=out / "images",
        region=cfg.data.region,
        labels=scheme,
        model_plausible=models_plausible(cfg.final_model_dirs(v)),
    )
    mark_done(out)
    return out


def models_plausible(run_dirs: Sequence[Path]) -> bool | None:
    """False when a model ``predict`` used had no plausible validation (its DONE says
    ``plausible: false``, ``Trainer.fit``); None when a run folder has no DONE (not ours to judge)."""
    markers = [Path(d) / DONE for d in run_dirs]
    if not all(m.is_file() for m in markers):
        return None
    return all(read_json(m, "is missing").get("plausible", True) for m in markers)


def write_pseudo_targets(cfg, store, source: str, cases: Sequence[str], folder: Path) -> list[str]:
    """Translate each case's ``source`` image with the experiment's translator (the checkpoint
    synthesis uses: ``load_translator``, the selected one) into
    ``folder/<case>_pseudo_target.nii.gz``, original geometry.

    Skipped (logged) when the translator run is not DONE or no case holds ``source``; returns the
    cases written.
    """
    translator_run, _ = paths(cfg)
    if not is_done(translator_run):
        log.info("evaluate: no finished translator run at %s; panels without pseudo-targets", translator_run)
        return []
    todo = [c for c in cases if source in store.modalities(c)]
    if not todo:
        log.info("evaluate: no test case holds the source modality %r; panels without pseudo-targets", source)
        return []
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _, step = load_translator(translator_run)
    model.to(device)
    with torch.no_grad():
        for case in todo:
            pseudo = translate_volume(
                model, store.read_image(case, source), store.read_brain(case), tuple(cfg.data.slice_size), device
            )  # (X, Y, Z), -1 outside the brain
            _save(
                to_original_geometry(pseudo, store.attrs(case), order=1, fill=-1.0),
                folder / f"{case}_pseudo_target.nii.gz",
            )
    log.info("evaluate: %d pseudo-target(s) from %s (step %d)", len(todo), translator_run, step)
    return todo


def link_extras(pred: Path, cases: Sequence[str], folder: Path) -> int:
    """Hard-link (copy across file systems) the predict folder's ``<case>_healthy/_residual`` into
    ``folder``; returns how many files were placed."""

    n = 0
    for case in cases:
        for name in EXTRAS:
            src, dst = pred / f"{case}_{name}.nii.gz", folder / f"{case}_{name}.nii.gz"
            if not src.is_file():
                continue
            with atomic_path(dst) as tmp:
                tmp.unlink()  # os.link needs a free name; atomic_path reserved it
                try:
                    os.link(src, tmp)
                except OSError:  # another file system, or links not allowed
                    shutil.copyfile(src, tmp)
            n += 1
    return n


def _save(img: nib.Nifti1Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
