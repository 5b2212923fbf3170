"""The MedFormer and its GenSeg wiring on 2D slices (``spatial_dims=2``, MoDATTS-2D's segmenter)."""

from __future__ import annotations

import pytest
import torch

from hpc_modatts.models import build_segmenter, count_parameters
from hpc_modatts.models.medformer import MedFormerConfig


@pytest.mark.parametrize(
    "size, genseg, low, high",
    [
        ("full", False, 31.5e6, 32.2e6),
        ("full", True, 39.0e6, 39.8e6),
        ("semi8m", False, 6.2e6, 6.6e6),
        ("tiny", False, 0.08e6, 0.10e6),
    ],
)
def test_parameter_counts_of_2d_sizes(size, genseg, low, high):
    """The 3D sizes with one kernel axis fewer (the thesis gives no 2D size; models/sizes.py)."""
    assert low < count_parameters(build_segmenter(size, genseg=genseg, spatial_dims=2)) < high


def test_2d_state_dict_keys_are_the_3d_keys():
    k2 = set(build_segmenter("tiny", genseg=True, spatial_dims=2).state_dict())
    k3 = set(build_segmenter("tiny", genseg=True).state_dict())
    assert k2 == k3


def test_2d_shapes_unaligned_input_and_genseg_heads():
    torch.manual_seed(0)
    plain = build_segmenter("tiny", spatial_dims=2)
    assert plain(torch.randn(2, 1, 24, 56)).shape == (2, 1, 24, 56)  # padded to 32x64, cropped back
    net = build_segmenter("tiny", genseg=True, spatial_dims=2)
    c, u, skips = net.encode(torch.randn(2, 1, 32, 48))
    assert c.shape == (2, 24, 2, 3) and u.shape == (2, 8, 2, 3)
    healthy, residual = net.decode_common(c, skips), net.decode_residual(c, u, skips)
    assert healthy.shape == residual.shape == (2, 1, 32, 48) and healthy.abs().max() <= 1
    assert net.decode_segmentation(c, u, skips).shape == (2, 1, 32, 48)


def test_2d_input_checks_name_the_axes():
    net = build_segmenter("tiny", spatial_dims=2)
    with pytest.raises(ValueError, match=r"\(B, 1, X, Y\)"):
        net(torch.randn(1, 1, 32, 32, 16))
    with pytest.raises(ValueError, match="map_size"):
        MedFormerConfig(spatial_dims=2)  # a 3x3x3 map on 2D slices
    with pytest.raises(ValueError, match="spatial_dims"):
        build_segmenter("tiny", spatial_dims=4)


def test_every_2d_parameter_gets_a_gradient():
    net = build_segmenter("tiny", genseg=True, spatial_dims=2)
    x = torch.randn(2, 1, 32, 32)
    c, u, skips = net.encode(x)
    loss = (
        net.decode_common(c, skips).sum()
        + net.decode_residual(c, u, skips).sum()
        + net.decode_segmentation(c, u, skips).sum()
    )
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
