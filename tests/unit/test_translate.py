"""Stage-1 translators: the background of the input is the background of every translation."""

import json
import math

import torch

from hpc_modatts.train.translate import CycleTranslators


def _pair(keep: bool) -> CycleTranslators:
    torch.manual_seed(0)
    return CycleTranslators("tiny", keep_background=keep).eval()


def test_keep_background_copies_the_inputs_background_and_nothing_else():
    x_s = torch.rand(2, 1, 32, 48) * 1.6 - 0.8  # brain intensities, never -1
    x_t = torch.rand(2, 1, 32, 48) * 1.6 - 0.8
    x_s[..., :6, :] = -1.0  # background rows / columns
    x_t[..., :, -9:] = -1.0
    kept, free = _pair(True), _pair(False)
    free.load_state_dict(kept.state_dict())
    with torch.no_grad():
        out_k, out_f = kept(x_s, x_t), free(x_s, x_t)
        synth = kept.to_target(x_s)
    for name, x in (("s_to_t", x_s), ("s_cycled", x_s), ("t_to_s", x_t)):
        bg = x <= -1.0
        assert torch.all(out_k[name][bg] == -1.0), name
        assert not torch.all(out_f[name][bg] == -1.0), name  # a raw generator does not
        if name != "s_cycled":  # (its input differs: X_S')
            assert torch.equal(out_k[name][~bg], out_f[name][~bg]), name  # brain untouched
    assert torch.equal(synth, out_k["s_to_t"])
    # the segmentation heads see the same features either way on the source side
    assert torch.equal(out_k["seg_s"], out_f["seg_s"])


def test_an_untranslated_stage_1_is_reported_at_its_selected_step(tmp_path):
    from hpc_modatts.train import fidelity
    from hpc_modatts.train.stage1_restarts import selected_validation as _selected_validation

    rows = [
        {"step": 25, "train/loss": 1.0},
        {"step": 150, "val/contrast_ratio": 0.10, "val/score": 0.30},
        {"step": 300, "val/contrast_ratio": 0.05, "val/score": 0.20},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    selected = _selected_validation(tmp_path, 150)
    assert selected["step"] == 150
    warning = fidelity.translation_warning(selected)
    assert warning and "0.10" in warning and "150" in warning
    assert _selected_validation(tmp_path, 7)["step"] == 300  # no row at that step: the last validation
    assert fidelity.translation_warning({"step": 300, "val/contrast_ratio": 0.74}) is None
    assert fidelity.translation_warning({"step": 300, "val/contrast_ratio": float("nan")}) is None
    assert fidelity.translation_warning({}) is None  # no validation cases (CrossMoDA): nothing to judge


def test_disc_separation_reads_a_ranking_that_the_decision_boundary_misses():
    import numpy as np

    from hpc_modatts.train import fidelity

    rng = np.random.default_rng(0)
    real = rng.uniform(0.5, 1.0, (6, 8, 8)).astype(np.float32)  # brighter slices
    fake = rng.uniform(-1.0, 0.4, (5, 8, 8)).astype(np.float32)

    def shifted(x: torch.Tensor) -> list[torch.Tensor]:  # two scales; every slice judged real (> 0)
        return [x + 3.0, torch.nn.functional.avg_pool2d(x, 2) + 3.0]

    out = fidelity.disc_separation(shifted, real, fake, batch=4)  # batches split across the two sets
    assert out["disc_accuracy"] == 0.5  # all on one side of 0: chance at the boundary
    assert out["disc_auc"] == 1.0  # but every real slice ranks above every fake one
    flipped = fidelity.disc_separation(lambda x: [-x], real, fake)
    assert flipped["disc_accuracy"] == 0.0 and flipped["disc_auc"] == 0.0
    empty = fidelity.disc_separation(shifted, real, fake[:0])
    assert np.isnan(empty["disc_accuracy"]) and np.isnan(empty["disc_auc"])


def test_the_stage_1_selection_score_is_the_weaker_of_contrast_and_appearance():
    from hpc_modatts.train import fidelity

    # split 5's case: a matched histogram with almost no tumour must not beat a visible tumour
    no_tumour, tumour = fidelity.selection_score(0.13, 0.76), fidelity.selection_score(0.41, 0.45)
    assert no_tumour == 0.13 and tumour == 0.41 and tumour > no_tumour
    assert fidelity.selection_score(1.4, 0.9) == 0.9  # brighter than the real tumour is no better
    assert fidelity.selection_score(-0.2, 0.8) == -0.2  # inverted tumour (untranslated T1 -> T2)
    assert fidelity.selection_score(float("nan"), 0.8) == -1.0  # no ratio measurable: never preferred


class _Engine:
    """The two calls a stage-1 task makes on a DeepSpeed engine (backward, step), on plain Adam."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.opt = torch.optim.Adam(module.parameters(), lr=1e-2)

    def __call__(self, *args):
        return self.module(*args)

    def backward(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()

    def step(self) -> None:
        self.opt.step()


def _translate_task(*overrides: str):
    from pathlib import Path

    from hpc_modatts.config import apply_overrides, load_config, stage_config
    from hpc_modatts.data.splits import Split
    from hpc_modatts.train.translate import TranslateTask
    from tests.chains import DEMO

    cfg = stage_config(apply_overrides(load_config(DEMO), list(overrides)), "translate")
    return TranslateTask(cfg, Split("t1", "t2", ["a"], ["a"], ["b"], [], ["c"], []), Path("."))


def test_discriminator_warmup_leaves_the_generators_alone_then_the_adversarial_weight_ramps():
    task = _translate_task(
        "train.stage_overrides.translate.max_steps=10",
        "train.stage_overrides.translate.disc_warmup_steps=2",
        "train.stage_overrides.translate.adv_ramp_steps=4",
    )
    torch.manual_seed(0)
    gen = _Engine(CycleTranslators("tiny", keep_background=True))
    disc = _Engine(task.build(None)["disc"])
    x = torch.rand(2, 1, 32, 48) * 1.6 - 0.8
    mask = torch.zeros(2, 1, 32, 48)
    mask[0, 0, 10:16, 20:28] = 1.0
    batch = {"source": {"image": x, "mask": mask, "has_mask": torch.ones(2)}, "target": {"image": x.flip(-1)}}

    def params(engine: _Engine) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}

    g0, d0 = params(gen), params(disc)
    assert set(task.train_step(batch, {"gen": gen, "disc": disc}, 0)) == {"disc"}
    assert all(torch.equal(v, params(gen)[k]) for k, v in g0.items())  # generators untouched
    assert any(not torch.equal(v, params(disc)[k]) for k, v in d0.items())  # discriminators trained
    task.train_step(batch, {"gen": gen, "disc": disc}, 1)
    assert all(torch.equal(v, params(gen)[k]) for k, v in g0.items())

    out = task.train_step(batch, {"gen": gen, "disc": disc}, 2)  # the generators' first step: 1/4
    assert any(not torch.equal(v, params(gen)[k]) for k, v in g0.items())
    w = task.weights
    assert out["adv_scale"] == 0.25
    expected = 0.25 * w["adv"] * out["adv"] + w["cyc"] * out["cyc"] + w["seg"] * out["seg"]
    assert torch.allclose(out["loss"], expected)
    assert [task.adv_scale(s) for s in (3, 4, 5, 6, 9)] == [0.5, 0.75, 1.0, 1.0, 1.0]


def test_a_run_no_longer_than_the_warmup_trains_the_generators_from_the_first_step():
    task = _translate_task(
        "train.stage_overrides.translate.max_steps=2",
        "train.stage_overrides.translate.disc_warmup_steps=50",
        "train.stage_overrides.translate.adv_ramp_steps=0",
    )
    assert task.disc_warmup == 0 and task.adv_scale(0) == 1.0


def test_stage_1_wants_more_steps_until_the_selected_translation_reaches_the_contrast_target():
    from types import SimpleNamespace

    from hpc_modatts.config import ExperimentConfig
    from hpc_modatts.train.translate import TranslateTask

    task = SimpleNamespace(cfg=ExperimentConfig())  # extend_until_contrast 0.6
    bests = ({}, {"contrast_ratio": 0.29}, {"contrast_ratio": 0.6}, {"score": 0.5}, {"contrast_ratio": math.nan})
    wants = [TranslateTask.wants_more_steps(task, best) for best in bests]
    assert wants == [True, True, False, False, False]  # nothing selected yet / too faint / good / no ratio
