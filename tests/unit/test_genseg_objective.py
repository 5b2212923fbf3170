"""The GenSeg objective of the semi-supervised variant on a hand-made batch of one healthy (A) and
one diseased (P) half volume: which terms each sample enters, and their values (thesis Eq. 5.6-5.11)."""

from __future__ import annotations

import types

import pytest
import torch

from hpc_modatts.losses import hinge_d_loss, hinge_g_loss
from hpc_modatts.models import build_segmenter
from hpc_modatts.train.segment_variants import GenSegTask, build_discriminators_3d

SHAPE = (2, 1, 32, 32, 16)  # (B, C, X, Y, Z): sample 0 healthy (A), sample 1 diseased (P)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = build_segmenter("tiny", genseg=True).eval()
    disc = build_discriminators_3d([4, 8], 1)
    x = torch.rand(SHAPE) * 2 - 1
    batch = {"image": x, "weak": torch.tensor([0, 1])}
    task = types.SimpleNamespace(weights={})  # no Dice on real target volumes in this objective
    terms: dict = {}
    torch.manual_seed(123)  # the u ~ N(0, I) drawn for healthy samples
    out = GenSegTask._genseg_terms(task, batch, {"gen": net, "disc": disc}, terms)
    return net, disc, x, terms, out


def _reference(net, disc, x):
    """The same objective written out sample by sample, with the same u draw."""
    c, u, skips = net.encode(x)
    torch.manual_seed(123)
    u_rand = net.sample_u(u)
    a, p = slice(0, 1), slice(1, 2)
    # A sample: X_AA = G_com(c_A) is reconstructed; X_AP = X_AA + G_res(c_A, u ~ N(0, I)) is generated
    x_aa = net.decode_common(c, skips)[a]
    x_ap = x_aa + net.decode_residual(c, u_rand, skips)[a]
    # P sample: X_PA = G_com(c_P) is generated; X_PP = X_PA + G_res(c_P, u_P) is reconstructed
    x_pa = net.decode_common(c, skips)[p]
    x_pp = x_pa + net.decode_residual(c, u, skips)[p]
    rec = (x_aa - x[a]).abs().mean() + (x_pp - x[p]).abs().mean()
    c_pa, _, _ = net.encode(x_pa)  # X_PA keeps c_P
    c_ap, u_ap, _ = net.encode(x_ap)  # X_AP keeps c_A and u_AP = the drawn u
    lat = (c_pa - c[p]).abs().mean() + (c_ap - c[a]).abs().mean() + (u_ap - u_rand[a]).abs().mean()
    adv = hinge_g_loss(disc("A", x_pa)) + hinge_g_loss(disc("P", x_ap))
    return {"rec": rec, "lat": lat, "adv": adv, "x_pa": x_pa, "x_ap": x_ap}


def test_terms_are_selected_by_the_weak_labels(setup):
    net, disc, x, terms, out = setup
    with torch.no_grad():
        ref = _reference(net, disc, x)
    assert set(terms) == {"rec", "lat", "adv"}
    for k in ("rec", "lat", "adv"):
        assert terms[k].item() == pytest.approx(ref[k].item(), rel=1e-5, abs=1e-6), k
    assert out["is_a"].tolist() == [True, False] and out["is_p"].tolist() == [False, True]
    # what the discriminators will be shown as fakes: X_PA of the P sample, X_AP of the A sample
    torch.testing.assert_close(out["x_com"][1:2], ref["x_pa"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["x_res"][0:1], ref["x_ap"], rtol=1e-4, atol=1e-5)


def test_each_term_depends_only_on_its_samples(setup):
    """rec/lat/adv gradients w.r.t. the input: a term touching only sample A has zero gradient on P."""
    net, disc, x, _, _ = setup
    x = x.clone().requires_grad_(True)
    terms: dict = {}
    torch.manual_seed(123)
    GenSegTask._genseg_terms(
        types.SimpleNamespace(weights={}), {"image": x, "weak": torch.tensor([0, 1])}, {"gen": net, "disc": disc}, terms
    )
    for k in ("rec", "lat", "adv"):
        (g,) = torch.autograd.grad(terms[k], x, retain_graph=True)
        assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0, k  # every term mixes an A and a P path


def test_discriminator_pairs_real_a_with_x_pa_and_real_p_with_x_ap(setup):
    net, disc, x, _, out = setup
    loss = GenSegTask._disc_step(None, {"image": x}, out, _Engine(disc))
    with torch.no_grad():
        expected = hinge_d_loss(
            [t[0:1] for t in disc("A", x)], [t[1:2] for t in disc("A", out["x_com"])]
        ) + hinge_d_loss([t[1:2] for t in disc("P", x)], [t[0:1] for t in disc("P", out["x_res"])])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


class _Engine:
    """The discriminator behind the engine interface the step uses (backward/step: no-ops here;
    the real DeepSpeed engines are exercised end to end in test_stages.py)."""

    def __init__(self, module):
        self.module = module

    def __call__(self, domain, x):
        return self.module(domain, x)

    def backward(self, loss):
        pass

    def step(self):
        pass
