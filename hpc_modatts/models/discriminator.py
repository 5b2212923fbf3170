"""Multi-scale convolutional discriminator, 2D (stage 1) or 3D (stage 2 GenSeg), and the pair of
them a GAN stage trains (``DiscriminatorPair``: one per domain).

Thesis 5.5.1, Table 5.1 (same layers in 2D and 3D, kernels extended to 3D), per scale:

    C(60, 4x4, s1) -> LN+LR+C(60, s2) -> LN+LR+C(120, s2) -> LN+LR+C(240, s2) -> LN+LR+C(480, s2)
    -> C(1, 1x1, s1)

i.e. with ``channels=(60, 120, 240, 480)`` a stride-1 conv to ``channels[0]``, then one
pre-activation block per entry of ``channels`` (LayerNorm, LeakyReLU(0.2), 4x4 stride-2 conv),
then a 1x1 conv to one logit map (output stride 16). The input is average-pooled by 2 between
scales; each scale has its own weights. Choices, documented:

- LayerNorm is per sample over (C, *spatial) with a per-channel affine, i.e.
  ``nn.GroupNorm(1, C)`` (the MUNIT-style layer norm of image discriminators); it does not
  depend on the batch and works for any spatial size.
- Convs (with bias) use reflect padding: 1 on each side for the
  stride-2 4x4 convs (exact halving of even sizes), (1, 2) for the stride-1 4x4 conv.
- Reflect padding needs at least 2 voxels per axis at every stride-2 conv, so each spatial
  dim of the input must be >= 2**len(channels) * 2**(scales-1) (64 for 3 scales of 4 blocks);
  smaller inputs raise a ValueError naming the minimum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


class ReflectConv(nn.Module):
    """Reflect padding (possibly asymmetric) then a kernel-4 conv, in 2D or 3D."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.pad = (1, 1) * spatial_dims if stride == 2 else (1, 2) * spatial_dims
        self.conv = _CONV[spatial_dims](cin, cout, 4, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad, mode="reflect"))


def _scale_network(spatial_dims: int, in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    """One scale of Table 5.1: (B, C, *S) -> (B, 1, *S/2**len(channels))."""
    layers: list[nn.Module] = [ReflectConv(spatial_dims, in_channels, channels[0], stride=1)]
    cin = channels[0]
    for cout in channels:
        layers += [nn.GroupNorm(1, cin), nn.LeakyReLU(0.2), ReflectConv(spatial_dims, cin, cout, stride=2)]
        cin = cout
    layers.append(_CONV[spatial_dims](cin, 1, 1))
    return nn.Sequential(*layers)


class MultiScaleDiscriminator(nn.Module):
    """``forward(x (B, C, *S)) -> [logits at scale 0, 1, ...]``, one (B, 1, *S_k/16) map per scale."""

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: tuple[int, ...] = (60, 120, 240, 480),
        scales: int = 3,
    ):
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if scales < 1 or not channels or min(channels) < 1 or in_channels < 1:
            raise ValueError(
                f"discriminator needs scales >= 1, channels > 0 and in_channels >= 1; "
                f"got scales={scales}, channels={tuple(channels)}, in_channels={in_channels}"
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.min_size = 2 ** len(channels) * 2 ** (scales - 1)
        self.nets = nn.ModuleList(_scale_network(spatial_dims, in_channels, tuple(channels)) for _ in range(scales))

    def _check(self, x: torch.Tensor) -> None:
        expected = 2 + self.spatial_dims
        if x.ndim != expected or x.shape[1] != self.in_channels:
            axes = "H, W" if self.spatial_dims == 2 else "X, Y, Z"
            raise ValueError(f"discriminator expects (B, {self.in_channels}, {axes}) input, got {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if min(spatial) < self.min_size:
            raise ValueError(
                f"discriminator input {spatial} is too small for {len(self.nets)} scales: "
                f"every spatial dim must be >= {self.min_size}"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check(x)
        pool = F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d
        logits = []
        for k, net in enumerate(self.nets):
            logits.append(net(x))  # (B, 1, *S/2**k/16)
            if k + 1 < len(self.nets):
                x = pool(x, 2)  # (B, C, *S/2**(k+1))
        return logits


class DiscriminatorPair(nn.Module):
    """One multi-scale discriminator per domain; ``forward(domain, x)`` -> list of logit maps."""

    def __init__(self, domains: tuple[str, ...], spatial_dims: int, channels: tuple[int, ...], scales: int) -> None:
        super().__init__()
        self.nets = nn.ModuleDict(
            {
                d: MultiScaleDiscriminator(
                    spatial_dims=spatial_dims, in_channels=1, channels=tuple(channels), scales=scales
                )
                for d in domains
            }
        )

    def forward(self, domain: str, x: torch.Tensor) -> list[torch.Tensor]:
        return self.nets[domain](x)
