"""GenSeg wiring: code split, heads, shared residual/segmentation decoder, norm switching."""

import pytest
import torch

from hpc_modatts.models import GenSegMedFormer, build_segmenter, count_parameters
from hpc_modatts.models.genseg import SwitchableNorm, norm_mode


def _model(**kw):
    torch.manual_seed(0)
    return build_segmenter("tiny", genseg=True, **kw)


def _volume(shape=(2, 1, 40, 32, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


@pytest.mark.parametrize("size, low, high", [("full", 40e6, 50e6), ("semi8m", 9e6, 12e6)])
def test_parameter_counts(size, low, high):
    model = build_segmenter(size, genseg=True)
    assert isinstance(model, GenSegMedFormer)
    n = count_parameters(model)
    assert low <= n <= high, f"{size} genseg: {n / 1e6:.2f} M"


def test_code_split_and_all_heads_shapes_and_ranges():
    model = _model()
    x = _volume()
    c, u, skips = model.encode(x)
    width = model.cfg.channels[3]
    assert c.shape == (2, round(0.75 * width), 3, 2, 2) and u.shape == (2, width - c.shape[1], 3, 2, 2)
    common, residual = model.decode_common(c, skips), model.decode_residual(c, u, skips)
    logits = model.decode_segmentation(c, u, skips)
    for image in (common, residual):
        assert image.shape == x.shape and image.abs().max() <= 1
    assert logits.shape == (2, 1, 40, 32, 20)
    assert torch.equal(model(x), logits) and torch.equal(model.segment(x), logits)
    probs = torch.sigmoid(logits)
    assert torch.all((probs >= 0) & (probs <= 1))


def test_sample_u_is_standard_normal_like_u():
    model = _model()
    u = torch.zeros(4, 8, 6, 10, 4)
    sample = model.sample_u(u)
    assert sample.shape == u.shape
    assert abs(sample.mean().item()) < 0.05 and abs(sample.std().item() - 1) < 0.05


def test_common_fraction_changes_the_split_and_is_validated():
    c, u, _ = _model(common_fraction=0.5).encode(_volume())
    assert c.shape[1] == u.shape[1]
    with pytest.raises(ValueError, match="common_fraction=1.0"):
        _model(common_fraction=1.0)


def _params_reached(model, path):
    """Names of the parameters that get a non-zero gradient from one decoding path."""
    model.zero_grad(set_to_none=True)
    x = _volume((1, 1, 32, 32, 32))
    c, u, skips = model.encode(x)
    out = {
        "common": lambda: model.decode_common(c, skips),
        "residual": lambda: model.decode_residual(c, u, skips),
        "segmentation": lambda: model.decode_segmentation(c, u, skips),
    }[path]()
    (out * torch.randn_like(out)).sum().backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_residual_and_segmentation_share_everything_but_norms_and_heads():
    model = _model()
    res, seg = _params_reached(model, "residual"), _params_reached(model, "segmentation")
    assert res & seg, "the two paths share the encoder and the decoder convolutions"
    assert any(n.startswith("res_seg_decoder.") and ("qv" in n or "convs" in n) for n in res & seg)
    only_res, only_seg = res - seg, seg - res
    assert only_res and only_seg
    assert all(".norms.residual." in n or n.startswith("residual_head") for n in only_res), only_res
    assert all(".norms.segmentation." in n or n.startswith("segmentation_head") for n in only_seg), only_seg
    assert {"residual_head.weight", "segmentation_head.weight"} <= only_res | only_seg
    all_norms = {n for n, _ in model.named_parameters() if ".norms." in n}
    assert all_norms == {n for n in all_norms if n in only_res or n in only_seg}  # each norm set on one path


def test_each_path_reaches_its_parameters_and_together_all():
    model = _model()
    reached = {p: _params_reached(model, p) for p in ("common", "residual", "segmentation")}
    assert any(n.startswith("common_in") for n in reached["common"])
    assert not any(n.startswith("res_seg_decoder") for n in reached["common"])
    every = {n for n, _ in model.named_parameters()}
    assert set().union(*reached.values()) == every


def test_separate_decoder_ablation_shares_only_the_encoder():
    model = _model(separate_seg_decoder=True)
    assert not any(isinstance(m, SwitchableNorm) for m in model.modules())
    res, seg = _params_reached(model, "residual"), _params_reached(model, "segmentation")
    assert all(n.startswith("encoder.") for n in res & seg)
    assert any(n.startswith("seg_decoder.") for n in seg)
    assert count_parameters(model) > count_parameters(_model())


def test_norm_mode_switches_and_restores():
    model = _model()
    x = _volume()
    c, u, skips = model.encode(x)
    before = model.decode_residual(c, u, skips)
    with torch.no_grad():  # perturb only the segmentation norms: the residual path must not move
        for name, p in model.named_parameters():
            if ".norms.segmentation." in name:
                p.add_(0.5)
    assert torch.equal(model.decode_residual(c, u, skips), before)
    switches = [m for m in model.modules() if isinstance(m, SwitchableNorm)]
    with norm_mode(model, "segmentation"):
        assert all(m.mode == "segmentation" for m in switches)
    assert all(m.mode == "residual" for m in switches)
    with pytest.raises(ValueError, match="norm mode 'other'"):
        with norm_mode(model, "other"):
            pass


def test_forward_is_deterministic_under_a_fixed_seed():
    a, b = _model(), _model()
    x = _volume()
    assert torch.equal(a(x), b(x))
