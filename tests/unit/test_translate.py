"""Stage-1 translators: the background of the input is the background of every translation."""

import json

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
    from hpc_modatts.train.translate import _selected_validation

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
