"""Multi-scale discriminator: Table 5.1 layer order, 2D/3D shapes per scale, errors."""

import pytest
import torch
from torch import nn

from hpc_modatts.models import MultiScaleDiscriminator


def _conv_layout(disc: MultiScaleDiscriminator, scale: int = 0) -> list[tuple[int, int, int]]:
    """(out channels, kernel, stride) of every conv of one scale, in order."""
    convs = [m for m in disc.nets[scale].modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    return [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs]


def test_layers_follow_table_5_1():
    disc = MultiScaleDiscriminator(spatial_dims=2)
    assert len(disc.nets) == 3
    assert _conv_layout(disc) == [(60, 4, 1), (60, 4, 2), (120, 4, 2), (240, 4, 2), (480, 4, 2), (1, 1, 1)]
    kinds = [type(m).__name__ for m in disc.nets[0]]
    assert kinds == ["ReflectConv"] + ["GroupNorm", "LeakyReLU", "ReflectConv"] * 4 + ["Conv2d"]
    assert disc.nets[0][1].num_groups == 1 and disc.nets[0][2].negative_slope == 0.2  # LN over (C, H, W)


def test_2d_output_shape_per_scale_and_gradients():
    torch.manual_seed(0)
    disc = MultiScaleDiscriminator(spatial_dims=2, channels=(8, 16, 16, 16))
    x = torch.randn(2, 1, 64, 96, requires_grad=True)
    logits = disc(x)
    assert [tuple(t.shape) for t in logits] == [(2, 1, 4, 6), (2, 1, 2, 3), (2, 1, 1, 1)]
    sum(t.mean() for t in logits).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    assert x.grad.abs().sum() > 0


def test_3d_output_shape_per_scale():
    torch.manual_seed(0)
    disc = MultiScaleDiscriminator(spatial_dims=3, in_channels=1, channels=(4, 8, 8, 8))
    assert _conv_layout(disc)[0] == (4, 4, 1)
    logits = disc(torch.randn(1, 1, 64, 80, 64))
    assert [tuple(t.shape) for t in logits] == [(1, 1, 4, 5, 4), (1, 1, 2, 2, 2), (1, 1, 1, 1, 1)]


def test_scales_have_their_own_weights_and_pooling():
    torch.manual_seed(0)
    disc = MultiScaleDiscriminator(spatial_dims=2, channels=(4, 4), scales=2).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        coarse = disc(x)[1]
        assert torch.allclose(coarse, disc.nets[1](nn.functional.avg_pool2d(x, 2)))
    assert disc.nets[0][0].conv.weight.data_ptr() != disc.nets[1][0].conv.weight.data_ptr()


def test_too_small_input_names_the_minimum():
    disc = MultiScaleDiscriminator(spatial_dims=3, channels=(2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"\(48, 64, 64\) is too small for 3 scales: .* >= 64"):
        disc(torch.zeros(1, 1, 48, 64, 64))


@pytest.mark.parametrize("shape", [(1, 2, 64, 64), (1, 1, 64, 64, 64), (64, 64)])
def test_wrong_layout_is_rejected(shape):
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W\)"):
        MultiScaleDiscriminator(spatial_dims=2, channels=(2, 2, 2, 2))(torch.zeros(shape))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        MultiScaleDiscriminator(spatial_dims=1)
    with pytest.raises(ValueError, match="scales >= 1"):
        MultiScaleDiscriminator(scales=0)
