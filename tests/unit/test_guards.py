"""Guards against degenerate segmenters: plausibility bound, healthy hemispheres, selection."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hpc_modatts.data.errors import DataError
from hpc_modatts.runs import DONE, mark_done
from hpc_modatts.train.best_model import BEST_MODEL
from hpc_modatts.train.guards import (
    VolumeBound,
    case_volumes,
    summarise_volumes,
    voxel_ml,
    zero_healthy,
)
from hpc_modatts.train.self_training import keep_better_model


def _case(shape=(40, 20, 20), split=20):
    brain = np.zeros(shape, bool)
    brain[2:38, 2:18, 2:18] = True
    ref = np.zeros(shape, bool)
    ref[25:30, 8:12, 8:12] = True  # an 80-voxel tumour in the right hemisphere
    return brain, ref, split, {"left": "A", "right": "P"}


def test_half_brain_prediction_is_rejected():
    brain, ref, split, weak = _case()
    spacing = (4.0, 4.0, 4.0)
    bound = VolumeBound(3.0, largest_ml=float(ref.sum()) * voxel_ml(spacing))
    half = brain.copy()
    half[:split] = False  # "tumour" in the whole right hemisphere
    rows = [case_volumes(half, ref, spacing, split, weak)]
    summary = summarise_volumes(rows, bound)
    assert summary["plausible"] == 0.0
    assert summary["volume_ratio"] > 3
    good = summarise_volumes([case_volumes(ref, ref, spacing, split, weak)], bound)
    assert good["plausible"] == 1.0 and good["volume_ratio"] == pytest.approx(1.0)


def test_false_positives_in_healthy_hemispheres_are_measured():
    brain, ref, split, weak = _case()
    pred = ref.copy()
    pred[5:7, 5:7, 5:7] = True  # 8 voxels in the healthy (A) left hemisphere
    v = case_volumes(pred, ref, (1.0, 1.0, 1.0), split, weak)
    assert v["fp_healthy_ml"] == pytest.approx(8 / 1000)
    assert v["pred_ml"] == pytest.approx((ref.sum() + 8) / 1000)


def test_pseudo_labels_in_healthy_hemispheres_are_zeroed():
    brain, ref, split, weak = _case()
    label = brain.astype(np.uint8)  # positive everywhere in the brain
    out = zero_healthy(label, split, weak)
    assert out[:split].sum() == 0  # A (left): zero
    assert np.array_equal(out[split:], label[split:])  # P (right): untouched
    assert label[:split].sum() > 0  # the input is not modified


def test_pseudo_label_beyond_the_bound_is_refused():
    bound = VolumeBound(3.0, largest_ml=10.0)
    bound.check_pseudo_label("case_a", 29.9, "round 1")
    with pytest.raises(DataError, match="case_b is 31.0 ml, beyond 3 x the largest annotated tumour"):
        bound.check_pseudo_label("case_b", 31.0, "round 1")


def test_no_annotation_means_no_bound():
    assert math.isinf(VolumeBound(3.0, 0.0).limit_ml)
    assert not VolumeBound(3.0, 0.0).exceeded(1e9)


def _finished_run(folder, model: bytes, **done) -> object:
    folder.mkdir(parents=True)
    (folder / BEST_MODEL).write_bytes(model)
    mark_done(folder, **done)
    return folder


@pytest.mark.parametrize("round_score, kept", [(0.59, True), (0.81, False), (None, True)])
def test_a_round_that_validates_worse_hands_on_the_model_it_started_from(tmp_path, round_score, kept):
    prev = _finished_run(tmp_path / "fold_0", b"round 0 weights", best_score=0.79, plausible=True)
    plausible = round_score is not None
    run = _finished_run(tmp_path / "round_1", b"round 1 weights", best_score=round_score, plausible=plausible)
    assert keep_better_model(run, prev, is_main=True) is kept
    done = json.loads((run / DONE).read_text())
    assert (run / BEST_MODEL).read_bytes() == (b"round 0 weights" if kept else b"round 1 weights")
    assert done["model_from"] == str(prev if kept else run) and done["plausible"] is True
    assert (done["round_score"], done["start_score"]) == (round_score, 0.79)
    assert keep_better_model(run, prev, is_main=True) is kept  # decided once, read back after
    # a later round compares with the score of the model the kept round handed on (0.79)
    nxt = _finished_run(tmp_path / "round_2", b"round 2 weights", best_score=0.7, plausible=True)
    assert keep_better_model(nxt, run, is_main=True) is (kept or round_score > 0.7)


@pytest.mark.parametrize("round_score, kept", [(0.785, False), (0.741, False), (0.739, True)])
def test_a_round_within_the_margin_of_its_start_model_is_handed_on(tmp_path, round_score, kept):
    prev = _finished_run(tmp_path / "fold_0", b"round 0 weights", best_score=0.79, plausible=True)
    run = _finished_run(tmp_path / "round_1", b"round 1 weights", best_score=round_score, plausible=True)
    assert keep_better_model(run, prev, is_main=True, margin=0.05) is kept
    assert (run / BEST_MODEL).read_bytes() == (b"round 0 weights" if kept else b"round 1 weights")
