"""The building blocks of the MedFormer (``hpc_modatts.models.medformer``), 3D or 2D.

Convolutions, the residual conv block, MBConv, the bidirectional multi-head attention block
(B-MDH) between a feature map and its semantic map, patch merging, semantic-map generation and
fusion. Library blocks where they fit: MONAI's ``ChannelSELayer`` (squeeze-excite in MBConv),
torch's ``TransformerEncoderLayer`` (fusion), ``InstanceNorm3d``, einops (space-to-depth, heads).

Every block takes ``dims`` (3 by default: the thesis's 3D MedFormer; 2: the same block on 2D
slices for MoDATTS-2D, as MONAI's ``spatial_dims`` does): the module structure, hence the
state-dict keys, is the same in both; only the kernels lose an axis. Shapes below are written
for 3D, (B, C, X, Y, Z); in 2D drop Z.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from einops import rearrange
from monai.networks.blocks import ChannelSELayer
from torch import nn

Norm = Callable[[int], nn.Module]

_CONV: dict[int, type[nn.Conv2d] | type[nn.Conv3d]] = {2: nn.Conv2d, 3: nn.Conv3d}
INSTANCE_NORM: dict[int, type[nn.InstanceNorm2d] | type[nn.InstanceNorm3d]] = {
    2: nn.InstanceNorm2d,
    3: nn.InstanceNorm3d,
}
INTERPOLATION = {2: "bilinear", 3: "trilinear"}
"""Up-sampling mode per number of spatial dims (thesis Table 5.2: trilinear in 3D)."""


def check_dims(dims: int) -> int:
    if dims not in _CONV:
        raise ValueError(f"spatial dims must be 2 or 3, got {dims}")
    return dims


def instance_norm(channels: int, dims: int = 3) -> nn.Module:
    """Default normalisation: InstanceNorm3d (InstanceNorm2d in 2D) with affine parameters."""
    return INSTANCE_NORM[check_dims(dims)](channels, affine=True)


def default_norm(dims: int) -> Norm:
    """``instance_norm`` of ``dims`` spatial dims, as a ``Norm`` (channels -> module)."""
    return partial(instance_norm, dims=check_dims(dims))


def conv3(cin: int, cout: int, groups: int = 1, dims: int = 3) -> nn.Module:
    """3x3x3 (3x3 in 2D) convolution, same padding, no bias (a norm follows)."""
    return _CONV[check_dims(dims)](cin, cout, 3, padding=1, groups=groups, bias=False)


def conv1(cin: int, cout: int, bias: bool = False, dims: int = 3) -> nn.Module:
    """1x1x1 (1x1 in 2D) convolution."""
    return _CONV[check_dims(dims)](cin, cout, 1, bias=bias)


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise 3x3x3 then pointwise 1x1x1 (two lines; MONAI has no 3D depthwise-separable block)."""

    def __init__(self, cin: int, cout: int, dims: int = 3):
        super().__init__(conv3(cin, cin, groups=cin, dims=dims), conv1(cin, cout, dims=dims))


class ConvBlock(nn.Module):
    """Pre-activation residual BasicBlock: (norm -> GELU -> conv3) x 2 + shortcut."""

    checkpoint_kind = "conv"

    def __init__(self, cin: int, cout: int, norm: Norm, dims: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            norm(cin), nn.GELU(), conv3(cin, cout, dims=dims), norm(cout), nn.GELU(), conv3(cout, cout, dims=dims)
        )
        self.shortcut = (
            nn.Identity() if cin == cout else nn.Sequential(norm(cin), nn.GELU(), conv1(cin, cout, dims=dims))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, X, Y, Z) -> (B, cout, X, Y, Z)
        return self.body(x) + self.shortcut(x)


class MBConv(nn.Module):
    """Residual inverted bottleneck: 1x1 expand, depthwise 3x3x3, squeeze-excite, 1x1 project."""

    def __init__(self, channels: int, expansion: int, norm: Norm, dims: int = 3):
        super().__init__()
        wide = channels * expansion
        self.body = nn.Sequential(
            norm(channels),
            nn.GELU(),
            conv1(channels, wide, dims=dims),
            norm(wide),
            nn.GELU(),
            conv3(wide, wide, groups=wide, dims=dims),
            ChannelSELayer(dims, wide, r=4),
            norm(wide),
            conv1(wide, channels, dims=dims),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads*d, X, Y, Z) -> (B, heads, XYZ, d) (any number of spatial axes)."""
    return rearrange(t, "b (h d) ... -> b h (...) d", h=heads)


def merge_heads(t: torch.Tensor, shape) -> torch.Tensor:
    """(B, heads, XYZ, d) -> (B, heads*d, X, Y, Z) (``shape`` = the spatial shape)."""
    return rearrange(t, "b h n d -> b (h d) n").unflatten(2, tuple(shape))


class BMDHBlock(nn.Module):
    """Bidirectional multi-head attention between a feature map and its semantic map.

    ONE attention matrix A = q_feat . q_map^T (B, heads, N voxels, M tokens) serves both ways:
    features <- softmax over tokens (A) . v_map; map <- softmax over voxels (A)^T . v_feat.
    Cost is linear in N. Then residual + MBConv on features, residual on the map.
    `update_map=False` (last decoder B-MDH block, whose map nothing reads) builds no map output,
    so every parameter gets a gradient.
    """

    checkpoint_kind = "bmdh"

    def __init__(
        self,
        feat_dim: int,
        map_dim: int,
        out_dim: int,
        heads: int,
        expansion: int,
        norm: Norm,
        update_map: bool = True,
        dims: int = 3,
    ):
        super().__init__()
        self.heads, self.scale = heads, (out_dim // heads) ** -0.5
        self.n_feat_proj = 2 if update_map else 1  # q (and v when the map is updated)
        self.feat_norm, self.map_norm = norm(feat_dim), norm(map_dim)
        self.feat_qv = DepthwiseSeparableConv(feat_dim, out_dim * self.n_feat_proj, dims)
        self.map_qv = conv1(map_dim, 2 * out_dim, dims=dims)
        self.feat_out = DepthwiseSeparableConv(out_dim, out_dim, dims)
        self.map_out = conv1(out_dim, map_dim, dims=dims) if update_map else None
        self.shortcut = (
            nn.Identity()
            if feat_dim == out_dim
            else nn.Sequential(norm(feat_dim), nn.GELU(), conv1(feat_dim, out_dim, dims=dims))
        )
        self.feedforward = MBConv(out_dim, expansion, norm, dims)

    def forward(self, feat: torch.Tensor, smap: torch.Tensor):
        # feat (B, Cf, X, Y, Z); smap (B, Cm, mx, my, mz)
        feat_proj = self.feat_qv(self.feat_norm(feat)).chunk(self.n_feat_proj, dim=1)
        map_q, map_v = self.map_qv(self.map_norm(smap)).chunk(2, dim=1)
        q_feat = split_heads(feat_proj[0], self.heads)  # (B, h, N, d)
        q_map, v_map = split_heads(map_q, self.heads), split_heads(map_v, self.heads)  # (B, h, M, d)
        attn = q_feat @ q_map.transpose(-1, -2) * self.scale  # (B, h, N, M), shared by both directions
        feat_out = merge_heads(attn.softmax(dim=-1) @ v_map, feat.shape[2:])  # (B, C, X, Y, Z)
        out = self.feedforward(self.feat_out(feat_out) + self.shortcut(feat))
        if self.map_out is None:
            return out, smap
        v_feat = split_heads(feat_proj[1], self.heads)  # (B, h, N, d)
        map_out = attn.softmax(dim=-2).transpose(-1, -2) @ v_feat  # (B, h, M, d)
        return out, smap + self.map_out(merge_heads(map_out, smap.shape[2:]))


_SPACE_TO_DEPTH = {2: "b c (x i) (y j) -> b (i j c) x y", 3: "b c (x i) (y j) (z k) -> b (i j k c) x y z"}


class PatchMerging(nn.Module):
    """2x down-sampling: 2x2x2 (2x2 in 2D) space-to-depth, norm, depthwise-separable projection."""

    checkpoint_kind = "conv"

    def __init__(self, cin: int, cout: int, norm: Norm, dims: int = 3):
        super().__init__()
        self.pattern = _SPACE_TO_DEPTH[check_dims(dims)]
        self.factors = dict(zip("ijk", [2] * dims))  # the 2x2(x2) block axes of the pattern
        self.norm, self.proj = norm(2**dims * cin), DepthwiseSeparableConv(2**dims * cin, cout, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 2X, 2Y, 2Z) -> (B, cout, X, Y, Z)
        x = rearrange(x, self.pattern, **self.factors)
        return self.proj(self.norm(x))


class SemanticMapGeneration(nn.Module):
    """Pools features into a fixed grid of map tokens with a learned softmax-over-space weighting."""

    checkpoint_kind = "bmdh"  # part of the B-MDH machinery; its two 3x3x3 convs hold stage-sized activations

    def __init__(self, channels: int, map_dim: int, map_size: tuple[int, ...]):
        super().__init__()
        self.map_size = tuple(map_size)  # its length is the number of spatial dims
        dims = len(self.map_size)
        self.values = conv3(channels, map_dim, dims=dims)
        self.weights = conv3(channels, math.prod(map_size), dims=dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, X, Y, Z) -> (B, map_dim, *map_size)
        values = self.values(x).flatten(2)  # (B, Cm, N)
        weights = self.weights(x).flatten(2).softmax(dim=-1)  # (B, M, N), softmax over space
        return (values @ weights.transpose(1, 2)).unflatten(2, self.map_size)


class SemanticMapFusion(nn.Module):
    """Projects every stage's map to fusion_dim, mixes all tokens with a small transformer, splits back."""

    def __init__(self, widths: tuple[int, ...], fusion_dim: int, depth: int, heads: int, dims: int = 3):
        super().__init__()
        self.in_proj = nn.ModuleList(conv1(w, fusion_dim, dims=dims) for w in widths)
        self.out_proj = nn.ModuleList(conv1(fusion_dim, w, dims=dims) for w in widths)
        layer = nn.TransformerEncoderLayer(
            fusion_dim,
            heads,
            dim_feedforward=fusion_dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        grid = maps[0].shape[2:]
        tokens = [p(m).flatten(2).transpose(1, 2) for p, m in zip(self.in_proj, maps)]  # (B, M, D) each
        mixed = self.transformer(torch.cat(tokens, dim=1)).chunk(len(maps), dim=1)
        return [p(t.transpose(1, 2).unflatten(2, grid)) for p, t in zip(self.out_proj, mixed)]
