"""MONAI augmentation chains: image/mask alignment, determinism per seed, shapes, [-1, 1] range."""

import numpy as np
import pytest
import torch

from hpc_modatts.data.augment import apply, augment_2d, augment_3d, seed_chain


def _blob(shape, seed=0):
    """A smooth image in [-1, 1] (background -1) and a mask equal to its bright core (image > 0.3)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    centre = rng.uniform(-0.3, 0.3, len(shape))
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre)) / 0.5**2
    img = np.where(r2 < 1, 1 - 1.6 * r2, -1).astype(np.float32).clip(-1, 1)
    mask = (img > 0.3).astype(np.float32)
    return {"image": torch.from_numpy(img)[None], "mask": torch.from_numpy(mask)[None]}


@pytest.mark.parametrize("make,shape", [(augment_2d, (48, 40)), (augment_3d, (24, 32, 16))])
def test_shapes_range_and_binary_mask(make, shape):
    chain = make()
    for s in range(6):
        out = apply(seed_chain(chain, (s, 0, 1)), _blob(shape, s))
        assert out["image"].shape == (1, *shape) and out["mask"].shape == (1, *shape)
        assert out["image"].dtype == torch.float32 and type(out["image"]) is torch.Tensor
        assert out["image"].min() >= -1 and out["image"].max() <= 1
        assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("make,shape", [(augment_2d, (48, 40)), (augment_3d, (24, 32, 16))])
def test_deterministic_per_seed(make, shape):
    a = apply(seed_chain(make(), (3, 1, 7)), _blob(shape))
    b = apply(seed_chain(make(), (3, 1, 7)), _blob(shape))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    differs = [
        not torch.equal(a["image"], apply(seed_chain(make(), (3, 1, k)), _blob(shape))["image"]) for k in range(8, 12)
    ]
    assert any(differs)


@pytest.mark.parametrize("make,shape", [(augment_2d, (64, 56)), (augment_3d, (32, 40, 24))])
def test_mask_follows_image_through_spatial_transforms(make, shape):
    """The mask was a threshold of the image: after flips/rotation/scaling it must still cover the
    image's bright core (up to interpolation at the boundary), wherever that core has moved."""
    chain = make()
    moved = 0
    for s in range(12):
        src = _blob(shape, s)
        out = apply(seed_chain(chain, (s,)), src)
        img, mask = out["image"][0], out["mask"][0] > 0.5
        assert mask.sum() > 0
        # bright voxels are inside the mask, and mask voxels are bright (intensity transforms are
        # monotonic in the core; noise/blur perturb by < 0.5 there)
        core = img > img[mask].median()
        assert (mask[core]).float().mean() > 0.97
        assert (img[mask] > img[~mask].median()).float().mean() > 0.97
        moved += int(not torch.equal(mask, src["mask"][0] > 0.5))
    assert moved >= 6  # spatial transforms did act on most samples


def test_background_stays_minus_one_in_2d():
    """Brightness/gamma keep the -1 background (tanh decoders must reproduce it)."""
    chain = augment_2d(keys=("image",))
    img = _blob((48, 48))
    out = apply(seed_chain(chain, 5), {"image": img["image"]})
    corners = out["image"][0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.allclose(corners, torch.full_like(corners, -1.0))
