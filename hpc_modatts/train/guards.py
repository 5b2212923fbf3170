"""Guards against degenerate segmenters: volumes that say whether a model's masks are plausible.

Validation Dice alone rewards a model that paints half the brain over one that predicts nothing,
and self-training then turns such a model's output into pseudo-labels that teach the next round
to paint even more. So every stage-2 validation and every pseudo-label round also measures
volumes, in ml (spacing-aware, so source and target stores of different grids compare):

* per validation case: the predicted and reference tumour volume and the predicted volume inside
  hemispheres weakly labelled healthy (A): all of it is false positive;
* the **plausibility bound** = ``train.max_volume_factor`` x the largest tumour annotated in the
  training data of the run (annotated source masks; real target masks where the split has them).
  A model whose prediction for any validation case exceeds the bound is *implausible*: the
  trainer never selects it as the best checkpoint. A pseudo-label round whose labels exceed it
  for any case stops with a one-line error naming the case (the model that made them is broken;
  training on them would amplify it).

Zeroing pseudo-labels in A hemispheres (``train.healthy_pseudo_labels: zero``) goes beyond the
thesis, which thresholds the probabilities only: the weak labels are part of the method's input
(thesis 5.4.2), so a tumour predicted in a hemisphere known to be healthy is known to be wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from hpc_modatts.data.errors import DataError
from hpc_modatts.data.labels import read_region
from hpc_modatts.infer.metrics import dice_of


def voxel_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in ml (spacing in mm)."""
    return float(np.prod([float(s) for s in spacing])) / 1000.0


def hemisphere_masks(shape: Sequence[int], split: int, weak: dict[str, str] | None) -> dict[str, np.ndarray]:
    """Boolean (X, Y, Z) masks of the hemispheres with weak label A (healthy), by side."""
    out = {}
    for side, sl in (("left", slice(0, split)), ("right", slice(split, None))):
        if (weak or {}).get(side) == "A":
            m = np.zeros(shape, bool)
            m[sl] = True
            out[side] = m
    return out


def zero_healthy(label: np.ndarray, split: int | None, weak: dict[str, str] | None) -> np.ndarray:
    """``label`` with every voxel of an A (healthy) hemisphere set to 0 (a copy)."""
    out = np.array(label, copy=True)
    if split is None:
        return out
    for side, sl in (("left", slice(0, split)), ("right", slice(split, None))):
        if (weak or {}).get(side) == "A":
            out[sl] = 0
    return out


def largest_annotated_ml(store: Any, cases: Iterable[str], region: str = "whole") -> float:
    """The largest ``region`` volume (ml) among the masks of ``cases`` in ``store`` (0 without any)."""
    largest = 0.0
    for case in cases:
        mask = read_region(store, case, region)
        if mask is not None:
            largest = max(largest, float(np.count_nonzero(mask)) * voxel_ml(store.attrs(case)["spacing"]))
    return largest


@dataclass(frozen=True)
class VolumeBound:
    """The plausibility bound: ``factor`` x ``largest_ml`` (the largest annotated tumour)."""

    factor: float
    largest_ml: float

    @property
    def limit_ml(self) -> float:
        return self.factor * self.largest_ml if self.largest_ml > 0 else math.inf

    def exceeded(self, volume_ml: float) -> bool:
        return volume_ml > self.limit_ml

    def check_pseudo_label(self, case: str, volume_ml: float, where: str) -> None:
        """One-line DataError when a pseudo-label is beyond the bound."""
        if self.exceeded(volume_ml):
            raise DataError(
                f"{where}: pseudo-label of case {case} is {volume_ml:.1f} ml, beyond "
                f"{self.factor:g} x the largest annotated tumour ({self.largest_ml:.1f} ml): "
                f"the model that made it is degenerate (train.max_volume_factor)"
            )


def case_volumes(
    pred: np.ndarray, ref: np.ndarray | None, spacing: Sequence[float], split: int | None, weak: dict[str, str] | None
) -> dict[str, float]:
    """Predicted / reference volume and predicted volume in A hemispheres (ml) of one case."""
    v = voxel_ml(spacing)
    p = np.asarray(pred) > 0
    out = {"pred_ml": float(np.count_nonzero(p)) * v}
    if ref is not None:
        out["ref_ml"] = float(np.count_nonzero(ref)) * v
    if split is not None:
        healthy = hemisphere_masks(p.shape, split, weak)
        out["fp_healthy_ml"] = float(sum(np.count_nonzero(p & m) for m in healthy.values())) * v
    return out


def summarise_volumes(rows: list[dict[str, float]], bound: VolumeBound) -> dict[str, float]:
    """Validation summary: means, the largest prediction, the volume ratio and ``plausible`` (1/0)."""
    pred = [r["pred_ml"] for r in rows]
    ref = [r["ref_ml"] for r in rows if "ref_ml" in r]
    fp = [r["fp_healthy_ml"] for r in rows if "fp_healthy_ml" in r]
    out = {
        "pred_ml": float(np.mean(pred)),
        "max_pred_ml": float(np.max(pred)),
        "limit_ml": bound.limit_ml if math.isfinite(bound.limit_ml) else -1.0,
        "plausible": float(not bound.exceeded(float(np.max(pred)))),
    }
    if ref:
        out["ref_ml"] = float(np.mean(ref))
        if np.mean(ref) > 0:
            out["volume_ratio"] = float(np.mean(pred) / np.mean(ref))
    if fp:
        out["fp_healthy_ml"] = float(np.mean(fp))
    return out


def validate_segmenter(
    predictor: Any,
    store: Any,
    cases: Sequence[str],
    modality: str,
    inferer: Any,
    threshold: float,
    bound: VolumeBound,
    device: Any,
    region: str = "whole",
) -> dict[str, float]:
    """Whole-volume Dice and the volume guards of a segmenter on validation cases (with masks).

    ``predictor``: (B, 1, *patch) -> probabilities (B, 1, *patch); ``inferer``: the run's
    ``VolumeInferer``; ``region``: the tumour region the model predicts (``data.region``), its
    reference read with ``hpc_modatts.data.labels.read_region``. Returns ``dice`` (mean),
    ``val_cases`` and ``summarise_volumes``' keys.
    """
    dices, rows = [], []
    for case in cases:
        mask = read_region(store, case, region)
        if mask is None:
            continue
        attrs = store.attrs(case)
        split = attrs.get("hemisphere_split")
        prob = inferer(predictor, store.read_image(case, modality), store.read_brain(case), split, device)[0]
        pred = prob > threshold
        dices.append(dice_of(pred, mask > 0))
        rows.append(case_volumes(pred, mask, attrs["spacing"], split, attrs.get("weak_labels")))
    if not dices:
        raise DataError(f"{store.path}: none of the validation cases {list(cases)[:5]} has a mask")
    return {"dice": float(np.mean(dices)), "val_cases": float(len(dices)), **summarise_volumes(rows, bound)}
