"""Named network sizes and the builders the training stages call: ``build_segmenter`` (3D
MedFormer, optionally GenSeg-wired; sizes below; ``spatial_dims=2``: the same size on 2D slices
for MoDATTS-2D) and ``build_translator`` (2D TransUNet, sizes in ``transunet.SIZES``, optionally
with ImageNet encoder weights from ``pretrained``).

3D segmenter sizes:

Parameter counts (plain MedFormer / GenSeg wiring with the shared residual/segmentation decoder /
GenSeg with a separate segmentation decoder; in_channels=1; ranges asserted in
tests/unit/test_medformer.py and test_genseg.py):
- full:   37.6 M / 45.9 M / 54.0 M. The paper's self-supervised size (thesis Table 5.2, "Ch. sf."; the
          reference knobs in docs/architecture.md: base 32, channels 64..320..32, B-MDH 2/4/6/4/2,
          fusion 320). The paper says 38 M. The toolkit's point: this size also runs semi-supervised.
- semi8m: 8.8 M / 10.3 M / 11.7 M. The paper's reduced semi-supervised size: Table 5.2 "Ch. sm." channels
          (base 16, 32..256..16). Table 5.2's block counts at these channels give 16.3 M, not the
          "8 M" of the text, so (as the reference class's counts imply) blocks were cut too: B-MDH 2/2/2 instead of
          2/4/6 in the encoder, 2/2 in the decoder, fusion width 128 -> 8.8 M.
- small:  1.7 M / 2.0 M, for CPU demos.
- tiny:   0.16 M / 0.19 M, for fast tests.
Heads follow Table 5.2 (2, 8, 10 | 8, 4); 256-wide stages use 8 (256 is not divisible by 10).

2D sizes (``spatial_dims=2``, ``MedFormerConfig.in_2d``: same widths and depths, 3x3 kernels, a
3x3 semantic map): the thesis gives no size for MoDATTS-2D (5.5.1 only says "a 2D version of
MoDATTS" was evaluated), so the 2D sizes are the 3D ones with one kernel axis fewer. Counts
(plain / GenSeg shared / GenSeg separate; asserted in tests/unit/test_medformer_2d.py):
- full:   31.8 M / 39.4 M / 46.9 M (most weights are in 1x1 projections, MBConvs and the fusion
          transformer, which lose nothing in 2D).
- semi8m:  6.4 M /  7.7 M /  8.9 M.
- small:   1.2 M /  1.5 M.
- tiny:   0.09 M / 0.11 M.
"""

from __future__ import annotations

from torch import nn

from hpc_modatts.config import ConfigError
from hpc_modatts.models.genseg import GenSegMedFormer
from hpc_modatts.models.medformer import MedFormer, MedFormerConfig
from hpc_modatts.models.pretrained import load_pretrained
from hpc_modatts.models.transunet import SIZES, TransUNetTranslator

SEGMENTER_SIZES: dict[str, MedFormerConfig] = {
    "full": MedFormerConfig(),
    "semi8m": MedFormerConfig(
        base_channels=16,
        channels=(32, 64, 128, 256, 128, 64, 32, 16),
        bmdh_blocks=(0, 2, 2, 2, 2, 2, 0, 0),
        heads=(1, 2, 8, 8, 8, 4, 1, 1),
        fusion_dim=128,
        fusion_heads=8,
    ),
    "small": MedFormerConfig(
        base_channels=8,
        channels=(16, 32, 64, 96, 64, 32, 16, 8),
        conv_blocks=(1, 0, 0, 0, 0, 0, 1, 1),
        bmdh_blocks=(0, 1, 2, 2, 2, 1, 0, 0),
        heads=(1, 2, 4, 4, 4, 2, 1, 1),
        fusion_dim=64,
        fusion_heads=4,
    ),
    "tiny": MedFormerConfig(
        base_channels=4,
        channels=(8, 16, 16, 32, 16, 16, 8, 4),
        conv_blocks=(1, 0, 0, 0, 0, 0, 1, 1),
        bmdh_blocks=(0, 1, 1, 1, 1, 1, 0, 0),
        heads=(1, 2, 2, 4, 2, 2, 1, 1),
        map_size=(2, 2, 2),
        fusion_dim=16,
        fusion_depth=1,
        fusion_heads=2,
    ),
}


def build_segmenter(
    size: str,
    in_channels: int = 1,
    genseg: bool = False,
    common_fraction: float = 0.75,
    separate_seg_decoder: bool = False,
    spatial_dims: int = 3,
) -> nn.Module:
    """A MedFormer of a named size, 3D or (``spatial_dims=2``) 2D: plain (forward -> logits) or
    GenSeg-wired (`GenSegMedFormer`)."""
    if size not in SEGMENTER_SIZES:
        raise ConfigError(f"model.segmenter_size={size!r} must be one of {sorted(SEGMENTER_SIZES)}")
    cfg = SEGMENTER_SIZES[size]
    if spatial_dims == 2:
        cfg = cfg.in_2d()
    elif spatial_dims != 3:
        raise ValueError(f"spatial_dims={spatial_dims} must be 2 or 3")
    if not genseg:
        return MedFormer(cfg, in_channels=in_channels)
    return GenSegMedFormer(
        cfg, in_channels=in_channels, common_fraction=common_fraction, separate_seg_decoder=separate_seg_decoder
    )


def build_translator(size: str = "full", in_channels: int = 1, pretrained: str = "") -> TransUNetTranslator:
    """Build a named translator size ("full" | "tiny"); load encoder weights from a local file."""
    if size not in SIZES:
        raise ValueError(f"unknown translator size {size!r}; choose one of {sorted(SIZES)}")
    model = TransUNetTranslator(SIZES[size], in_channels)
    if pretrained:
        load_pretrained(model, pretrained)
    return model
