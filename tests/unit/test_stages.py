"""The training stages end to end on a tiny phantom, on CPU, with real DeepSpeed engines and zarr.

translate -> synthesize -> segment (self-supervised) -> self-train (1 round) run once per module
(a few optimiser steps each, 32x32 slices, 32x32x16 patches); every test then checks what a
stage wrote for the next one, idempotency, resumability and the one-line errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hpc_modatts.config import ConfigError, apply_overrides, config_to_dict, load_config, stage_config
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.slices import fit_slices, unfit_slices
from hpc_modatts.data.store import Store
from hpc_modatts.losses import pooled_dice_loss
from hpc_modatts.runs import stage_dir, translator_dir
from hpc_modatts.train import segment, segment_variants, self_training, synthesize, translate
from hpc_modatts.train.genseg_objective import masked_l1
from hpc_modatts.train.segment_task import SelfTrainingRound
from tests.chains import DEMO


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- stage 1
def test_translate_writes_done_checkpoints_metrics_and_panel(chain):
    cfg, _, out = chain
    run = out["translate"]
    assert run == stage_dir(cfg.run_dir, "translate") and (run / "DONE").is_file()
    assert (run / "checkpoints" / "latest").is_file() and (run / "best_model.pt").is_file()
    rows = _metrics(run)
    train = [r for r in rows if "train/loss" in r]
    assert len(train) == 2 and all(np.isfinite(r["train/cyc"]) and r["train/disc"] > 0 for r in train)
    val = [r for r in rows if "val/dice" in r]
    assert val and 0.0 <= val[-1]["val/dice"] <= 1.0 and "val/dice_source" in val[-1]
    assert (run / "panels" / "step_00000002.png").stat().st_size > 1000
    saved = load_config(run / "config.yaml")
    assert saved.train.stage == "translate" and saved.train.stage_overrides == {}


def test_stage_1_restarts_below_the_contrast_target_and_synthesis_uses_the_selected_attempt(chain, tmp_path):
    cfg, _, _ = chain
    # a target no 2-step translation reaches: every attempt is below it, so both are trained
    own = apply_overrides(cfg, [f"run_root={tmp_path}", "train.restarts=1", "train.extend_until_contrast=1.0"])
    run = translate.run(own)
    done = json.loads((run / "DONE").read_text())
    attempts = done["attempts"]
    assert [a["dir"] for a in attempts] == [".", "restart_1"]
    assert [a["seed"] for a in attempts] == [own.train.seed, own.train.seed + 1]
    assert all(a["contrast_ratio"] < 1.0 for a in attempts)  # the premise: both below the target
    assert (run / "DONE_attempt").is_file() and (run / "restart_1" / "DONE").is_file()
    # the two attempts are different trainings (seed + 1), and DONE names the higher-scoring one
    assert _metrics(run)[0]["train/loss"] != _metrics(run / "restart_1")[0]["train/loss"]
    best = max(attempts, key=lambda a: a["score"])
    assert done["attempt"] == best["dir"].strip(".") and done["best_step"] == best["best_step"]
    assert translator_dir(run) == run / best["dir"]
    model, _, step = synthesize.load_translator(run)
    selected = torch.load(translator_dir(run) / "best_model.pt", weights_only=False)["models"]["gen"]
    assert step == best["best_step"] and all(torch.equal(v, selected[k]) for k, v in model.state_dict().items())
    assert (run / "report.png").stat().st_size > 1000
    # a requeue after the attempts finished: no attempt is trained again, the choice is the same
    mtimes = {p: (p / "metrics.jsonl").stat().st_mtime_ns for p in (run, run / "restart_1")}
    (run / "DONE").unlink()
    assert translate.run(own) == run
    assert {p: (p / "metrics.jsonl").stat().st_mtime_ns for p in mtimes} == mtimes
    assert json.loads((run / "DONE").read_text())["attempt"] == done["attempt"]


def test_a_translator_run_names_only_a_restart_folder(tmp_path):
    (tmp_path / "DONE").write_text(json.dumps({"attempt": "../../elsewhere"}))
    with pytest.raises(DataError, match="restart_<k>"):
        translator_dir(tmp_path)
    (tmp_path / "DONE").write_text(json.dumps({"attempt": "restart_2"}))
    assert translator_dir(tmp_path) == tmp_path / "restart_2"
    (tmp_path / "DONE").write_text(json.dumps({"best_step": 3}))
    assert translator_dir(tmp_path) == tmp_path


def test_translate_weights_are_normalised():
    from hpc_modatts.data.splits import Split

    split = Split("t1", "t2", ["a"], ["a"], ["b"], [], ["c"], [])
    task = translate.TranslateTask(stage_config(load_config(DEMO), "translate"), split, Path("."))
    assert task.weights == pytest.approx({"adv": 1 / 12, "seg": 1 / 12, "cyc": 10 / 12})


# ----------------------------------------------------------------------------- synthesis
def test_synthesis_keeps_geometry_weak_labels_and_only_annotated_masks(chain):
    cfg, split, out = chain
    synth, src = Store.open(out["synth"]), Store.open(cfg.data.store)
    assert synth.root_attrs["kind"] == "synthetic" and synth.case_ids == sorted(split.source_train)
    done = json.loads((out["translate"] / synthesize.MARKER).read_text())
    last_step = json.loads((out["translate"] / "DONE").read_text())["steps"]
    assert done["translator_step"] == last_step  # the LAST translator state (thesis 5.5.1)
    for case in synth.case_ids:
        assert synth.modalities(case) == ["t2"]
        img, brain = synth.read_image(case, "t2"), src.read_brain(case)
        assert img.shape == src.read_image(case, "t1").shape
        assert np.all(img[brain == 0] == -1.0) and img.min() >= -1.0 and img.max() <= 1.0
        # normalised like the real volumes: (v - mean) / (5 std) over the brain, clipped
        assert abs(img[brain > 0].mean()) < 0.03 and 0.15 < img[brain > 0].std() <= 0.201
        assert not np.allclose(img[brain > 0], src.read_image(case, "t1")[brain > 0])
        a, sa = synth.attrs(case), src.attrs(case)
        for key in ("affine", "spacing", "hemisphere_split", "weak_labels"):
            assert a[key] == sa[key]
        if case in split.source_labeled:
            assert np.array_equal(synth.read_mask(case), src.read_mask(case))
        else:
            assert synth.mask(case) is None  # the annotated fraction stays what the split says
    assert set(split.source_train) - set(split.source_labeled), "the test needs an unannotated source case"


def test_synthesis_resumes_only_missing_cases(chain, tmp_path):
    cfg, split, _ = chain
    # on a copy of the chain's run folder: the other tests read the original pseudo-targets
    shutil.copytree(cfg.run_dir, tmp_path / cfg.name)
    cfg = apply_overrides(cfg, [f"run_root={tmp_path}"])
    translator_run, synth = synthesize.paths(cfg)
    assert synth.is_relative_to(tmp_path)
    store = Store.open(synth)
    kept, removed = store.case_ids[0], store.case_ids[-1]
    stamp = (synth / "cases" / kept / "zarr.json").stat().st_mtime_ns
    store.delete_case(removed)
    (translator_run / synthesize.MARKER).unlink()
    synthesize.run(cfg)
    assert Store.open(synth).case_ids == sorted(split.source_train)
    assert (synth / "cases" / kept / "zarr.json").stat().st_mtime_ns == stamp
    assert synthesize.is_synthesized(cfg)


def test_fit_and_unfit_slices_round_trip():
    vol = np.random.default_rng(0).uniform(-1, 1, (20, 40, 5)).astype(np.float32)
    slices = fit_slices(vol, (32, 32), fill=-1.0)  # X padded, Y cropped
    assert slices.shape == (5, 32, 32) and np.all(slices[:, :6] == -1.0)
    back = unfit_slices(slices, vol.shape, fill=-1.0)
    assert np.array_equal(back[:, 4:36], vol[:, 4:36]) and np.all(back[:, :4] == -1.0)


# ----------------------------------------------------------------------------- stage 2
def test_segment_self_supervised_trains_on_pseudo_targets_and_validates(chain):
    cfg, split, out = chain
    run = out["segment"]
    assert run == stage_dir(cfg.run_dir, "segment", "self-supervised", 0) and (run / "DONE").is_file()
    rows = _metrics(run)
    assert {"train/seg_pt", "train/seg_t"} <= set(rows[0])  # target_labeled is not empty
    assert any("val/dice" in r for r in rows)
    from hpc_modatts.train.best_model import load_best_model

    model, saved = load_best_model(run, "gen")
    assert saved.train.variant == "self-supervised"
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32, 16)).shape == (1, 1, 32, 32, 16)


def test_self_training_round_pseudo_labels_are_thresholded_predictions(chain):
    cfg, split, out = chain
    run = out["round_1"]
    assert run == stage_dir(cfg.run_dir, "self-train", "self-supervised", 0, round_=1) and (run / "DONE").is_file()
    labels = Store.open(run / "pseudo_labels.zarr")
    unannotated = sorted(set(split.target_train) - set(split.target_labeled))
    assert labels.root_attrs["kind"] == "pseudo_labels" and labels.case_ids == unannotated
    from hpc_modatts.train.best_model import load_best_model

    model, _ = load_best_model(out["segment"], "gen")
    src, case = Store.open(cfg.data.store), unannotated[0]
    from hpc_modatts.infer.inferer import inferer_from_config
    from hpc_modatts.train.guards import zero_healthy

    attrs = src.attrs(case)
    prob = inferer_from_config(cfg)(
        lambda p: torch.sigmoid(model(p)), src.read_image(case, "t2"), src.read_brain(case), attrs["hemisphere_split"]
    )[0]
    expected = (prob > 0.6) & (src.read_brain(case) > 0)
    expected = zero_healthy(expected, attrs["hemisphere_split"], attrs["weak_labels"])  # A halves: zero
    assert np.array_equal(labels.read_array(case, "pseudo_label").astype(bool), expected)
    volumes = json.loads((run / "pseudo_labels.json").read_text())["volume_ml"]
    assert set(volumes) == set(unannotated)
    rows = _metrics(run)
    assert {"train/st", "train/seg_pt", "train/seg_t"} <= set(rows[0])


def test_self_training_starts_from_the_previous_best(chain):
    cfg, split, out = chain
    round_1 = SelfTrainingRound(init_from=out["segment"], pseudo_labels=out["round_1"] / "pseudo_labels.zarr")
    task = segment_variants.PseudoTargetTask(cfg, split, out["round_1"], out["synth"], round_1)
    assert task.name == "self-train"
    model = task.build(None)["gen"]
    best = torch.load(out["segment"] / "best_model.pt", weights_only=False)["models"]["gen"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k]), k
    # lambda_st = lambda_seg^pT (thesis Eq. 5.13) when train.weights.st == -1
    assert task.weights["st"] == pytest.approx(task.weights["seg_pt"])


def test_round_i_starts_from_round_i_minus_1_unless_told():
    cfg = load_config(DEMO, ["run_root=/r", "name=e", "train.variant=semi-supervised", "data.fold=2"])
    assert self_training.init_dir(cfg, 1, explicit=True) == Path("/r/e/segment-semi-supervised/fold_2")
    assert self_training.init_dir(cfg, 3, explicit=True) == Path("/r/e/segment-semi-supervised/fold_2/round_2")
    told = apply_overrides(cfg, ["train.init_from=/elsewhere"])
    assert self_training.init_dir(told, 3, explicit=True) == Path("/elsewhere")
    assert self_training.init_dir(told, 3, explicit=False) == Path("/r/e/segment-semi-supervised/fold_2/round_2")


def test_finished_stages_return_immediately(chain):
    cfg, _, out = chain
    before = {k: (p / "DONE").stat().st_mtime_ns for k, p in out.items() if k != "synth"}
    assert translate.run(cfg) == out["translate"]
    assert synthesize.run(cfg) == out["synth"]
    assert segment.run(cfg) == out["segment"]
    assert self_training.run(apply_overrides(cfg, ["train.rounds=1"])) == out["round_1"]
    assert before == {k: (p / "DONE").stat().st_mtime_ns for k, p in out.items() if k != "synth"}


@pytest.mark.parametrize("variant", ["semi-supervised", "source-supervised", "target-supervised"])
def test_other_variants_train_a_few_steps(chain, variant, tmp_path):
    cfg, _, out = chain
    # into a run root of its own (the session's chain stays read-only), from the chain's stage 1
    own = [f"train.variant={variant}", f"run_root={tmp_path}", f"train.translator_run={out['translate']}"]
    run = segment.run(apply_overrides(cfg, own))
    assert run == stage_dir(tmp_path / cfg.name, "segment", variant, 0) and (run / "DONE").is_file()
    rows = _metrics(run)
    train = [r for r in rows if "train/loss" in r]
    assert len(train) == 2 and all(np.isfinite(v) for r in train for v in r.values())
    if variant == "semi-supervised":
        assert {"train/adv", "train/rec", "train/lat", "train/disc", "train/seg_pt"} <= set(train[0])
        best = torch.load(run / "best_model.pt", weights_only=False)
        assert set(best["models"]) == {"gen", "disc"}
    else:
        assert set(train[0]) - {"time", "step", "epoch"} == {"train/loss", "train/seg"}
    assert any("val/dice" in r for r in rows)


def test_every_variant_has_one_task_class():
    from hpc_modatts.config import VARIANTS

    assert list(segment_variants.VARIANT_TASKS) == list(VARIANTS)
    assert all(cls.variant == v for v, cls in segment_variants.VARIANT_TASKS.items())


def test_masked_l1_without_samples_is_a_zero_with_a_graph():
    a = torch.ones(2, 1, 4, 4, 4, requires_grad=True)
    z = masked_l1(a, torch.zeros_like(a), torch.tensor([False, False]))
    z.backward()
    assert z.item() == 0.0 and a.grad is not None
    assert masked_l1(a, torch.zeros_like(a), torch.tensor([True, False])).item() == 1.0


def test_pooled_dice_penalises_false_positives_on_tumour_free_samples():
    """Per-sample soft Dice gives a tumour-free sample ~1 and ~no gradient whatever it predicts;
    the pooled Dice the stages train with must push its false positives down."""
    from hpc_modatts.losses import dice_loss

    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:5, 2:5] = 1.0  # sample 0 has a tumour, sample 1 none
    logits = torch.full((2, 1, 8, 8), -8.0)
    logits[0, 0, 2:5, 2:5] = 8.0  # sample 0 perfect
    logits[1, 0, 0:4, 0:4] = 2.0  # sample 1: 16 false positives (p 0.88)
    logits.requires_grad_(True)
    has = torch.tensor([True, True])
    pooled = pooled_dice_loss(logits, target, has)
    assert 0.4 < pooled.item() < 0.5  # 1 - 2*9 / (9 + 9 + 16*0.88): the FPs count
    pooled.backward()
    assert logits.grad[1, 0, 0:4, 0:4].min() > 1e-4  # and are pushed down
    per_sample = torch.autograd.grad(dice_loss(logits, target, has), logits)[0]
    assert per_sample[1].abs().max() < 1e-6  # what the per-sample Dice gave them
    # only the annotated samples are pooled; none annotated: a zero that keeps the graph
    only_0 = pooled_dice_loss(logits, target, torch.tensor([True, False]))
    assert only_0.item() < 0.01
    zero = pooled_dice_loss(logits, target, torch.tensor([False, False]))
    assert zero.item() == 0.0 and zero.requires_grad


# ----------------------------------------------------------------------------- errors and CLI
def test_missing_inputs_are_one_line_config_errors(chain, tmp_path):
    cfg, _, _ = chain
    other = apply_overrides(cfg, [f"run_root={tmp_path}"])
    with pytest.raises(ConfigError, match="translator run .* has not finished"):
        synthesize.run(other)
    with pytest.raises(ConfigError, match="pseudo-target store .* does not exist"):
        segment.run(other)
    with pytest.raises(ConfigError, match="round 1: model to start from .* has not finished"):
        self_training.run(apply_overrides(other, ["train.rounds=1"]))
    with pytest.raises(ConfigError, match="data.split is not set"):
        translate.run(apply_overrides(other, ["data.split="]))


def test_cli_runs_a_stage_and_reports_errors_in_one_line(chain, tmp_path, capsys):
    from hpc_modatts.cli import main

    cfg, _, _ = chain
    data = config_to_dict(apply_overrides(cfg, [f"run_root={tmp_path}"]))
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", "segment", str(path), "--variant", "source-supervised", "--no-resume"]) == 0
    run = stage_dir(tmp_path / "t", "segment", "source-supervised", 0)
    saved = load_config(run / "config.yaml")
    assert (run / "DONE").is_file() and saved.train.resume is False and saved.train.stage == "segment"
    assert main(["synthesize", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has not finished" in err[0]
    assert main(["train", "translate", str(path), "train.epochz=1"]) == 2
    assert "train.epochz" in capsys.readouterr().err
