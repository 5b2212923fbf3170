"""MedFormer (Gao et al., "A data-scalable transformer for medical image segmentation"), 3D or 2D.

MONAI has no MedFormer (docs/architecture.md, "Measured facts"), so the blocks are our own code, written from
the published design (docs/architecture.md "Published designs"; thesis 5.4.2 and Table 5.2); they
live in ``medformer_blocks``, this module assembles them (stages, encoder, decoder, network).

Layout (total stride 16, five resolutions): stem at full resolution -> 4 down stages
(conv, then 3 B-MDH stages that also emit semantic maps) -> semantic-map fusion -> 2 B-MDH up
stages -> 2 conv up stages -> 1x1x1 head.

Down-sampling: Table 5.2 says "2x down-scaling with tri-linear interpolation"; we use patch
merging (2x2x2 space-to-depth + norm + depthwise-separable projection), as the reference MedFormer
class the authors ran does. It is lossless before the learned projection (trilinear
down-sampling throws away high frequencies before any weight sees them) and it reproduces the
published parameter counts. Up-sampling is trilinear x2 as in the thesis.

``MedFormerConfig.spatial_dims = 2`` builds the same network on 2D slices (every kernel loses its
last axis; the semantic map is ``map_size[:2]``): MoDATTS-2D's segmenter (thesis 5.5.1 "Model
comparison" evaluates "a 2D version of MoDATTS" without describing its network; the reference
MedFormer code the authors ran has a 2D and a 3D model of the same design).

Inputs whose spatial shape is not a multiple of 16 are padded at the far end of each axis (by
default with the constant -1, the background value of our images, so padding looks like more
background; `pad_mode="reflect"` mirrors instead) and every output is cropped back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hpc_modatts.models.medformer_blocks import (
    INTERPOLATION,
    BMDHBlock,
    ConvBlock,
    Norm,
    PatchMerging,
    SemanticMapFusion,
    SemanticMapGeneration,
    conv1,
    conv3,
    default_norm,
)

STRIDE = 16  # four 2x down stages


@dataclass(frozen=True)
class MedFormerConfig:
    """Widths and depths of the 8 stages: [down1, down2, down3, down4, up1, up2, up3, up4].

    down1/up3/up4 are convolution stages; down2-4 and up1-2 are B-MDH (transformer) stages.
    """

    base_channels: int = 32
    """Width of the full-resolution stem."""
    channels: tuple[int, ...] = (64, 128, 256, 320, 256, 128, 64, 32)
    """Output width of each stage; channels[3] is the bottleneck width."""
    conv_blocks: tuple[int, ...] = (2, 0, 0, 0, 0, 0, 2, 2)
    """Residual BasicBlocks per stage."""
    bmdh_blocks: tuple[int, ...] = (0, 2, 4, 6, 4, 2, 0, 0)
    """B-MDH blocks per stage (only stages 1-5 may have them; up stages 4-5 need >= 1)."""
    heads: tuple[int, ...] = (1, 2, 8, 10, 8, 4, 1, 1)
    """Attention heads per stage (thesis Table 5.2)."""
    map_size: tuple[int, ...] = (3, 3, 3)
    """Semantic-map grid: tokens each B-MDH stage attends to (one value per spatial dim)."""
    fusion_dim: int = 320
    """Token width inside the semantic-map fusion transformer."""
    fusion_depth: int = 2
    """Layers of the fusion transformer."""
    fusion_heads: int = 10
    """Heads of the fusion transformer."""
    expansion: int = 4
    """MBConv expansion in the B-MDH feed-forward."""
    pad_mode: str = "constant"
    """How inputs are padded to a multiple of 16: constant (pad_value), reflect or replicate."""
    pad_value: float = -1.0
    """Constant used by pad_mode="constant" (-1 = image background)."""
    spatial_dims: int = 3
    """3 = the thesis's 3D MedFormer on (B, C, X, Y, Z); 2 = the same design on axial slices
    (B, C, X, Y) (MoDATTS-2D; ``in_2d``)."""

    def in_2d(self) -> MedFormerConfig:
        """This size on 2D slices: same widths and depths, semantic map ``map_size[:2]``."""
        return dataclasses.replace(self, spatial_dims=2, map_size=tuple(self.map_size[:2]))

    def __post_init__(self):
        for name in ("channels", "conv_blocks", "bmdh_blocks", "heads"):
            if len(getattr(self, name)) != 8:
                raise ValueError(f"MedFormerConfig.{name} needs 8 values, got {getattr(self, name)}")
        for i in (0, 6, 7):
            if self.bmdh_blocks[i]:
                raise ValueError(f"MedFormerConfig.bmdh_blocks[{i}] must be 0 (convolution stage)")
        for i in (4, 5):
            if self.bmdh_blocks[i] < 1:
                raise ValueError(f"MedFormerConfig.bmdh_blocks[{i}] must be >= 1 (B-MDH up stage)")
        for i in (6, 7):
            if self.conv_blocks[i] < 1:
                raise ValueError(f"MedFormerConfig.conv_blocks[{i}] must be >= 1 (convolution up stage)")
        for i in range(1, 6):
            if self.channels[i] % self.heads[i]:
                raise ValueError(
                    f"MedFormerConfig: channels[{i}]={self.channels[i]} not divisible by heads[{i}]={self.heads[i]}"
                )
        if self.fusion_dim % self.fusion_heads:
            raise ValueError(
                f"MedFormerConfig: fusion_dim={self.fusion_dim} not divisible by fusion_heads={self.fusion_heads}"
            )
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"MedFormerConfig.spatial_dims={self.spatial_dims} must be 2 or 3")
        if len(self.map_size) != self.spatial_dims or math.prod(self.map_size) < 2:
            raise ValueError(
                f"MedFormerConfig.map_size={self.map_size} needs {self.spatial_dims} values and >= 2 tokens"
            )
        if self.pad_mode not in ("constant", "reflect", "replicate"):
            raise ValueError(f"MedFormerConfig.pad_mode={self.pad_mode!r} must be constant, reflect or replicate")


class ConvDownStage(nn.Module):
    """Patch merging + conv blocks (no semantic map)."""

    def __init__(self, cin: int, cout: int, n_conv: int, norm: Norm, dims: int = 3):
        super().__init__()
        self.merge = PatchMerging(cin, cout, norm, dims)
        self.convs = nn.Sequential(*(ConvBlock(cout, cout, norm, dims) for _ in range(n_conv)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(self.merge(x))


class TransformerDownStage(nn.Module):
    """Patch merging + conv blocks + semantic map generation + B-MDH blocks."""

    def __init__(self, cin: int, cout: int, n_conv: int, n_bmdh: int, heads: int, cfg: MedFormerConfig, norm: Norm):
        super().__init__()
        dims = cfg.spatial_dims
        self.merge = PatchMerging(cin, cout, norm, dims)
        self.convs = nn.Sequential(*(ConvBlock(cout, cout, norm, dims) for _ in range(n_conv)))
        self.map_gen = SemanticMapGeneration(cout, cout, cfg.map_size)
        self.blocks = nn.ModuleList(
            BMDHBlock(cout, cout, cout, heads, cfg.expansion, norm, dims=dims) for _ in range(n_bmdh)
        )

    def forward(self, x: torch.Tensor):
        x = self.convs(self.merge(x))
        smap = self.map_gen(x)
        for block in self.blocks:
            x, smap = block(x, smap)
        return x, smap


class PassSkip(nn.Module):
    """The long skip as is: ``forward(up, skip) -> skip``. The up stages call ``self.gate(up, skip)``
    on the skip before the concatenation; M-GenSeg (``models.mgenseg``) swaps in attention gates
    (thesis 4.3.3). No parameters, so the state-dict keys of ungated networks are unchanged."""

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return skip


class TransformerUpStage(nn.Module):
    """Trilinear x2 up-sampling, concat the (gated) long skip, fuse maps (1x1x1), B-MDH blocks, conv blocks."""

    checkpoint_kind = "decoder"

    def __init__(
        self,
        cin: int,
        cskip: int,
        cout: int,
        map_in: int,
        skip_map: int,
        n_conv: int,
        n_bmdh: int,
        heads: int,
        cfg: MedFormerConfig,
        norm: Norm,
        last_updates_map: bool,
    ):
        super().__init__()
        dims, self.mode = cfg.spatial_dims, INTERPOLATION[cfg.spatial_dims]
        self.map_reduction = conv1(map_in + skip_map, cout, dims=dims)
        widths = [cin + cskip] + [cout] * (n_bmdh - 1)
        updates = [True] * (n_bmdh - 1) + [last_updates_map]
        self.blocks = nn.ModuleList(
            BMDHBlock(w, cout, cout, heads, cfg.expansion, norm, u, dims) for w, u in zip(widths, updates)
        )
        self.convs = nn.Sequential(*(ConvBlock(cout, cout, norm, dims) for _ in range(n_conv)))
        self.gate: nn.Module = PassSkip()

    def forward(self, x, skip, smap, skip_map):
        up = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False)
        x = torch.cat([up, self.gate(up, skip)], dim=1)
        smap = self.map_reduction(torch.cat([smap, skip_map], dim=1))
        for block in self.blocks:
            x, smap = block(x, smap)
        return self.convs(x), smap


class ConvUpStage(nn.Module):
    """Trilinear x2 up-sampling, concat the (gated) long skip, conv blocks."""

    checkpoint_kind = "decoder"

    def __init__(self, cin: int, cskip: int, cout: int, n_conv: int, norm: Norm, dims: int = 3):
        super().__init__()
        self.mode = INTERPOLATION[dims]
        widths = [cin + cskip] + [cout] * n_conv
        self.convs = nn.Sequential(*(ConvBlock(a, b, norm, dims) for a, b in zip(widths[:-1], widths[1:])))
        self.gate: nn.Module = PassSkip()

    def forward(self, x, skip):
        up = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False)
        return self.convs(torch.cat([up, self.gate(up, skip)], dim=1))


class EncoderSkips(NamedTuple):
    """What the encoder hands every decoder besides the bottleneck."""

    features: tuple  # x0 (full res, base) .. x3 (1/8), the long skips
    maps: tuple  # fused semantic maps of down stages 2, 3, 4
    shape: tuple  # spatial shape of the unpadded input, outputs are cropped to it


def pad_to_stride(x: torch.Tensor, cfg: MedFormerConfig, in_channels: int) -> torch.Tensor:
    """Validate (B, C, X, Y, Z) ((B, C, X, Y) in 2D) and pad the far end of each axis up to a multiple of 16."""
    if x.dim() != 2 + cfg.spatial_dims or x.shape[1] != in_channels:
        axes = "X, Y, Z" if cfg.spatial_dims == 3 else "X, Y"
        raise ValueError(f"MedFormer expects input (B, {in_channels}, {axes}), got shape {tuple(x.shape)}")
    shape = tuple(x.shape[2:])
    padded = [math.ceil(s / STRIDE) * STRIDE for s in shape]
    if min(shape) < STRIDE or math.prod(padded) < 2 * STRIDE**cfg.spatial_dims:
        raise ValueError(
            f"MedFormer input spatial shape {shape} is too small: each axis needs >= {STRIDE} voxels "
            f"and at least one axis > {STRIDE} (the 1/16 bottleneck needs > 1 voxel)"
        )
    pads = [v for s, p in zip(reversed(shape), reversed(padded)) for v in (0, p - s)]
    if not any(pads):
        return x
    if cfg.pad_mode == "constant":
        return F.pad(x, pads, mode="constant", value=cfg.pad_value)
    return F.pad(x, pads, mode=cfg.pad_mode)


def crop(x: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Undo `pad_to_stride`: (B, C, X', Y', Z') -> (B, C, *shape) (any number of spatial axes)."""
    return x[(slice(None), slice(None), *(slice(0, s) for s in shape))]


class MedFormerEncoder(nn.Module):
    """Stem, 4 down stages, semantic-map fusion. forward(x) -> (bottleneck (B, channels[3], X/16, ..), skips)."""

    def __init__(self, cfg: MedFormerConfig, in_channels: int = 1, norm: Norm | None = None):
        super().__init__()
        self.cfg, self.in_channels = cfg, in_channels
        ch, base, dims = cfg.channels, cfg.base_channels, cfg.spatial_dims
        norm = norm or default_norm(dims)
        self.stem = nn.Sequential(conv3(in_channels, base, dims=dims), ConvBlock(base, base, norm, dims))
        self.down1 = ConvDownStage(base, ch[0], cfg.conv_blocks[0], norm, dims)
        self.down = nn.ModuleList(
            TransformerDownStage(ch[i - 1], ch[i], cfg.conv_blocks[i], cfg.bmdh_blocks[i], cfg.heads[i], cfg, norm)
            for i in (1, 2, 3)
        )
        self.fusion = SemanticMapFusion(ch[1:4], cfg.fusion_dim, cfg.fusion_depth, cfg.fusion_heads, dims)

    def forward(self, x: torch.Tensor):
        shape = tuple(x.shape[2:])
        x0 = self.stem(pad_to_stride(x, self.cfg, self.in_channels))  # (B, base, X, Y, Z)
        features, maps = [x0, self.down1(x0)], []  # x1: (B, ch0, X/2, ..)
        for stage in self.down:
            h, smap = stage(features[-1])
            features.append(h)
            maps.append(smap)
        return features[-1], EncoderSkips(tuple(features[:-1]), tuple(self.fusion(maps)), shape)


class MedFormerDecoder(nn.Module):
    """2 B-MDH up stages + 2 conv up stages. forward(bottleneck, skips) -> (B, channels[7], padded X, Y, Z)."""

    def __init__(self, cfg: MedFormerConfig, norm: Norm | None = None):
        super().__init__()
        ch, base, nc, nb, hd = cfg.channels, cfg.base_channels, cfg.conv_blocks, cfg.bmdh_blocks, cfg.heads
        norm, dims = norm or default_norm(cfg.spatial_dims), cfg.spatial_dims
        self.up1 = TransformerUpStage(ch[3], ch[2], ch[4], ch[3], ch[2], nc[4], nb[4], hd[4], cfg, norm, True)
        self.up2 = TransformerUpStage(ch[4], ch[1], ch[5], ch[4], ch[1], nc[5], nb[5], hd[5], cfg, norm, False)
        self.up3 = ConvUpStage(ch[5], ch[0], ch[6], nc[6], norm, dims)
        self.up4 = ConvUpStage(ch[6], base, ch[7], nc[7], norm, dims)

    def forward(self, bottleneck: torch.Tensor, skips: EncoderSkips) -> torch.Tensor:
        x0, x1, x2, x3 = skips.features
        map2, map3, map4 = skips.maps
        h, smap = self.up1(bottleneck, x3, map4, map3)
        h, _ = self.up2(h, x2, smap, map2)
        return self.up4(self.up3(h, x1), x0)


class MedFormer(nn.Module):
    """Plain segmenter: forward(x (B, in_channels, X, Y, Z)) -> logits (B, out_channels, X, Y, Z)
    ((B, C, X, Y) in and out when ``cfg.spatial_dims == 2``)."""

    def __init__(self, cfg: MedFormerConfig | None = None, in_channels: int = 1, out_channels: int = 1):
        super().__init__()
        self.cfg = cfg or MedFormerConfig()
        self.encoder = MedFormerEncoder(self.cfg, in_channels)
        self.decoder = MedFormerDecoder(self.cfg)
        self.head = conv1(self.cfg.channels[7], out_channels, bias=True, dims=self.cfg.spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bottleneck, skips = self.encoder(x)
        return self.head(crop(self.decoder(bottleneck, skips), skips.shape))
