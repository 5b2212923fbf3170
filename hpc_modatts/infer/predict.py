"""Predict tumour masks: sliding-window inference, fold ensembling, NIfTI in the original geometry.

``hpc-modatts predict --run RUN [--run RUN2 ...] --input NIFTI_DIR|STORE --out DIR``

* The best model of every run (``best_model.pt``, ``hpc_modatts.train.best_model``) is loaded;
  several runs (the folds) form an ensemble: the mean of their sigmoid probabilities.
* Each stored volume (canonical RAS, normalised) goes through THE inferer
  (``hpc_modatts.infer.inferer.VolumeInferer``, settings from the run's ``infer`` config): models
  trained on hemispheres see each hemisphere alone, centred in a training-size window with the
  other side at the background value, exactly like their training patches; the two halves are
  pasted back together. Validation and pseudo-labels use the same inferer.
* Masks = probability >= ``infer.threshold`` (0.5), written as uint8 NIfTI in each input's ORIGINAL grid
  (``to_original_geometry``); ``--probabilities`` adds float32 ``<case>_prob.nii.gz``.
* ``--extras`` (GenSeg runs, on in the pipeline): per case also the P->A healthy image
  X_PA = G_com(c) (``<case>_healthy.nii.gz``) and the tumour residual G_res(c, u)
  (``<case>_residual.nii.gz``), the ensemble mean of the same sliding windows as the masks
  (thesis 5.4.2: x = G_com(c) + G_res(c, u)); float32 in the original geometry, outside the
  stored crop -1 for the image and 0 for the residual. Plain models have no such decoders:
  the extras are skipped (logged once).
* A NIfTI folder is first converted into a temporary store with the preprocessing recorded in
  the training store (layout, spacing, crop), so the model sees what it was trained on.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch

from hpc_modatts.config import ExperimentConfig
from hpc_modatts.data.convert import convert
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.preprocess import to_original_geometry
from hpc_modatts.data.splits import Split
from hpc_modatts.data.store import Store
from hpc_modatts.infer.inferer import VolumeInferer, inferer_from_config
from hpc_modatts.runs import atomic_path, is_done, mark_done, stage_dir
from hpc_modatts.train.best_model import load_best_model

log = logging.getLogger(__name__)


def check_runs(runs: Sequence[str | os.PathLike]) -> list[Path]:
    """Every run must be finished (DONE) and hold ``best_model.pt``; DataError naming the first bad one."""
    if not runs:
        raise DataError("no --run given: name at least one finished training run folder")
    out = []
    for r in runs:
        r = Path(r)
        if not is_done(r) or not (r / "best_model.pt").is_file():
            raise DataError(f"run {r} has no finished model (needs DONE and best_model.pt)")
        out.append(r)
    return out


def load_models(runs: list[Path], device: torch.device) -> tuple[list[torch.nn.Module], ExperimentConfig]:
    """The runs' best models (eval mode, on ``device``) and the first run's config."""
    models, cfgs = [], []
    for r in runs:
        model, cfg = load_best_model(r, "gen")
        models.append(model.to(device).eval())
        cfgs.append(cfg)
    patches = {tuple(c.data.patch_size) for c in cfgs}
    if len(patches) > 1:
        raise DataError(f"runs {[str(r) for r in runs]} were trained with different patch sizes {sorted(patches)}")
    return models, cfgs[0]


EXTRAS = ("healthy", "residual")
"""Extra GenSeg outputs written by ``predict(..., extras=True)``: ``<case>_<name>.nii.gz``."""
EXTRA_FILL = {"healthy": -1.0, "residual": 0.0}  # outside the stored crop: image background / no residual


def is_genseg(model: torch.nn.Module) -> bool:
    """True for GenSeg-wired models (``hpc_modatts.models.genseg``): encode + common/residual decoders."""
    return all(
        callable(getattr(model, a, None)) for a in ("encode", "decode_common", "decode_residual", "decode_segmentation")
    )


def genseg_outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (B, 1, X, Y, Z) -> (B, 3, X, Y, Z): sigmoid probability, healthy G_com(c), residual G_res(c, u).

    One encoding feeds the three decoders (thesis 5.4.2), so a window costs one encoder pass.
    """
    c, u, skips = model.encode(x)
    prob = torch.sigmoid(model.decode_segmentation(c, u, skips))  # (B, 1, X, Y, Z)
    healthy = model.decode_common(c, skips)  # (B, 1, X, Y, Z) in [-1, 1]
    residual = model.decode_residual(c, u, skips)  # (B, 1, X, Y, Z) in [-1, 1]
    return torch.cat([prob, healthy, residual], dim=1)


def ensemble(
    models: list[torch.nn.Module],
    inferer: VolumeInferer,
    image: np.ndarray,
    brain: np.ndarray,
    split: int | None,
    predictor,
    out_fill: Sequence[float],
) -> np.ndarray:
    """Mean over ``models`` of the inferer's ``predictor(model, window)`` outputs: -> (C, X, Y, Z)."""
    if not models:
        raise ValueError("ensemble() needs at least one model")
    device = next(models[0].parameters()).device

    def run(model: torch.nn.Module) -> np.ndarray:
        return inferer(lambda t: predictor(model, t), image, brain, split, device, out_fill)

    total = run(models[0])
    for model in models[1:]:
        total = total + run(model)
    return total / len(models)


def predict_case(
    models: list[torch.nn.Module], inferer: VolumeInferer, store, case: str, modality: str, extras: bool = False
) -> dict[str, np.ndarray]:
    """Ensemble outputs of one stored case: {"prob"} (+ "healthy", "residual" with ``extras``), (X, Y, Z)."""
    attrs = store.attrs(case)
    image, brain, split = store.read_image(case, modality), store.read_brain(case), attrs.get("hemisphere_split")
    if extras:
        out = ensemble(
            models, inferer, image, brain, split, genseg_outputs, (0.0, EXTRA_FILL["healthy"], EXTRA_FILL["residual"])
        )  # (3, X, Y, Z)
        return {"prob": out[0], "healthy": out[1], "residual": out[2]}
    return {"prob": ensemble(models, inferer, image, brain, split, lambda m, t: torch.sigmoid(m(t).float()), (0.0,))[0]}


def _is_store(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def _training_preprocessing(cfg) -> dict:
    """Preprocessing options recorded in the training store (defaults when it is not reachable)."""
    try:
        return dict(Store.open(cfg.data.store).root_attrs.get("preprocessing") or {})
    except DataError:
        log.warning("training store %s not readable: converting with default preprocessing", cfg.data.store)
        return {}


def open_input(input_: Path, work: Path, cfg, layout: str | None, modality: str):
    """The input as a Store: opened as is, or a NIfTI folder converted into ``work``."""
    if not input_.exists():
        raise DataError(f"input {input_} does not exist")
    if _is_store(input_):
        return Store.open(input_)
    pre = _training_preprocessing(cfg)
    path = convert(
        input_,
        work / "input.zarr",
        layout=layout or pre.get("layout") or "auto",
        spacing=pre.get("spacing"),
        crop=pre.get("crop"),
        crop_margin=pre.get("crop_margin", 2),
        labels=pre.get("labels") or "auto",
        resample_to=pre.get("resample_to"),
        modalities=[modality],
        progress=False,
    )
    return Store.open(path)


def _save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _save_float(volume: np.ndarray, attrs: dict, path: Path, fill: float = 0.0) -> None:
    """A float (X, Y, Z) stored-grid volume as float32 NIfTI in the original geometry (linear interpolation)."""
    img = to_original_geometry(volume.astype(np.float32), attrs, order=1, fill=fill)
    _save_nifti(nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine), path)


def predict(
    runs: Sequence[str | os.PathLike],
    input: str | os.PathLike,
    out: str | os.PathLike,
    probabilities: bool = False,
    layout: str | None = None,
    modality: str | None = None,
    cases: Sequence[str] | None = None,
    extras: bool = False,
) -> Path:
    """Predict every case (or ``cases``) of ``input`` with the ensemble of ``runs``; returns ``out``.

    ``extras``: also write ``<case>_healthy`` / ``<case>_residual`` (GenSeg runs only; see module doc).
    """
    run_dirs = check_runs(runs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models, cfg = load_models(run_dirs, device)
    if extras and not all(is_genseg(m) for m in models):
        log.info("predict: --extras skipped, the runs are not GenSeg models (no healthy/residual decoders)")
        extras = False
    modality = modality or cfg.data.target
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".predict-", dir=out))
    try:
        store = open_input(Path(input), work, cfg, layout, modality)
        todo = list(cases) if cases is not None else store.case_ids
        for case in todo:  # check everything before the first (slow) inference
            if case not in store.case_ids:
                raise DataError(f"case {case} is not in {store.path}")
            if modality not in store.modalities(case):
                raise DataError(f"case {case}: no {modality} image in {store.path} (has {store.modalities(case)})")
        inferer = inferer_from_config(cfg)
        for case in todo:
            attrs = store.attrs(case)
            outputs = predict_case(models, inferer, store, case, modality, extras)
            prob = outputs["prob"]
            if extras:
                for name in EXTRAS:
                    _save_float(outputs[name], attrs, out / f"{case}_{name}.nii.gz", fill=EXTRA_FILL[name])
            mask = (prob >= cfg.infer.threshold).astype(np.uint8)
            _save_nifti(to_original_geometry(mask, attrs, order=0), out / f"{case}.nii.gz")
            if probabilities:
                _save_float(prob, attrs, out / f"{case}_prob.nii.gz")
            log.info("predicted %s (%d tumour voxels)", case, int(mask.sum()))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if created and not any(out.iterdir()):  # nothing predicted: leave no empty folder behind
            out.rmdir()
        raise
    shutil.rmtree(work, ignore_errors=True)
    return out


def run(cfg) -> Path:
    """Pipeline node: ensemble of the variant's fold models on the split's test cases (+ GenSeg extras)."""
    out = stage_dir(cfg.run_dir, "predict", cfg.train.variant)
    split = Split.load(cfg.data.split, store=cfg.data.store)
    predict(
        cfg.final_model_dirs(cfg.train.variant),
        cfg.data.store,
        out,
        modality=cfg.data.target,
        cases=split.test,
        extras=True,
    )
    mark_done(out)
    return out
