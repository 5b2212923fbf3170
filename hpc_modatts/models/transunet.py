"""2D tumour-aware translator: TransUNet R50-ViT-B/16 with one encoder and two decoders.

Thesis 5.4.1 / 5.5.1 ("Architecture"): each modality generator is a TransUNet (Chen et
al.) hybrid "R50-ViT-B/16" whose decoder is duplicated: a translation decoder (tanh) and a
segmentation decoder (logits; ``torch.sigmoid`` gives probabilities) read the SAME encoding.

Written in plain torch (MONAI has no TransUNet, timm is not a dependency and we need two
decoders plus a local-weights loader). Choices, documented:

- Encoder = the original ResNet-V2 hybrid: weight-standardised convs + GroupNorm(32, eps 1e-6),
  post-activation bottlenecks with the stride in the 3x3 conv, stages (3, 4, 9). The max-pool
  uses padding 1 so every feature map is exactly 1/2, 1/4, 1/8, 1/16 of the input (TransUNet
  zero-pads mis-sized maps instead; the weights do not depend on this).
- Decoder norms are GroupNorm (32 groups, fewer where a group would hold < 2 channels)
  instead of TransUNet's BatchNorm: stage 1 runs with a few slices per rank under DeepSpeed,
  where batch statistics are noisy and rank-dependent; GroupNorm has the same parameter count
  and no running buffers.
- Inputs: H and W must be >= 16; sizes that are not multiples of 16 are padded on the
  bottom/right with -1 (the background value of our normalised images, docs/interfaces.md)
  and both outputs are cropped back to (H, W). One-channel inputs are repeated to 3 channels
  so ImageNet weights apply.
- Position embeddings are learned for ``img_size // 16`` squared tokens and bilinearly
  interpolated when the token grid differs (e.g. 240x240 slices -> 15x15 tokens).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MIN_SIZE = 16
"""Smallest accepted H and W (the encoder's output stride)."""
PAD_VALUE = -1.0
"""Padding value for H, W that are not multiples of 16: the background of normalised images."""


@dataclass(frozen=True)
class TransUNetSize:
    """Widths and depths of one translator size."""

    resnet_width: int
    resnet_units: tuple[int, int, int]
    hidden: int
    layers: int
    heads: int
    mlp: int
    decoder_head: int
    decoder_channels: tuple[int, int, int, int]
    img_size: int
    dropout: float = 0.1
    input_skip: bool = False
    """Concatenate the input image to the last decoder block (full resolution). TransUNet's first
    skip is at 1/2 resolution, which blurs every output by ~2 pixels: harmless on 240x240
    slices, but on the CPU demo's 48x56 slices (4 mm) it erased tumours a few voxels wide."""


SIZES = {
    # the published R50-ViT-B/16: ~97.9 M encoder, ~7.4 M per decoder (docs/architecture.md).
    "full": TransUNetSize(64, (3, 4, 9), 768, 12, 12, 3072, 512, (256, 128, 64, 16), 224),
    # Tests and the CPU demo: < 1 M parameters in all.
    "tiny": TransUNetSize(8, (1, 1, 1), 64, 2, 4, 128, 32, (32, 16, 8, 8), 64, input_skip=True),
}


def _groups(channels: int) -> int:
    """32 groups where the channel count allows it (every `full` layer but the 16-channel
    decoder block), with >= 2 channels per group so a 1x1 map still normalises in training."""
    return math.gcd(32, max(channels // 2, 1))


# ----------------------------------------------------------------------------- ResNet-V2 stem
class StdConv2d(nn.Conv2d):
    """Conv with weight standardisation (BiT / ResNet-V2 hybrid of ViT; eps as in the original)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-6)


class Bottleneck(nn.Module):
    """ResNet-V2 hybrid bottleneck: 1x1 -> 3x3 (stride) -> 1x1, GroupNorm, ReLU after the sum."""

    checkpoint_kind = "conv"

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1):
        super().__init__()
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn1 = _gn(cmid)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn2 = _gn(cmid)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.gn3 = _gn(cout)
        self.has_proj = stride != 1 or cin != cout
        if self.has_proj:
            self.conv_proj = StdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = _gn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.gn_proj(self.conv_proj(x)) if self.has_proj else x
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(residual + self.gn3(self.conv3(y)))


class ResNetStem(nn.Module):
    """Root (7x7 s2 conv + max-pool) and three bottleneck stages: 4w, 8w, 16w channels."""

    def __init__(self, width: int, units: tuple[int, int, int], in_channels: int = 3):
        super().__init__()
        self.root = nn.ModuleDict(
            {"conv": StdConv2d(in_channels, width, 7, stride=2, padding=3, bias=False), "gn": _gn(width)}
        )
        self.body = nn.ModuleDict()
        cin = width
        for index, (n_units, factor) in enumerate(zip(units, (1, 2, 4)), start=1):
            stride = 1 if index == 1 else 2
            cout, cmid = width * 4 * factor, width * factor
            block = nn.ModuleDict()
            for u in range(1, n_units + 1):
                block[f"unit{u}"] = Bottleneck(cin, cout, cmid, stride if u == 1 else 1)
                cin = cout
            self.body[f"block{index}"] = block
        self.out_channels = cin
        self.skip_channels = (width * 8, width * 4, width)  # at 1/8, 1/4, 1/2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = F.relu(self.root["gn"](self.root["conv"](x)))  # (B, w, H/2, W/2)
        skips = [x]
        x = F.max_pool2d(x, 3, stride=2, padding=1)  # (B, w, H/4, W/4)
        for name, block in self.body.items():
            for unit in block.values():
                x = unit(x)
            if name != "block3":
                skips.append(x)  # (B, 4w, H/4, W/4), (B, 8w, H/8, W/8)
        return x, skips[::-1]  # (B, 16w, H/16, W/16), [1/8, 1/4, 1/2]


# ----------------------------------------------------------------------------- ViT
class Attention(nn.Module):
    """Multi-head self-attention; separate query/key/value/out projections as in the ViT weights."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, h, N, D/h)

        y = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class TransformerLayer(nn.Module):
    """Pre-norm ViT layer: x + Attn(LN(x)); x + MLP(LN(x)) (GELU, dropout in the MLP)."""

    checkpoint_kind = "vit"

    def __init__(self, hidden: int, heads: int, mlp: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.mlp_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = nn.ModuleDict({"fc1": nn.Linear(hidden, mlp), "fc2": nn.Linear(mlp, hidden)})
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        x = x + self.attn(self.attn_norm(x))
        y = self.dropout(F.gelu(self.mlp["fc1"](self.mlp_norm(x))))
        return x + self.dropout(self.mlp["fc2"](y))


class HybridEncoder(nn.Module):
    """ResNet stem + 1x1 patch embedding + ViT on the 1/16 map; returns (hidden map, skips)."""

    def __init__(self, size: TransUNetSize, in_channels: int = 3):
        super().__init__()
        self.grid = size.img_size // MIN_SIZE
        self.resnet = ResNetStem(size.resnet_width, size.resnet_units, in_channels)
        self.embed = nn.Conv2d(self.resnet.out_channels, size.hidden, 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, size.hidden))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.dropout = nn.Dropout(size.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(size.hidden, size.heads, size.mlp, size.dropout) for _ in range(size.layers)
        )
        self.norm = nn.LayerNorm(size.hidden, eps=1e-6)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """(1, h*w, D): the learned grid, bilinearly resized when (h, w) differs from it."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, (h, w))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, skips = self.resnet(x)  # (B, 16w, h, w)
        x = self.embed(x)  # (B, D, h, w)
        b, d, h, w = x.shape
        tokens = self.dropout(x.flatten(2).transpose(1, 2) + self.position_embedding(h, w))  # (B, h*w, D)
        for layer in self.layers:
            tokens = layer(tokens)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(b, d, h, w), skips


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, g*g, D) square grid of position embeddings -> (1, h*w, D), bilinear."""
    g = math.isqrt(pos.shape[1])
    if g * g != pos.shape[1]:
        raise ValueError(f"position embedding of {pos.shape[1]} tokens is not a square grid")
    img = pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    img = F.interpolate(img, size=grid, mode="bilinear", align_corners=False)
    return img.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------- decoder
class ConvNormAct(nn.Sequential):
    """3x3 conv (no bias) -> GroupNorm -> ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(_groups(cout), cout), nn.ReLU())


class DecoderBlock(nn.Module):
    """Bilinear x2 upsample, concatenate the skip (if any), two ConvNormAct."""

    checkpoint_kind = "conv"

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv1 = ConvNormAct(cin + cskip, cout)
        self.conv2 = ConvNormAct(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class CascadedDecoder(nn.Module):
    """TransUNet "cascaded upsampler": conv hidden->head, 4 decoder blocks, 3x3 conv head."""

    def __init__(
        self, size: TransUNetSize, skip_channels: tuple[int, int, int], out_channels: int, input_channels: int = 0
    ):
        super().__init__()
        channels = size.decoder_channels
        self.conv_more = ConvNormAct(size.hidden, size.decoder_head)
        ins = (size.decoder_head, *channels[:-1])
        # the last block (1/2 -> 1/1) has no skip in TransUNet; the input with size.input_skip
        skips = (*skip_channels, input_channels if size.input_skip else 0)
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, channels))
        self.head = nn.Conv2d(channels[-1], out_channels, 3, padding=1)

    def forward(self, hidden: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv_more(hidden)  # (B, head, H/16, W/16)
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return self.head(x)  # (B, out, H, W)


# ----------------------------------------------------------------------------- translator
class EncodedFeatures(NamedTuple):
    """What `encode` returns: the ViT map, the ResNet skips, and the input (H, W) to crop back to."""

    hidden: torch.Tensor  # (B, D, H'/16, W'/16), H', W' padded to multiples of 16
    skips: list[torch.Tensor]  # [(B, 8w, H'/8, W'/8), (B, 4w, H'/4, W'/4), (B, w, H'/2, W'/2)]
    size: tuple[int, int]


class TransUNetTranslator(nn.Module):
    """One hybrid encoder, a translation decoder (tanh) and a segmentation decoder (logits)."""

    def __init__(self, size: TransUNetSize, in_channels: int = 1, seg_channels: int = 1):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.size = size
        self.in_channels = in_channels
        stem_channels = 3 if in_channels in (1, 3) else in_channels
        self.encoder = HybridEncoder(size, stem_channels)
        skip_channels = self.encoder.resnet.skip_channels
        self.translation_decoder = CascadedDecoder(size, skip_channels, in_channels, in_channels)
        self.segmentation_decoder = CascadedDecoder(size, skip_channels, seg_channels, in_channels)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check (B, C, H, W), repeat 1 -> 3 channels, pad H, W up to multiples of 16 with -1."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"translator expects (B, {self.in_channels}, H, W) input, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(f"translator input {h}x{w} is smaller than the minimum {MIN_SIZE}x{MIN_SIZE}")
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        pad_h, pad_w = -h % MIN_SIZE, -w % MIN_SIZE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=PAD_VALUE)
        return x

    def encode(self, x: torch.Tensor) -> EncodedFeatures:
        """(B, C, H, W) -> EncodedFeatures shared by both decoders."""
        prepared = self._prepare(x)  # (B, 3 or C, H', W')
        hidden, skips = self.encoder(prepared)
        if self.size.input_skip:  # full-resolution skip: the input itself
            skips = [*skips, prepared[:, : self.in_channels]]
        return EncodedFeatures(hidden, skips, (x.shape[-2], x.shape[-1]))

    def translate(self, feats: EncodedFeatures) -> torch.Tensor:
        """Translated image (B, C, H, W) in [-1, 1] (tanh)."""
        h, w = feats.size
        return torch.tanh(self.translation_decoder(feats.hidden, feats.skips)[..., :h, :w])

    def segment(self, feats: EncodedFeatures) -> torch.Tensor:
        """Tumour logits (B, seg_channels, H, W); sigmoid gives probabilities."""
        h, w = feats.size
        return self.segmentation_decoder(feats.hidden, feats.skips)[..., :h, :w]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encode(x)
        return self.translate(feats), self.segment(feats)
