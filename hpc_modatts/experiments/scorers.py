"""Annotation-advisor scorers: how much would annotating one unannotated target case help?

A scorer maps what a run's models say about a case (``CaseEvidence``) to a ``Score`` (higher =
annotate first, with a one-line reason), or to None when the run lacks what it needs (one
fold, no self-training). ``SCORERS`` holds them by name; ``register`` adds one (the advisor and
its benchmark take any registered name).

Evidence, on the stored grid of the case:

* ``fold_probs``: the sigmoid probability map of each fold's final model (K >= 1);
* ``rounds``: per fold, the binary pseudo-labels of the self-training rounds in order
  (``round_i/pseudo_labels.zarr``), then the final model's own label at the same threshold
  (what the next round would use); empty without self-training;
* ``voxel_ml``: the volume of one voxel in ml.

Built in (each a known active-learning signal, computed here because it needs our runs'
layout; the Dice is MONAI's ``compute_dice``):

* ``disagreement`` (K >= 2): 1 - mean pairwise Dice of the folds' masks (p >= infer.threshold); folds
  trained on different cases disagree where the model is unsure (query by committee);
* ``instability`` (self-training): mean over folds and consecutive labels of 1 - Dice; a case
  whose pseudo-label keeps changing feeds every next round noise;
* ``volume``: std (ml) of the predicted tumour volume when the folds are a mixture of
  independent-voxel Bernoulli predictions: Var V = mean_k sum p_k (1 - p_k) + var_k sum p_k
  (law of total variance); large when many voxels are uncertain or the folds disagree on size.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from monai.metrics import compute_dice
from scipy.stats import rankdata


@dataclass
class CaseEvidence:
    """What the run's models say about one candidate case (arrays (X, Y, Z) on the stored grid)."""

    case: str
    fold_probs: list[np.ndarray]
    """Sigmoid probabilities of each fold's final model."""
    rounds: list[list[np.ndarray]] = field(default_factory=list)
    """Per fold: pseudo-labels of rounds 1..R, then the final model's label (bool/uint8)."""
    voxel_ml: float = 1e-3
    """Volume of one voxel in ml (mm^3 / 1000)."""
    threshold: float = 0.5
    """Probability at which a fold's mask is cut (the run's ``infer.threshold``)."""


@dataclass
class Score:
    value: float
    """Higher = annotate this case first."""
    reason: str
    """One line a researcher can read, with the numbers behind the value."""


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks, 1 when both are empty (MONAI ``compute_dice``, ``ignore_empty=False``)."""
    ta = torch.from_numpy(np.asarray(a) > 0)[None, None].float()  # (B=1, C=1, X, Y, Z)
    tb = torch.from_numpy(np.asarray(b) > 0)[None, None].float()
    return float(compute_dice(ta, tb, include_background=True, ignore_empty=False).item())


def disagreement(ev: CaseEvidence) -> Score | None:
    if len(ev.fold_probs) < 2:
        return None
    masks = [p >= ev.threshold for p in ev.fold_probs]
    d = float(np.mean([mask_dice(a, b) for a, b in itertools.combinations(masks, 2)]))
    return Score(1.0 - d, f"the {len(masks)} fold models' masks overlap with mean pairwise Dice {d:.2f}")


def instability(ev: CaseEvidence) -> Score | None:
    pairs = [(a, b) for seq in ev.rounds for a, b in zip(seq, seq[1:])]
    if not pairs:
        return None
    d = float(np.mean([mask_dice(a, b) for a, b in pairs]))
    return Score(
        1.0 - d, f"pseudo-labels change between self-training rounds (Dice {d:.2f} over {len(pairs)} round pair(s))"
    )


def volume(ev: CaseEvidence) -> Score | None:
    if not ev.fold_probs:
        return None
    p = [np.asarray(x, np.float64) for x in ev.fold_probs]
    means = np.array([x.sum() for x in p])
    var = float(np.mean([(x * (1.0 - x)).sum() for x in p]) + means.var())
    std_ml, mean_ml = math.sqrt(var) * ev.voxel_ml, float(means.mean()) * ev.voxel_ml
    return Score(std_ml, f"predicted tumour volume {mean_ml:.2f} ± {std_ml:.2f} ml")


SCORERS: dict[str, Callable[[CaseEvidence], Score | None]] = {
    "disagreement": disagreement,
    "instability": instability,
    "volume": volume,
}
"""Scorers by name; ``advise`` uses every applicable one unless told which."""


def register(name: str, scorer: Callable[[CaseEvidence], Score | None]) -> None:
    """Add (or replace) a scorer usable as ``--scorers NAME``."""
    SCORERS[name] = scorer


def rank_normalise(values: list[float]) -> list[float]:
    """Values -> [0, 1] by rank (ties share their mean rank), so scorers in different units combine."""
    if len(values) == 1:
        return [1.0]
    r = rankdata(values, method="average")
    return [float((x - 1) / (len(values) - 1)) for x in r]


def rank_cases(evidence: list[CaseEvidence], names: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """Score every case with every applicable scorer and rank them (best first).

    A scorer applies when it scores every case; its values are rank-normalised over the cases
    and the case's score is the mean over the applicable scorers. Returns the rows (case,
    score, per scorer raw value and normalised value, reason from the strongest scorers) and
    the scorers used. ValueError when an asked-for scorer is unknown or none applies.
    """
    names = list(names or SCORERS)
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise ValueError(f"unknown scorer {unknown[0]!r}; registered: {sorted(SCORERS)}")
    raw = {n: [SCORERS[n](ev) for ev in evidence] for n in names}
    used = [n for n in names if raw[n] and all(s is not None for s in raw[n])]
    if not used:
        raise ValueError(
            f"none of the scorers {names} applies to this run (one fold and no self-training leaves only 'volume')"
        )
    scores = {n: [s for s in raw[n] if s is not None] for n in used}  # every one is, for the used scorers
    norm = {n: rank_normalise([s.value for s in scores[n]]) for n in used}
    rows: list[dict[str, Any]] = []
    for i, ev in enumerate(evidence):
        parts = {n: norm[n][i] for n in used}
        strongest = sorted(used, key=lambda n: -parts[n])[:2]
        rows.append(
            {
                "case": ev.case,
                "score": float(np.mean(list(parts.values()))),
                **{f"{n}": scores[n][i].value for n in used},
                **{f"{n}_rank": parts[n] for n in used},
                "reason": "; ".join(scores[n][i].reason for n in strongest),
            }
        )
    rows.sort(key=lambda r: (-r["score"], r["case"]))
    for k, r in enumerate(rows, 1):
        r["rank"] = k
    return rows, used
