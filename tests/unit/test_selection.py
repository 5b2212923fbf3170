"""The Trainer's checkpoint selection (``train.selection.BestValidation``) on hand-made validations."""

from __future__ import annotations

import math

from hpc_modatts.train.selection import BestValidation


def test_the_best_is_the_highest_plausible_score_and_an_implausible_one_is_only_counted():
    best = BestValidation(select_on="dice")
    assert not best.found and best.score_or_none is None and best.step == -1
    assert best.consider({"dice": 0.3, "volume": 10.0}, 50, "t")
    # a higher score from a model the guards reject: counted, never selected
    assert not best.consider({"dice": 0.9, "plausible": 0.0}, 100, "t")
    assert not best.consider({"dice": 0.3}, 150, "t")  # a tie keeps the earlier step
    assert best.consider({"dice": 0.5, "plausible": 1.0, "hd95": math.inf}, 200, "t")
    assert (best.score, best.step, best.implausible) == (0.5, 200, 1)
    assert best.metrics == {"dice": 0.5, "plausible": 1.0}  # non-finite metrics are not kept


def test_the_state_round_trips_and_reads_checkpoints_written_before_select_on():
    best = BestValidation(select_on="score")
    best.consider({"score": 0.7, "contrast_ratio": 0.65}, 300, "t")
    best.consider({"score": 0.8, "plausible": 0.0}, 450, "t")
    again = BestValidation(select_on="score")
    again.load(best.state())
    assert again == best
    old = BestValidation()
    old.load({"best_dice": 0.4, "best_step": 20})  # a trainer.json of version 0.1
    assert (old.score, old.step, old.implausible, old.metrics) == (0.4, 20, 0, {})
    never = BestValidation()
    never.load({"best_score": None, "best_step": -1, "implausible_validations": 3})
    assert not never.found and never.implausible == 3
