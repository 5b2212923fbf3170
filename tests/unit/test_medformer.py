"""3D MedFormer: sizes, shapes, padding, errors, gradients, determinism, channels-last policy."""

import copy

import pytest
import torch

from hpc_modatts.config import ConfigError
from hpc_modatts.models import SEGMENTER_SIZES, MedFormer, build_segmenter, count_parameters
from hpc_modatts.models.layout import to_channels_last
from hpc_modatts.models.medformer import MedFormerConfig, pad_to_stride
from hpc_modatts.models.medformer_blocks import BMDHBlock, ConvBlock

TINY = SEGMENTER_SIZES["tiny"]


def _volume(shape=(2, 1, 40, 32, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


@pytest.mark.parametrize(
    "size, low, high", [("full", 36e6, 40e6), ("semi8m", 7e6, 9e6), ("small", 1e6, 2e6), ("tiny", 0, 0.3e6)]
)
def test_parameter_counts_of_named_sizes(size, low, high):
    n = count_parameters(build_segmenter(size))
    assert low <= n <= high, f"{size}: {n / 1e6:.2f} M"


def test_unknown_size_is_a_config_error():
    with pytest.raises(ConfigError, match="segmenter_size='huge'"):
        build_segmenter("huge")


def test_output_shape_matches_unaligned_input_and_sigmoid_is_a_probability():
    torch.manual_seed(0)
    model = build_segmenter("tiny")
    x = _volume()  # 40x32x20: none a multiple of 16 except 32
    logits = model(x)
    assert logits.shape == (2, 1, 40, 32, 20)
    probs = torch.sigmoid(logits)
    assert torch.all((probs >= 0) & (probs <= 1)) and torch.isfinite(logits).all()


def test_multi_channel_input_and_output():
    torch.manual_seed(0)
    model = MedFormer(TINY, in_channels=2, out_channels=3)
    assert model(_volume((1, 2, 32, 32, 16))).shape == (1, 3, 32, 32, 16)


def test_padding_uses_background_constant_then_reflect():
    x = _volume((1, 1, 20, 16, 17))
    padded = pad_to_stride(x, TINY, 1)
    assert padded.shape == (1, 1, 32, 16, 32)
    assert torch.equal(padded[..., :20, :, :17], x)
    assert torch.all(padded[:, :, 20:] == -1) and torch.all(padded[..., 17:] == -1)
    reflect = MedFormerConfig(**{**TINY.__dict__, "pad_mode": "reflect"})
    mirrored = pad_to_stride(x, reflect, 1)
    assert torch.equal(mirrored[:, :, 20, :, :17], x[:, :, 18])


def test_wrong_channel_count_names_the_expected_count():
    model = build_segmenter("tiny")
    with pytest.raises(ValueError, match=r"expects input \(B, 1, X, Y, Z\), got shape \(1, 2, 32, 32, 32\)"):
        model(torch.zeros(1, 2, 32, 32, 32))


@pytest.mark.parametrize("shape", [(1, 1, 15, 32, 32), (1, 1, 16, 16, 16)])
def test_too_small_input_names_the_minimum(shape):
    model = build_segmenter("tiny")
    with pytest.raises(ValueError, match="too small: each axis needs >= 16"):
        model(torch.zeros(shape))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"channels": (8, 16)}, "channels needs 8 values"),
        ({"bmdh_blocks": (1, 1, 1, 1, 1, 1, 0, 0)}, r"bmdh_blocks\[0\] must be 0"),
        ({"bmdh_blocks": (0, 1, 1, 1, 0, 1, 0, 0)}, r"bmdh_blocks\[4\] must be >= 1"),
        ({"heads": (1, 3, 2, 4, 2, 2, 1, 1)}, "not divisible by heads"),
        ({"map_size": (1, 1, 1)}, ">= 2 tokens"),
        ({"pad_mode": "wrap"}, "pad_mode"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        MedFormerConfig(**{**TINY.__dict__, **change})


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = build_segmenter("tiny")
    x = _volume((1, 1, 32, 32, 32))
    weights = torch.randn(1, 1, 32, 32, 32)
    (model(x) * weights).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_forward_is_deterministic_under_a_fixed_seed():
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_segmenter("tiny")
        outputs.append(model(_volume()))
    assert torch.equal(outputs[0], outputs[1])
    torch.manual_seed(124)
    assert not torch.equal(outputs[0], build_segmenter("tiny")(_volume()))


def test_blocks_declare_their_checkpoint_kind():
    model = build_segmenter("small")
    kinds = {type(m).__name__: m.checkpoint_kind for m in model.modules() if hasattr(m, "checkpoint_kind")}
    assert BMDHBlock.checkpoint_kind == "bmdh" and ConvBlock.checkpoint_kind == "conv"
    assert kinds == {
        "ConvBlock": "conv",
        "BMDHBlock": "bmdh",
        "TransformerUpStage": "decoder",
        "ConvUpStage": "decoder",
        "PatchMerging": "conv",
        "SemanticMapGeneration": "bmdh",
    }


def test_bmdh_block_is_bidirectional_and_linear_in_voxels():
    torch.manual_seed(0)
    block = BMDHBlock(8, 8, 8, heads=2, expansion=4, norm=lambda c: torch.nn.InstanceNorm3d(c, affine=True))
    smap = torch.randn(1, 8, 2, 2, 2)
    for side in (8, 16):  # the map keeps its grid whatever the feature size
        feat = torch.randn(1, 8, side, side, side)
        out, new_map = block(feat, smap)
        assert out.shape == feat.shape and new_map.shape == smap.shape
        assert not torch.allclose(new_map, smap)  # features -> map direction is active
    # map -> feature direction: changing the map changes the features
    out2, _ = block(feat, smap + 1)
    assert not torch.allclose(out, out2)


def test_channels_last_policy_feeds_every_conv3d_channels_last_and_changes_no_value():
    torch.manual_seed(0)
    plain = build_segmenter("tiny").eval()
    cl = to_channels_last(to_channels_last(copy.deepcopy(plain)))  # applied twice: one hook per conv
    seen: list[bool] = []

    def record(conv, args):
        seen.append(args[0].is_contiguous(memory_format=torch.channels_last_3d))

    convs = [m for m in cl.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(len(c._forward_pre_hooks) == 1 for c in convs)
    for c in convs:
        c.register_forward_pre_hook(record)  # runs after the policy's hook
    x = _volume()
    with torch.no_grad():
        torch.testing.assert_close(cl(x), plain(x), rtol=1e-4, atol=1e-5)
    assert len(seen) >= len(convs) and all(seen)
