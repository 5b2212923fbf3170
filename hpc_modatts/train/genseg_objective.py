"""THE GenSeg objective (healthy <-> diseased translation with weak labels), shared by MoDATTS
semi-supervised (``segment_variants.GenSegTask``, 3D or 2D: thesis 5.4.2, Eq. 5.6-5.11) and
M-GenSeg (``train.mgenseg``, once per modality: thesis 4.3.1-4.3.2, Eq. 4.1-4.2, 4.4).

For a batch x with weak labels (1 = P, 0 = A, anything else = neither) and its encoding (c, u):
P->A X_PA = G_com(c_P), X_PP = X_PA + G_res(c_P, u_P); A->P X_AA = G_com(c_A),
X_AP = X_AA + G_res(c_A, u ~ N(0, I)). Terms: ``rec`` = |X_AA - X_A| + |X_PP - X_P|; ``lat`` =
re-encoded X_PA keeps c_P, re-encoded X_AP keeps c_A and its unique code matches the drawn u;
``adv`` = hinge generator loss of X_PA on the A discriminator and X_AP on the P one. Every sample
goes down both paths so that every rank runs the same forwards (ZeRO-3); the weak label selects
the terms. ``genseg_disc_loss`` is the discriminators' hinge loss on the same pairs.
"""

from __future__ import annotations

from typing import Any

import torch

from hpc_modatts.losses import hinge_d_loss, hinge_g_loss

A, P = "A", "P"
"""The default discriminator domains: "A" judges X_A vs X_PA, "P" judges X_P vs X_AP."""


def zero(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A zero that keeps every tensor in the graph (same backward on every rank)."""
    return sum(t.sum() for t in tensors) * 0.0


def masked_l1(a: torch.Tensor, b: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """Mean |a - b| over the selected samples (sel: (B,) bool); a graph-keeping 0 when none."""
    if not sel.any():
        return zero([a])
    return (a[sel] - b[sel]).abs().mean()


def pick(logits: list[torch.Tensor], sel: torch.Tensor) -> list[torch.Tensor] | None:
    """The selected samples of every scale's logit map, or None when no sample is selected."""
    return [scale[sel] for scale in logits] if sel.any() else None


def genseg_terms(
    net: Any, disc: Any, x: torch.Tensor, weak: torch.Tensor, code: tuple, domains: tuple[str, str] = (A, P)
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """GenSeg terms of the batch ``x`` (B, 1, *S) encoded by ``net`` to ``code`` = (c, u, skips).

    ``net`` has the ``models.genseg.GenSegMedFormer`` interface; ``disc(domain, image)`` gives
    logit maps, ``domains`` = (the A discriminator, the P one). Returns ({"rec", "lat", "adv"},
    {"x_com", "x_res" (detached: the fakes of the discriminator step), "is_a", "is_p"}).
    """
    c, u, skips = code
    weak = weak.reshape(-1)
    is_p, is_a = weak == 1, weak == 0  # (B,)
    u_rand = net.sample_u(u)
    u_mix = torch.where(is_p.view(-1, *[1] * (u.ndim - 1)), u, u_rand)  # u_P for P, N(0,I) for A
    x_com = net.decode_common(c, skips)  # X_PA (P samples) / X_AA (A samples)
    x_res = x_com + net.decode_residual(c, u_mix, skips)  # X_PP (P) / X_AP (A)
    rec = masked_l1(x_com, x, is_a) + masked_l1(x_res, x, is_p)
    # Only X_PA (P samples) and X_AP (A samples) have a latent term: one encoder pass over the
    # batch holding, per sample, the image its term re-encodes (the encoder is per sample), not
    # two passes of which half is discarded. Re-encoded X_PA keeps c_P; X_AP keeps c_A, u_AP = u.
    x_re = torch.where(is_p.view(-1, *[1] * (x.ndim - 1)), x_com, x_res)
    c_re, u_re, _ = net.encode(x_re)
    lat = masked_l1(c_re, c, is_p) + masked_l1(c_re, c, is_a) + masked_l1(u_re, u_rand, is_a)
    disc.requires_grad_(False)  # the generator's step: no gradient into the discriminators
    fake_a, fake_p = disc(domains[0], x_com), disc(domains[1], x_res)
    g_a, g_p = pick(fake_a, is_p), pick(fake_p, is_a)
    adv = (hinge_g_loss(g_a) if g_a else zero(fake_a)) + (hinge_g_loss(g_p) if g_p else zero(fake_p))
    disc.requires_grad_(True)
    return (
        {"rec": rec, "lat": lat, "adv": adv},
        {"x_com": x_com.detach(), "x_res": x_res.detach(), "is_a": is_a, "is_p": is_p},
    )


def genseg_disc_loss(
    disc: Any, x: torch.Tensor, out: dict[str, torch.Tensor], domains: tuple[str, str] = (A, P)
) -> torch.Tensor:
    """Hinge loss of both discriminators: X_A vs X_PA (``domains[0]``), X_P vs X_AP (``domains[1]``);
    ``out`` is ``genseg_terms``'s second result. A graph-keeping 0 unless the batch holds an A and
    a P sample (each pair needs both)."""
    is_a, is_p = out["is_a"], out["is_p"]
    real_a, real_p = disc(domains[0], x), disc(domains[1], x)
    fake_a, fake_p = disc(domains[0], out["x_com"]), disc(domains[1], out["x_res"])
    loss = zero(real_a + real_p + fake_a + fake_p)
    if is_a.any() and is_p.any():
        loss = loss + hinge_d_loss(pick(real_a, is_a), pick(fake_a, is_p))
        loss = loss + hinge_d_loss(pick(real_p, is_p), pick(fake_p, is_a))
    return loss
