"""The building blocks of the 3D MedFormer (``hpc_modatts.models.medformer``).

Convolutions, the residual conv block, MBConv, the bidirectional multi-head attention block
(B-MDH) between a feature map and its semantic map, patch merging, semantic-map generation and
fusion. Library blocks where they fit: MONAI's ``ChannelSELayer`` (squeeze-excite in MBConv),
torch's ``TransformerEncoderLayer`` (fusion), ``InstanceNorm3d``, einops (space-to-depth, heads).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from einops import rearrange
from monai.networks.blocks import ChannelSELayer
from torch import nn

Norm = Callable[[int], nn.Module]

def instance_norm(channels: int) -> nn.Module:
    """Default normalisation: InstanceNorm3d with affine parameters."""
    return nn.InstanceNorm3d(channels, affine=True)


def conv3(cin: int, cout: int, groups: int = 1) -> nn.Conv3d:
    """3x3x3 convolution, same padding, no bias (a norm follows)."""
    return nn.Conv3d(cin, cout, 3, padding=1, groups=groups, bias=False)


def conv1(cin: int, cout: int, bias: bool = False) -> nn.Conv3d:
    """1x1x1 convolution."""
    return nn.Conv3d(cin, cout, 1, bias=bias)


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise 3x3x3 then pointwise 1x1x1 (two lines; MONAI has no 3D depthwise-separable block)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(conv3(cin, cin, groups=cin), conv1(cin, cout))


class ConvBlock(nn.Module):
    """Pre-activation residual BasicBlock: (norm -> GELU -> conv3) x 2 + shortcut."""

    checkpoint_kind = "conv"

    def __init__(self, cin: int, cout: int, norm: Norm):
        super().__init__()
        self.body = nn.Sequential(norm(cin), nn.GELU(), conv3(cin, cout), norm(cout), nn.GELU(), conv3(cout, cout))
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(norm(cin), nn.GELU(), conv1(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, X, Y, Z) -> (B, cout, X, Y, Z)
        return self.body(x) + self.shortcut(x)


class MBConv(nn.Module):
    """Residual inverted bottleneck: 1x1 expand, depthwise 3x3x3, squeeze-excite, 1x1 project."""

    def __init__(self, channels: int, expansion: int, norm: Norm):
        super().__init__()
        wide = channels * expansion
        self.body = nn.Sequential(
            norm(channels), nn.GELU(), conv1(channels, wide),
            norm(wide), nn.GELU(), conv3(wide, wide, groups=wide),
            ChannelSELayer(3, wide, r=4),
            norm(wide), conv1(wide, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads*d, X, Y, Z) -> (B, heads, XYZ, d)."""
    return rearrange(t, "b (h d) x y z -> b h (x y z) d", h=heads)


def merge_heads(t: torch.Tensor, shape) -> torch.Tensor:
    """(B, heads, XYZ, d) -> (B, heads*d, X, Y, Z)."""
    return rearrange(t, "b h (x y z) d -> b (h d) x y z", x=shape[0], y=shape[1], z=shape[2])


class BMDHBlock(nn.Module):
    """Bidirectional multi-head attention between a feature map and its semantic map.

    ONE attention matrix A = q_feat . q_map^T (B, heads, N voxels, M tokens) serves both ways:
    features <- softmax over tokens (A) . v_map; map <- softmax over voxels (A)^T . v_feat.
    Cost is linear in N. Then residual + MBConv on features, residual on the map.
    `update_map=False` (last decoder B-MDH block, whose map nothing reads) builds no map output,
    so every parameter gets a gradient.
    """

    checkpoint_kind = "bmdh"

    def __init__(self, feat_dim: int, map_dim: int, out_dim: int, heads: int, expansion: int,
                 norm: Norm, update_map: bool = True):
        super().__init__()
        self.heads, self.scale = heads, (out_dim // heads) ** -0.5
        self.n_feat_proj = 2 if update_map else 1  # q (and v when the map is updated)
        self.feat_norm, self.map_norm = norm(feat_dim), norm(map_dim)
        self.feat_qv = DepthwiseSeparableConv(feat_dim, out_dim * self.n_feat_proj)
        self.map_qv = conv1(map_dim, 2 * out_dim)
        self.feat_out = DepthwiseSeparableConv(out_dim, out_dim)
        self.map_out = conv1(out_dim, map_dim) if update_map else None
        self.shortcut = (nn.Identity() if feat_dim == out_dim
                         else nn.Sequential(norm(feat_dim), nn.GELU(), conv1(feat_dim, out_dim)))
        self.feedforward = MBConv(out_dim, expansion, norm)

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


class PatchMerging(nn.Module):
    """2x down-sampling: 2x2x2 space-to-depth, norm, depthwise-separable projection."""

    checkpoint_kind = "conv"

    def __init__(self, cin: int, cout: int, norm: Norm):
        super().__init__()
        self.norm, self.proj = norm(8 * cin), DepthwiseSeparableConv(8 * cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 2X, 2Y, 2Z) -> (B, cout, X, Y, Z)
        x = rearrange(x, "b c (x i) (y j) (z k) -> b (i j k c) x y z", i=2, j=2, k=2)
        return self.proj(self.norm(x))


class SemanticMapGeneration(nn.Module):
    """Pools features into a fixed grid of map tokens with a learned softmax-over-space weighting."""

    checkpoint_kind = "bmdh"  # part of the B-MDH machinery; its two 3x3x3 convs hold stage-sized activations

    def __init__(self, channels: int, map_dim: int, map_size: tuple[int, int, int]):
        super().__init__()
        self.map_size = tuple(map_size)
        self.values, self.weights = conv3(channels, map_dim), conv3(channels, math.prod(map_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, X, Y, Z) -> (B, map_dim, *map_size)
        values = self.values(x).flatten(2)  # (B, Cm, N)
        weights = self.weights(x).flatten(2).softmax(dim=-1)  # (B, M, N), softmax over space
        return (values @ weights.transpose(1, 2)).unflatten(2, self.map_size)


class SemanticMapFusion(nn.Module):
    """Projects every stage's map to fusion_dim, mixes all tokens with a small transformer, splits back."""

    def __init__(self, dims: tuple[int, ...], fusion_dim: int, depth: int, heads: int):
        super().__init__()
        self.in_proj = nn.ModuleList(conv1(d, fusion_dim) for d in dims)
        self.out_proj = nn.ModuleList(conv1(fusion_dim, d) for d in dims)
        layer = nn.TransformerEncoderLayer(fusion_dim, heads, dim_feedforward=fusion_dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        grid = maps[0].shape[2:]
        tokens = [p(m).flatten(2).transpose(1, 2) for p, m in zip(self.in_proj, maps)]  # (B, M, D) each
        mixed = self.transformer(torch.cat(tokens, dim=1)).chunk(len(maps), dim=1)
        return [p(t.transpose(1, 2).unflatten(2, grid)) for p, t in zip(self.out_proj, mixed)]
