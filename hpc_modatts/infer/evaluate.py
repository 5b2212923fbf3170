"""Evaluate predicted masks against references: Dice, HD95 and ASSD (mm) per case.

``hpc-modatts evaluate --pred DIR --ref DIR [--target-supervised DIR|JSON] [--images DIR] -o OUT``

Folders hold one NIfTI per case, ``<case>.nii.gz`` (or ``.nii``); ``<case>_prob.nii.gz``
probability maps and ``<case>_healthy`` / ``_residual`` / ``_pseudo_target`` images (written by
``predict --extras``) in the prediction folder are not cases. Predictions are binarised (> 0);
references are label maps read with a label scheme (``--labels``; none: > 0 is tumour) and
reduced to the evaluated region (``--region`` whole | core | enhancing, ``hpc_modatts.data.labels``),
which the table and metrics.json name. Metrics come from MONAI (``DiceMetric``,
``HausdorffDistanceMetric(percentile=95)``, ``SurfaceDistanceMetric(symmetric=True)``) with the
voxel spacing from the NIfTI header, so
distances are in mm (thesis 5.5.2, Table 5.3).

Empty masks (MONAI returns nan/inf with a warning for them), the BraTS convention:
* both empty: Dice 1, HD95 0, ASSD 0 (a perfect answer), note ``both empty``;
* one empty: Dice 0, HD95 = ASSD = the image diagonal in mm (``hpc_modatts.infer.metrics.max_distance``: the largest
  distance possible in the volume; 373.13 mm for BraTS' 240x240x155 1 mm grid, the value the
  BraTS evaluation uses), note ``empty prediction`` or ``empty reference``. These cases count
  in the means (leaving them out would reward a model that predicts nothing on hard cases);
  the summary reports how many there are (``one_side_empty``).

Every case is read and checked (3D, readable, same grid) before anything is written; metrics.json
is strict JSON (a NaN would be written as null).

Outputs in OUT: ``metrics.csv``, ``metrics.json`` (per case + mean/std, and "% of
target-supervised" = mean Dice / the target-supervised run's mean Dice), ``panels/<case>.png``.

The pipeline node that calls ``evaluate`` (references and images from the store, the
pseudo-targets, the GenSeg extras) is ``hpc_modatts.infer.evaluate_node``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.table import Table

from hpc_modatts.console import log_console
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.labels import REGION_NAMES, REGIONS, LabelScheme, detect_scheme, get_scheme
from hpc_modatts.data.nifti_size import check_nifti_size
from hpc_modatts.infer.metrics import case_metrics
from hpc_modatts.runs import (
    atomic_write_json,
    atomic_write_text,
)

log = logging.getLogger(__name__)

METRICS = ("dice", "hd95", "assd")
IMAGE_NAMES = ("pseudo_target", "healthy", "residual")
"""Optional extra images in ``--images``: ``<case>_<name>.nii.gz`` (``<case>.nii.gz`` = target)."""
NOT_CASES = ("_prob",) + tuple(f"_{n}" for n in IMAGE_NAMES)
"""Stems ending like this in a prediction/reference folder are per-case extras, not cases."""


# ----------------------------------------------------------------------------- metrics
def summarise(rows: list[dict]) -> dict:
    """Mean/std (nan-aware) and the number of cases counted, per metric; ``one_side_empty``:
    how many cases have an empty prediction or reference (their distances are the maximum)."""
    out: dict = {}
    for m in METRICS:
        v = np.array([r[m] for r in rows], float)
        ok = v[~np.isnan(v)]
        out[m] = {
            "mean": float(ok.mean()) if ok.size else float("nan"),
            "std": float(ok.std()) if ok.size else float("nan"),
            "n": int(ok.size),
        }
    out["one_side_empty"] = sum(r["note"] in ("empty prediction", "empty reference") for r in rows)
    return out


# ----------------------------------------------------------------------------- inputs
def nifti_cases(folder: str | os.PathLike, what: str) -> dict[str, Path]:
    """``{case: path}`` of the ``<case>.nii[.gz]`` files of a folder (not ``*_prob`` or extras)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist")
    cases = {}
    for p in sorted(folder.iterdir()):
        name = p.name
        stem = name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else None
        if stem and not stem.endswith(NOT_CASES) and not stem.startswith("."):
            cases[stem] = p
    if not cases:
        raise DataError(f"{what} folder {folder} holds no <case>.nii.gz files")
    return cases


def check_pairs(pred: dict[str, Path], ref: dict[str, Path]) -> list[str]:
    """Same case sets and the same grid (shape, affine) per case; DataError naming a case."""
    only_pred, only_ref = sorted(set(pred) - set(ref)), sorted(set(ref) - set(pred))
    if only_pred or only_ref:
        case, where = (only_pred[0], "prediction only") if only_pred else (only_ref[0], "reference only")
        raise DataError(
            f"case {case}: present in the {where} ({len(only_pred)} prediction-only, "
            f"{len(only_ref)} reference-only cases)"
        )
    for case in sorted(pred):
        a, b = _header(pred[case]), _header(ref[case])
        if a.shape[:3] != b.shape[:3]:
            raise DataError(f"case {case}: prediction shape {a.shape[:3]} != reference shape {b.shape[:3]}")
        if not np.allclose(a.affine, b.affine, atol=1e-3):
            raise DataError(f"case {case}: prediction and reference affines differ ({pred[case].name})")
    return sorted(pred)


def _header(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(path)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for a bad file
        raise DataError(f"{path}: not a readable NIfTI ({e})") from None


def read_label_map(path: Path, what: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A whole (X, Y, Z) label map as stored and its voxel spacing; DataError naming the file
    when it is forged, truncated or not 3D (a trailing singleton 4th axis is dropped)."""
    check_nifti_size(path, what)
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # noqa: BLE001 - nibabel/gzip/zlib raise many types for a broken file
        raise DataError(f"{path}: cannot read {what} NIfTI ({type(e).__name__}: {e})".replace("\n", " ")) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: {what} must be a 3D mask, got shape {list(data.shape)} ({data.ndim}D)")
    zooms = img.header.get_zooms()
    return data, (float(zooms[0]), float(zooms[1]), float(zooms[2]))


def read_mask(path: Path, what: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``read_label_map`` as bool (> 0)."""
    data, spacing = read_label_map(path, what)
    return data > 0, spacing


def target_supervised_dice(path: str | os.PathLike) -> float:
    """Mean Dice of a target-supervised evaluation (its metrics.json, or the folder holding it)."""
    p = Path(path)
    p = p / "metrics.json" if p.is_dir() else p
    try:
        return float(json.loads(p.read_text())["summary"]["dice"]["mean"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{p}: not an evaluation metrics.json with summary.dice.mean") from None


# ----------------------------------------------------------------------------- API
def evaluate(
    pred: str | os.PathLike,
    ref: str | os.PathLike,
    out: str | os.PathLike,
    target_supervised: str | os.PathLike | None = None,
    images: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    panels: bool = True,
    console: Console | None = None,
    region: str = "whole",
    labels: str | None = None,
    model_plausible: bool | None = None,
) -> Path:
    """Evaluate every case of ``pred`` against ``ref``; write CSV/JSON/panels in ``out``.

    ``images``: folder(s) searched in order for ``<case>.nii.gz`` (target) and ``<case>_<name>``
    (``IMAGE_NAMES``); the first folder holding a file wins. ``region``: the tumour region the
    predictions are of; ``labels``: the references' label scheme (None: > 0 is tumour for the
    whole tumour, detected from the reference values for core / enhancing). ``model_plausible``
    (pipeline node): False when the predicting model's training had no plausible validation
    (``Trainer``: DONE ``plausible``), recorded in the summary so tables can mark the row.
    """
    if region not in REGIONS:
        raise DataError(f"--region {region!r} must be one of {', '.join(REGIONS)}")
    pred_cases, ref_cases = nifti_cases(pred, "prediction"), nifti_cases(ref, "reference")
    cases = check_pairs(pred_cases, ref_cases)
    scheme = reference_scheme([ref_cases[c] for c in cases], region, labels, ref)
    ts_dice = target_supervised_dice(target_supervised) if target_supervised else None
    out = Path(out)
    rows = []
    for case in cases:  # read and check every case before the first file is written
        p, _ = read_mask(pred_cases[case], "prediction")  # (X, Y, Z) in the file's own voxel order
        labels_r, spacing = read_label_map(ref_cases[case], "reference")
        r = reference_mask(labels_r, scheme, region, ref_cases[case])
        voxel_ml = float(np.prod(spacing)) / 1000.0
        rows.append(
            {
                "case": case,
                **case_metrics(p, r, spacing),
                "pred_ml": float(p.sum()) * voxel_ml,
                "ref_ml": float(r.sum()) * voxel_ml,
            }
        )
    if panels:
        from hpc_modatts.infer.panels import save_panel  # matplotlib: loaded only when panels are drawn

        for case in cases:
            p = read_mask(pred_cases[case], "prediction")[0]
            r = reference_mask(read_label_map(ref_cases[case], "reference")[0], scheme, region, ref_cases[case])
            extra = _case_images(_folders(images), case, p.shape)
            save_panel(out / "panels" / f"{case}.png", case, extra, p, r)
    summary = summarise(rows)
    # predicted vs reference tumour volume (ml): a model that paints the brain shows here first
    summary["volume_ml"] = {
        "pred": float(np.mean([r["pred_ml"] for r in rows])),
        "ref": float(np.mean([r["ref_ml"] for r in rows])),
    }
    if model_plausible is not None:
        summary["model_plausible"] = model_plausible
    result = {
        "pred": str(pred),
        "ref": str(ref),
        "region": region,
        "labels": "nonzero" if scheme is None else scheme.name,
        "cases": rows,
        "summary": summary,
    }
    if ts_dice:
        result["percent_of_target_supervised"] = 100.0 * summary["dice"]["mean"] / ts_dice
    atomic_write_text(out / "metrics.csv", _csv(rows, summary))
    atomic_write_json(out / "metrics.json", result)
    print_table(result, console)
    return out


def reference_scheme(paths: list[Path], region: str, labels: str | None, where) -> LabelScheme | None:
    """The references' label scheme: ``labels``, None (> 0) for the whole tumour, else detected
    from the label values of every reference (one line naming them when ambiguous)."""
    if labels:
        return get_scheme(labels)
    if region == "whole":
        return None
    values = set()
    for p in paths:
        values |= {int(v) for v in np.unique(read_label_map(p, "reference")[0])}  # size-checked first
    return detect_scheme(values, "manifest", f"{where} (--region {region})", region=region)[0]


def reference_mask(labels: np.ndarray, scheme: LabelScheme | None, region: str, path: Path) -> np.ndarray:
    """The region of a reference label map (> 0 without a scheme); values outside the scheme: one line."""
    if scheme is None:
        return labels > 0
    if scheme.allowed is not None:
        bad = sorted({int(v) for v in np.unique(labels)} - set(scheme.allowed))
        if bad:
            raise DataError(
                f"{path}: reference label values {bad} are not in --labels {scheme.name} "
                f"(allowed {list(scheme.allowed)})"
            )
    return scheme.region_mask(labels, region) > 0


def _folders(images) -> list[Path]:
    if not images:
        return []
    return [Path(images)] if isinstance(images, (str, os.PathLike)) else [Path(f) for f in images]


def _case_images(folders: list[Path], case: str, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``{name: (X, Y, Z) float32}`` of the images of ``case`` found in ``folders`` (first hit wins)."""
    found = {}
    for name, fname in [("target", f"{case}")] + [(n, f"{case}_{n}") for n in IMAGE_NAMES]:
        hits = [f / f"{fname}{ext}" for f in folders for ext in (".nii.gz", ".nii")]
        for p in hits:
            if p.is_file():
                try:
                    check_nifti_size(p, name)
                    vol = np.asanyarray(nib.load(p).dataobj).astype(np.float32)
                except Exception as e:  # noqa: BLE001 - a panel decoration: skip it, say why
                    why = str(e).splitlines()[0] if str(e) else type(e).__name__
                    log.warning("%s: unreadable (%s); not drawn", p, why)
                    break
                if vol.shape[:3] == shape:
                    found[name] = vol
                else:
                    log.warning("%s: shape %s differs from the mask's %s; not drawn", p, vol.shape, shape)
                break
    return found


def _csv(rows: list[dict], summary: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", *METRICS, "note"])
    for r in rows:
        w.writerow([r["case"], *(f"{r[m]:.6g}" for m in METRICS), r["note"]])
    for stat in ("mean", "std"):
        w.writerow([stat, *(f"{summary[m][stat]:.6g}" for m in METRICS), ""])
    return buf.getvalue()


def print_table(result: dict, console: Console | None = None) -> None:
    region = result.get("region", "whole")
    table = Table(
        title=f"evaluation of {result['pred']}: {REGION_NAMES[region]} ({result.get('labels', 'nonzero')} labels)"
    )
    for col in ("case", "Dice", "HD95 (mm)", "ASSD (mm)", "note"):
        table.add_column(col)
    for r in result["cases"]:
        table.add_row(r["case"], *(f"{r[m]:.4f}" for m in METRICS), r["note"])
    s = result["summary"]
    table.add_row(
        "[bold]mean ± std",
        *(f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}" for m in METRICS),
        f"n = {s['dice']['n']}"
        + (f", {s['one_side_empty']} with one mask empty (max distance)" if s.get("one_side_empty") else ""),
    )
    log_console(console).print(table)
    if "percent_of_target_supervised" in result:
        log_console(console).print(f"Dice = {result['percent_of_target_supervised']:.1f} % of target-supervised")
