"""GenSeg wiring of the MedFormer for the semi-supervised segmentation stage (thesis 5.4.2).

3D as in the thesis, or 2D when the config's ``spatial_dims`` is 2 (MoDATTS-2D: GenSeg on axial
slices, as M-GenSeg does, thesis chapter 4); shapes below are written for 3D.

One encoder E; its bottleneck (B, W, X/16, Y/16, Z/16) is split channel-wise into a common code c
(`common_fraction` of W, 3/4 in the authors' code) and a unique code u (the rest).
- Common decoder G_com: an extra 1x1x1 conv maps c back to W (Table 5.2 caption), then a
  MedFormer decoder and a tanh image head.
- Residual/segmentation decoder: ONE MedFormer decoder fed cat(c, u) (width W) whose every
  normalisation layer is a `SwitchableNorm` holding two InstanceNorm3d parameter sets, plus two
  1x1x1 heads (tanh residual, segmentation logits). So G_seg shares all of G_res's weights except
  its norms and its output layer, as the paper describes (the authors' released config built a
  separate decoder; `separate_seg_decoder=True` reproduces that for ablation).
- Long skips: every decoder receives the encoder's skips (features and fused semantic maps) of the
  image being decoded, as in the reference GenSeg/MoDATTS code. The skips carry anatomy; the
  tumour-specific information must pass through u, because the residual decoder is also run with
  u ~ N(0, I) on healthy inputs (A->P) and must then draw a tumour from u alone.

The norm mode is a module attribute set by a context manager (`norm_mode`), never an `if` in the
blocks. `SwitchableNorm.recompute_state` lets activation checkpointing replay the forward-time mode
when it recomputes a block during backward (see checkpointing.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from hpc_modatts.models.medformer import EncoderSkips, MedFormerConfig, MedFormerDecoder, MedFormerEncoder, crop
from hpc_modatts.models.medformer_blocks import INSTANCE_NORM, check_dims, conv1, default_norm

NORM_MODES = ("residual", "segmentation")


class SwitchableNorm(nn.Module):
    """Two InstanceNorm3d(affine=True) (InstanceNorm2d in 2D) parameter sets; `mode` selects the one used."""

    def __init__(self, channels: int, dims: int = 3):
        super().__init__()
        norm = INSTANCE_NORM[check_dims(dims)]
        self.norms = nn.ModuleDict({m: norm(channels, affine=True) for m in NORM_MODES})
        self.mode = NORM_MODES[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.mode](x)

    @property
    def recompute_state(self) -> str:
        """State that activation checkpointing captures at forward and restores for recomputation."""
        return self.mode

    @recompute_state.setter
    def recompute_state(self, mode: str) -> None:
        self.mode = mode


@contextmanager
def norm_mode(module: nn.Module, mode: str):
    """Within the block every SwitchableNorm under `module` uses `mode`; previous modes restored after."""
    if mode not in NORM_MODES:
        raise ValueError(f"norm mode {mode!r} must be one of {NORM_MODES}")
    switches = [m for m in module.modules() if isinstance(m, SwitchableNorm)]
    previous = [m.mode for m in switches]
    for m in switches:
        m.mode = mode
    try:
        yield module
    finally:
        for m, old in zip(switches, previous):
            m.mode = old


class GenSegMedFormer(nn.Module):
    """Encoder + common decoder + shared residual/segmentation decoder (see module docstring).

    Interface (docs/interfaces.md): segment(x) -> logits; encode(x) -> (c, u, skips);
    decode_common(c, skips) -> image (tanh); decode_residual(c, u, skips) -> residual (tanh);
    decode_segmentation(c, u, skips) -> logits; sample_u(like_u) -> N(0, I); forward = segment.
    """

    def __init__(
        self,
        cfg: MedFormerConfig | None = None,
        in_channels: int = 1,
        common_fraction: float = 0.75,
        separate_seg_decoder: bool = False,
    ):
        super().__init__()
        self.cfg = cfg = cfg or MedFormerConfig()
        width, out_width = cfg.channels[3], cfg.channels[7]
        self.common_channels = round(width * common_fraction)
        if not 0 < self.common_channels < width:
            raise ValueError(
                f"common_fraction={common_fraction} leaves no common or no unique channel "
                f"of the {width}-channel bottleneck"
            )
        self.unique_channels = width - self.common_channels
        self.separate_seg_decoder = separate_seg_decoder
        dims = cfg.spatial_dims
        self.encoder = MedFormerEncoder(cfg, in_channels)
        self.common_in = conv1(self.common_channels, width, bias=True, dims=dims)  # c -> encoder width
        self.common_decoder = MedFormerDecoder(cfg)
        self.common_head = conv1(out_width, in_channels, bias=True, dims=dims)
        shared_norm = default_norm(dims) if separate_seg_decoder else partial(SwitchableNorm, dims=dims)
        self.res_seg_decoder = MedFormerDecoder(cfg, shared_norm)
        self.seg_decoder = MedFormerDecoder(cfg) if separate_seg_decoder else None
        self.residual_head = conv1(out_width, in_channels, bias=True, dims=dims)
        self.segmentation_head = conv1(out_width, 1, bias=True, dims=dims)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, EncoderSkips]:
        """x (B, C, X, Y, Z) -> c (B, Wc, X/16, ..), u (B, Wu, X/16, ..), skips."""
        bottleneck, skips = self.encoder(x)
        c, u = bottleneck.split([self.common_channels, self.unique_channels], dim=1)
        return c, u, skips

    def sample_u(self, like_u: torch.Tensor) -> torch.Tensor:
        """A unique code for healthy inputs: N(0, I) shaped like `like_u`."""
        return torch.randn_like(like_u)

    def decode_common(self, c: torch.Tensor, skips: EncoderSkips) -> torch.Tensor:
        """Healthy-looking image (B, C, X, Y, Z) in [-1, 1]."""
        features = self.common_decoder(self.common_in(c), skips)
        return torch.tanh(self.common_head(crop(features, skips.shape)))

    def decode_residual(self, c: torch.Tensor, u: torch.Tensor, skips: EncoderSkips) -> torch.Tensor:
        """Tumour residual (B, C, X, Y, Z) in [-1, 1] (added to the common image)."""
        features = self._shared_decode("residual", c, u, skips)
        return torch.tanh(self.residual_head(features))

    def decode_segmentation(self, c: torch.Tensor, u: torch.Tensor, skips: EncoderSkips) -> torch.Tensor:
        """Segmentation logits (B, 1, X, Y, Z); sigmoid gives probabilities."""
        return self.segmentation_head(self._shared_decode("segmentation", c, u, skips))

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        c, u, skips = self.encode(x)
        return self.decode_segmentation(c, u, skips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(x)

    def _shared_decode(self, mode: str, c, u, skips: EncoderSkips) -> torch.Tensor:
        """Run the residual/segmentation decoder (or the separate one) with `mode`'s norms; cropped."""
        decoder = self.res_seg_decoder
        if mode == "segmentation" and self.seg_decoder is not None:  # separate_seg_decoder
            decoder = self.seg_decoder
        with norm_mode(decoder, mode):
            features = decoder(torch.cat([c, u], dim=1), skips)
        return crop(features, skips.shape)
