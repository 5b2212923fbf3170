"""The annotation advisor's scorers and ranking on constructed evidence whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpc_modatts.experiments import scorers as sc
from hpc_modatts.experiments.scorers import CaseEvidence, rank_cases

SHAPE = (12, 12, 12)


def block(x0: int, x1: int, p: float = 0.95) -> np.ndarray:
    """Probability map: ``p`` inside a block of X in [x0, x1) (Y, Z 4..8), 0.02 elsewhere."""
    v = np.full(SHAPE, 0.02, np.float32)
    v[x0:x1, 4:8, 4:8] = p
    return v


def labels(*blocks: tuple[int, int]) -> list[np.ndarray]:
    return [block(a, b) > 0.5 for a, b in blocks]


def cases() -> dict[str, CaseEvidence]:
    return {
        # the folds agree and are sure; the pseudo-label never moved: nothing to learn here
        "confident": CaseEvidence("confident", [block(2, 6), block(2, 6)], [labels((2, 6), (2, 6), (2, 6))] * 2),
        # the folds put the tumour in different places, at p ~ 0.6; the pseudo-label jumps between rounds
        "ambiguous": CaseEvidence(
            "ambiguous",
            [block(0, 4, 0.6), block(6, 10, 0.6)],
            [labels((0, 4), (4, 8), (6, 10)), labels((6, 10), (0, 4), (2, 6))],
        ),
        # same place, different size: in between
        "size": CaseEvidence("size", [block(2, 6), block(2, 10)], [labels((2, 6), (2, 7), (2, 8))] * 2),
        # every fold confidently sees nothing: the committee cannot flag a confidently missed tumour
        "empty": CaseEvidence("empty", [np.full(SHAPE, 0.02, np.float32)] * 2, [[np.zeros(SHAPE, bool)] * 3] * 2),
    }


def test_each_scorer_orders_the_constructed_cases():
    ev = cases()
    dis = {k: sc.disagreement(e).value for k, e in ev.items()}
    assert dis["confident"] == pytest.approx(0.0) and dis["empty"] == pytest.approx(0.0)
    assert dis["ambiguous"] == pytest.approx(1.0)  # disjoint masks
    assert dis["size"] == pytest.approx(1 - 2 * 64 / (64 + 128), abs=1e-5)  # Dice of 4 vs 8 slabs
    ins = {k: sc.instability(e).value for k, e in ev.items()}
    assert ins["ambiguous"] > ins["size"] > ins["confident"] == pytest.approx(0.0)
    vol = {k: sc.volume(e).value for k, e in ev.items()}
    assert vol["size"] > vol["ambiguous"] > vol["confident"] > vol["empty"]  # folds disagreeing on SIZE count most
    assert "mean pairwise Dice 0.00" in sc.disagreement(ev["ambiguous"]).reason


def test_volume_std_is_the_mixture_variance_in_ml():
    p = np.zeros(SHAPE, np.float32)
    p[:4, :4, :4] = 0.5  # 64 voxels at 0.5: Bernoulli var 64 / 4 = 16
    one = sc.volume(CaseEvidence("a", [p], voxel_ml=0.064))
    assert one.value == pytest.approx(4.0 * 0.064)  # sqrt(16) voxels x 0.064 ml
    q = np.zeros(SHAPE, np.float32)  # a second fold seeing nothing: volumes 32 and 0
    two = sc.volume(CaseEvidence("a", [p, q], voxel_ml=1.0))
    assert two.value == pytest.approx(math.sqrt((16 + 0) / 2 + 16**2))  # mean Bernoulli var + var of means


def test_ranking_puts_the_informative_case_first_and_the_budget_is_a_prefix():
    rows, used = rank_cases(list(cases().values()))
    assert used == ["disagreement", "instability", "volume"]
    order = [r["case"] for r in rows]
    assert order[:2] == ["ambiguous", "size"] and set(order[2:]) == {"confident", "empty"}
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["score"] == pytest.approx((1 + 1 + 2 / 3) / 3)  # first on two scorers, second on volume
    assert rows[0]["disagreement_rank"] == 1.0 and "Dice" in rows[0]["reason"]


def test_scorers_that_do_not_apply_are_left_out_and_unknown_ones_refused():
    one_fold = [CaseEvidence(e.case, e.fold_probs[:1]) for e in cases().values()]  # no folds, no rounds
    rows, used = rank_cases(one_fold)
    assert used == ["volume"] and rows[0]["case"] == "ambiguous"
    with pytest.raises(ValueError, match="none of the scorers"):
        rank_cases(one_fold, ["disagreement"])
    with pytest.raises(ValueError, match="unknown scorer 'entropy'"):
        rank_cases(one_fold, ["entropy"])


def test_a_registered_scorer_is_used_by_name(monkeypatch):
    monkeypatch.setitem(sc.SCORERS, "alphabet", None)
    sc.register("alphabet", lambda ev: sc.Score(-ord(ev.case[0]), f"starts with {ev.case[0]}"))
    rows, used = rank_cases(list(cases().values()), ["alphabet"])
    assert used == ["alphabet"] and [r["case"] for r in rows] == ["ambiguous", "confident", "empty", "size"]
