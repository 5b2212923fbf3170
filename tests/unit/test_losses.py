"""Losses on hand-made inputs: hinge values by hand, L1, Dice (MONAI), masking, weight normalisation."""

import pytest
import torch

from hpc_modatts.losses import dice_loss, hinge_d_loss, hinge_g_loss, l1, latent_l1, normalise_weights


def test_hinge_d_loss_by_hand():
    real = [torch.tensor([2.0, 0.5]), torch.tensor([[-1.0]])]
    fake = [torch.tensor([-2.0, 0.0]), torch.tensor([[0.5]])]
    # scale 0: mean(relu(1-2), relu(1-0.5)) = 0.25 ; mean(relu(1-2), relu(1+0)) = 0.5  -> 0.75
    # scale 1: relu(1+1) = 2 ; relu(1+0.5) = 1.5                                       -> 3.5
    assert hinge_d_loss(real, fake).item() == pytest.approx((0.75 + 3.5) / 2)


def test_hinge_g_loss_by_hand_and_single_tensor():
    fake = [torch.tensor([1.0, 3.0]), torch.tensor([-4.0])]
    assert hinge_g_loss(fake).item() == pytest.approx((-2.0 + 4.0) / 2)
    assert hinge_g_loss(torch.tensor([0.5, 1.5])).item() == pytest.approx(-1.0)


def test_hinge_errors():
    with pytest.raises(ValueError, match="2 real scales vs 1 fake"):
        hinge_d_loss([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)])
    with pytest.raises(ValueError, match="empty"):
        hinge_g_loss([])


def test_l1_and_latent_l1():
    a, b = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])
    assert l1(a, b).item() == pytest.approx(1.5)
    assert latent_l1([a, a], [b, a]).item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shape mismatch"):
        l1(a, torch.zeros(3))


def _logits(mask: torch.Tensor) -> torch.Tensor:
    return (mask * 2 - 1) * 20.0  # confident logits reproducing the mask


def test_dice_identical_and_disjoint_masks():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:5, 2:5] = 1
    assert dice_loss(_logits(target), target).item() == pytest.approx(0.0, abs=1e-4)
    assert dice_loss(_logits(1 - target), target).item() == pytest.approx(1.0, abs=1e-4)


def test_dice_masked_average_over_annotated_samples():
    target = torch.zeros(3, 1, 8, 8)
    target[:, :, :4] = 1
    logits = torch.stack([_logits(target[0]), _logits(1 - target[1]), _logits(1 - target[2])])
    mask = torch.tensor([True, True, False])  # sample 2 (disjoint) is not annotated
    assert dice_loss(logits, target, mask).item() == pytest.approx(0.5, abs=1e-4)
    assert dice_loss(logits, target).item() == pytest.approx(2 / 3, abs=1e-4)


def test_dice_without_annotated_sample_is_zero_with_graph():
    logits = torch.randn(2, 1, 4, 4, 4, requires_grad=True)
    loss = dice_loss(logits, torch.ones_like(logits), torch.tensor([False, False]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_dice_errors():
    with pytest.raises(ValueError, match="logits \\(1, 1, 4\\) vs target"):
        dice_loss(torch.zeros(1, 1, 4), torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match="mask has 3 entries for a batch of 2"):
        dice_loss(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), torch.ones(3, dtype=torch.bool))


def test_normalise_weights():
    expected = {"adv": 1 / 12, "seg": 1 / 12, "cyc": 10 / 12}
    assert normalise_weights({"adv": 1, "seg": 1, "cyc": 10}) == pytest.approx(expected)
    out = normalise_weights({"adv": 5, "rec": 50, "lat": 5, "seg": 0})
    assert out["seg"] == 0 and sum(out.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="all loss weights are zero"):
        normalise_weights({"adv": 0, "rec": 0})
    with pytest.raises(ValueError, match=">= 0"):
        normalise_weights({"adv": -1, "rec": 2})
