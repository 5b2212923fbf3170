"""M-GenSeg (thesis chapter 4): one 2D GenSeg network per modality plus a modality-translation
decoder, attention gates in every decoder's long skips.

Thesis 4.3.3 "Architecture": "One distinct encoder, common decoder, residual/segmentation decoder,
and modality translation decoder are used for each modality. [...] we introduced attention gates
in the skip connections." The thesis takes encoders and decoders from GenSeg's paper and gives no
sizes; ours are the 2D MedFormer of MoDATTS-2D (``MedFormerConfig.in_2d``, the named sizes of
``models.sizes``) so that one code base trains both and the size knob is the same.

Per modality m (``MGenSegModality`` = ``GenSegMedFormer`` + a translation decoder):
- E_m: the encoder; its bottleneck splits into the common code c and the unique code u.
- G_com^m: common decoder (healthy image, tanh); G_res^m / G_seg^m: ONE decoder with two norm sets
  and two heads (residual tanh / segmentation logits), as ``models.genseg``.
- The modality-translation decoder (tanh) maps E_m's whole code (c, u) and skips to the OTHER
  modality: in ``source`` it is G_T (S->T), in ``target`` G_S (T->S) (thesis 4.3.1 "Modality
  translation": "combined with the encoder E_S a decoder G_T enables performing S->T modality
  translation, while the encoder E_T and a second decoder G_S perform the T->S translation").

Attention gates (Oktay et al., thesis [103]): MONAI's ``AttentionBlock`` (``monai.networks.nets.
attentionunet``), gating each skip with the up-sampled decoder features before the concatenation
(``medformer.PassSkip`` is the ungated default). MONAI builds it with BatchNorm; we put the
network's own norm in its place (InstanceNorm; in the residual/segmentation decoder the switchable
pair, so G_seg's gates have their own norms like the rest of G_seg): BatchNorm's running
statistics would differ between DeepSpeed ranks (buffers are not reduced) and between the
residual and segmentation passes.

``MGenSeg`` holds both modalities in one module (one DeepSpeed engine). Its ``forward`` is THE
target segmenter G_seg^T(E_T(x)) (validation, predict), and it exposes the target's GenSeg
interface (``encode``, ``decode_common`` ...) so ``predict --extras`` writes the target's healthy
image and residual as for the MoDATTS GenSeg variants.
"""

from __future__ import annotations

from functools import partial

import torch
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

from hpc_modatts.config import ConfigError
from hpc_modatts.data.store import IMAGE_FILL as BACKGROUND
from hpc_modatts.models.genseg import GenSegMedFormer, SwitchableNorm
from hpc_modatts.models.medformer import EncoderSkips, MedFormerConfig, MedFormerDecoder, crop
from hpc_modatts.models.medformer_blocks import Norm, conv1, default_norm
from hpc_modatts.models.sizes import SEGMENTER_SIZES

Code = tuple[torch.Tensor, torch.Tensor, EncoderSkips]
"""What ``encode`` returns: (c, u, skips)."""


def attention_gate(dims: int, gating: int, skip: int, norm: Norm) -> AttentionBlock:
    """MONAI's attention gate ``(g (B, gating, *S), x (B, skip, *S)) -> x * alpha`` with ``norm`` in
    place of its three BatchNorms (see the module docstring); intermediate width skip // 2."""
    inter = max(1, skip // 2)
    gate = AttentionBlock(spatial_dims=dims, f_int=inter, f_g=gating, f_l=skip)
    gate.W_g[1], gate.W_x[1], gate.psi[1] = norm(inter), norm(inter), norm(1)
    return gate


def gate_skips(decoder: MedFormerDecoder, cfg: MedFormerConfig, norm: Norm) -> MedFormerDecoder:
    """Put an attention gate on each of the decoder's four long skips (in place); returns it."""
    ch = cfg.channels
    widths = {"up1": (ch[3], ch[2]), "up2": (ch[4], ch[1]), "up3": (ch[5], ch[0]), "up4": (ch[6], cfg.base_channels)}
    for stage, (gating, skip) in widths.items():  # gating = the up-sampled input's width
        getattr(decoder, stage).gate = attention_gate(cfg.spatial_dims, gating, skip, norm)
    return decoder


class MGenSegModality(GenSegMedFormer):
    """E_m, G_com^m, G_res^m / G_seg^m (``GenSegMedFormer``) with gated skips, plus the
    modality-translation decoder to the other modality (``translate``)."""

    def __init__(
        self,
        cfg: MedFormerConfig,
        in_channels: int = 1,
        common_fraction: float = 0.75,
        separate_seg_decoder: bool = False,
        keep_background: bool = True,
    ) -> None:
        super().__init__(cfg, in_channels, common_fraction, separate_seg_decoder)
        plain, dims = default_norm(cfg.spatial_dims), cfg.spatial_dims
        gate_skips(self.common_decoder, cfg, plain)
        gate_skips(self.res_seg_decoder, cfg, plain if separate_seg_decoder else partial(SwitchableNorm, dims=dims))
        if self.seg_decoder is not None:
            gate_skips(self.seg_decoder, cfg, plain)
        self.translation_decoder = gate_skips(MedFormerDecoder(cfg), cfg, plain)
        self.translation_head = conv1(cfg.channels[7], in_channels, bias=True, dims=dims)
        self.keep_background = keep_background

    def translate(self, c: torch.Tensor, u: torch.Tensor, skips: EncoderSkips, x: torch.Tensor) -> torch.Tensor:
        """The image ``x`` (B, C, X, Y) was encoded to (c, u, skips): the same anatomy in the other
        modality, (B, C, X, Y) in [-1, 1]. With ``keep_background`` the voxels of ``x`` at the fill
        value stay background (``model.keep_background``, as stage 1's translators)."""
        features = self.translation_decoder(torch.cat([c, u], dim=1), skips)
        y = torch.tanh(self.translation_head(crop(features, skips.shape)))
        if not self.keep_background:
            return y
        return torch.where(x <= BACKGROUND + 1e-3, torch.full_like(y, BACKGROUND), y)


class MGenSeg(nn.Module):
    """Both modalities' networks; ``forward(x) -> G_seg^T(E_T(x))`` logits (B, 1, X, Y)."""

    def __init__(
        self,
        cfg: MedFormerConfig,
        in_channels: int = 1,
        common_fraction: float = 0.75,
        separate_seg_decoder: bool = False,
        keep_background: bool = True,
    ) -> None:
        super().__init__()
        args = (cfg, in_channels, common_fraction, separate_seg_decoder, keep_background)
        self.source = MGenSegModality(*args)  # E_S, G_com^S, G_res^S / G_seg^S, G_T (S -> T)
        self.target = MGenSegModality(*args)  # E_T, G_com^T, G_res^T / G_seg^T, G_S (T -> S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target.segment(x)

    # the target's GenSeg interface (predict's extras: ``infer.predict.genseg_outputs``)
    def encode(self, x: torch.Tensor) -> Code:
        return self.target.encode(x)

    def decode_common(self, c: torch.Tensor, skips: EncoderSkips) -> torch.Tensor:
        return self.target.decode_common(c, skips)

    def decode_residual(self, c: torch.Tensor, u: torch.Tensor, skips: EncoderSkips) -> torch.Tensor:
        return self.target.decode_residual(c, u, skips)

    def decode_segmentation(self, c: torch.Tensor, u: torch.Tensor, skips: EncoderSkips) -> torch.Tensor:
        return self.target.decode_segmentation(c, u, skips)


def build_mgenseg(
    size: str,
    in_channels: int = 1,
    common_fraction: float = 0.75,
    separate_seg_decoder: bool = False,
    keep_background: bool = True,
) -> MGenSeg:
    """M-GenSeg with the 2D MedFormer of a named segmenter size (``models.sizes.SEGMENTER_SIZES``)."""
    if size not in SEGMENTER_SIZES:
        raise ConfigError(f"model.segmenter_size={size!r} must be one of {sorted(SEGMENTER_SIZES)}")
    return MGenSeg(SEGMENTER_SIZES[size].in_2d(), in_channels, common_fraction, separate_seg_decoder, keep_background)
