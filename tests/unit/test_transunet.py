"""TransUNet translator: sizes, shapes, gradients, decoders, determinism, errors, weight loading."""

import numpy as np
import pytest
import torch

from hpc_modatts.data.errors import DataError
from hpc_modatts.models import TransUNetTranslator, build_translator
from hpc_modatts.models import pretrained as pt
from hpc_modatts.models import transunet as tu


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny(seed: int = 0) -> TransUNetTranslator:
    torch.manual_seed(seed)
    return build_translator("tiny")


def test_full_size_parameter_counts_match_the_published_r50_vit_b16():
    model = build_translator("full")  # built on CPU, never run forward here
    assert _count(model.encoder) == pytest.approx(97.9e6, rel=0.02)
    assert _count(model.translation_decoder) == pytest.approx(7.4e6, rel=0.02)
    assert _count(model.segmentation_decoder) == pytest.approx(7.4e6, rel=0.02)


def test_tiny_is_small():
    assert _count(_tiny()) < 1_000_000


def test_shapes_ranges_and_padding_crop():
    model = _tiny().eval()
    x = torch.rand(2, 1, 40, 56) * 2 - 1  # not multiples of 16, differs from img_size 64
    with torch.no_grad():
        image, logits = model(x)
        padded = torch.nn.functional.pad(x, (0, 8, 0, 8), value=-1.0)  # what the model does inside
        image_p, logits_p = model(padded)
    assert image.shape == (2, 1, 40, 56) and logits.shape == (2, 1, 40, 56)
    assert image.abs().max() <= 1.0 and not torch.allclose(image, image.mean())
    assert torch.allclose(image, image_p[..., :40, :56], atol=1e-6)
    assert torch.allclose(logits, logits_p[..., :40, :56], atol=1e-5)


def test_encode_translate_segment_equal_forward():
    model = _tiny().eval()
    x = torch.rand(1, 1, 32, 48) * 2 - 1
    with torch.no_grad():
        feats = model.encode(x)
        image, logits = model(x)
        assert torch.equal(model.translate(feats), image)
        assert torch.equal(model.segment(feats), logits)
    assert feats.hidden.shape == (1, 64, 2, 3)
    # 1/8, 1/4, 1/2 of the ResNet stem, then the input itself (tiny: TransUNetSize.input_skip)
    assert [s.shape[-2:] for s in feats.skips] == [(4, 6), (8, 12), (16, 24), (32, 48)]


def test_gradients_reach_every_parameter():
    model = _tiny()
    image, logits = model(torch.rand(2, 1, 32, 32) * 2 - 1)
    (image.square().mean() + torch.sigmoid(logits).mean()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_decoders_do_not_share_parameters():
    model = _tiny().eval()
    trans = {p.data_ptr() for p in model.translation_decoder.parameters()}
    seg = {p.data_ptr() for p in model.segmentation_decoder.parameters()}
    assert trans.isdisjoint(seg)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
        for p in model.segmentation_decoder.parameters():
            p.add_(0.5)
        after = model(x)
    assert torch.equal(before[0], after[0]) and not torch.allclose(before[1], after[1])


def test_deterministic_under_fixed_seed():
    x = torch.rand(2, 1, 32, 32)
    outs = []
    for _ in range(2):
        model = _tiny(seed=7)  # train mode: dropout active
        torch.manual_seed(3)
        outs.append(model(x))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(_tiny(seed=8).eval()(x)[0], outs[0][0])


def test_three_channel_input_and_checkpoint_kinds():
    torch.manual_seed(0)
    model = build_translator("tiny", in_channels=3)
    image, logits = model(torch.rand(1, 3, 16, 16))
    assert image.shape == (1, 3, 16, 16) and logits.shape == (1, 1, 16, 16)
    kinds = [getattr(m, "checkpoint_kind", None) for m in model.modules()]
    assert kinds.count("vit") == tu.SIZES["tiny"].layers
    assert kinds.count("conv") == sum(tu.SIZES["tiny"].resnet_units) + 2 * 4


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 2, 32, 32), "expects \\(B, 1, H, W\\)"),
        ((1, 32, 32), "expects"),
        ((1, 1, 8, 32), "smaller than the minimum"),
    ],
)
def test_bad_inputs_raise_clear_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        _tiny()(torch.zeros(shape))


def test_unknown_size():
    with pytest.raises(ValueError, match="unknown translator size 'huge'"):
        build_translator("huge")


# ----------------------------------------------------------------------------- weight loading
def test_torch_state_dict_round_trip(tmp_path):
    source = _tiny(seed=1).eval()
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_translator("tiny", pretrained=str(path)).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x)[0], loaded(x)[0]) and torch.equal(source(x)[1], loaded(x)[1])


def test_encoder_only_file_keeps_decoder_init(tmp_path):
    source = _tiny(seed=1)
    path = tmp_path / "enc.pth"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in source.encoder.state_dict().items()}}, path)
    target = _tiny(seed=2)
    decoder_before = target.segmentation_decoder.head.weight.clone()
    report = pt.load_pretrained(target, str(path))
    assert torch.equal(target.encoder.pos_embed, source.encoder.pos_embed)
    assert torch.equal(target.segmentation_decoder.head.weight, decoder_before)
    assert report["not_in_file"] and all("decoder" in k for k in report["not_in_file"])


def test_wrong_shape_file_is_rejected(tmp_path):
    state = _tiny().state_dict()
    state["encoder.embed.weight"] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(DataError, match=r"bad.pt: 1 shape mismatches, e.g. encoder.embed.weight \(3, 3, 1, 1\)"):
        build_translator("tiny", pretrained=str(path))


def test_missing_unreadable_and_foreign_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_translator("tiny", pretrained=str(tmp_path / "nope.npz"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="garbage.pt: cannot read"):
        build_translator("tiny", pretrained=str(garbage))
    state = _tiny().state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(DataError, match="unexpected keys"):
        build_translator("tiny", pretrained=str(tmp_path / "extra.pt"))
    del state["extra.weight"], state["encoder.norm.bias"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(DataError, match="encoder keys missing.*encoder.norm.bias"):
        build_translator("tiny", pretrained=str(tmp_path / "missing.pt"))


def _to_flax(array: torch.Tensor, kind: str, heads: int) -> np.ndarray:
    """Inverse of the loader's conversions: our layout -> the original checkpoint's layout."""
    a = array.detach().numpy()
    if kind == "conv":
        return a.transpose(2, 3, 1, 0)
    if kind == "dense":
        return a.T
    if kind == "qkv":
        return a.T.reshape(a.shape[1], heads, -1)
    if kind == "out":
        return a.T.reshape(heads, -1, a.shape[0])
    if kind == "flat":
        return a.reshape(heads, -1)
    return a


def test_original_npz_layout_round_trip(tmp_path):
    source = _tiny(seed=1).eval()
    heads = tu.SIZES["tiny"].heads
    arrays = {}
    for key, value in source.encoder.state_dict().items():
        npz_key, kind = pt._npz_key(key)
        arrays[npz_key] = _to_flax(value, kind, heads)
    pos = arrays["Transformer/posembed_input/pos_embedding"]
    arrays["Transformer/posembed_input/pos_embedding"] = np.concatenate([np.zeros_like(pos[:, :1]), pos], 1)
    arrays["cls"] = np.zeros((1, 1, 64), np.float32)
    arrays["head/kernel"] = np.zeros((64, 10), np.float32)
    assert "block1/unit1/conv_proj/kernel" in arrays and "conv_root/kernel" in arrays
    np.savez(tmp_path / "R50+ViT-B_16.npz", **arrays)
    target = _tiny(seed=2).eval()
    report = pt.load_pretrained(target, str(tmp_path / "R50+ViT-B_16.npz"))
    assert report["ignored"] == ["cls", "head/kernel"]
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(source.encode(x).hidden, target.encode(x).hidden, atol=1e-5)
    arrays["Transformer/unknown/kernel"] = np.zeros(1, np.float32)
    np.savez(tmp_path / "foreign.npz", **arrays)
    with pytest.raises(DataError, match="unexpected npz keys.*Transformer/unknown/kernel"):
        pt.load_pretrained(target, str(tmp_path / "foreign.npz"))


def test_position_embedding_is_resized_from_another_grid(tmp_path):
    state = _tiny().state_dict()
    state["encoder.pos_embed"] = torch.randn(1, 1 + 14 * 14, 64)  # 224-input grid + class token
    torch.save(state, tmp_path / "grid14.pt")
    model = build_translator("tiny", pretrained=str(tmp_path / "grid14.pt"))
    assert model.encoder.pos_embed.shape == (1, 16, 64)


def test_activation_checkpointing_keeps_outputs_and_gradients():
    from hpc_modatts.models import apply_activation_checkpointing
    from hpc_modatts.models.checkpointing import checkpointed_modules

    x = torch.rand(2, 1, 32, 32)
    grads = []
    for policy in ([], ["vit", "conv"]):
        model = apply_activation_checkpointing(_tiny(seed=4), policy)
        assert len(checkpointed_modules(model)) == (0 if not policy else 2 + 3 + 2 * 4)  # vit, units, blocks
        torch.manual_seed(5)  # dropout active: checkpointing must replay the same masks
        image, logits = model(x)
        (image.mean() + logits.mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
