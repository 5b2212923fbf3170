"""THE inferer: hemisphere windows equal the training patches, outputs paste back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpc_modatts.data.loaders import VolumeDataset
from hpc_modatts.infer.inferer import FILL, VolumeInferer
from tests.fixtures import make_phantom_store


def _volume(shape=(20, 12, 10), split=10, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, shape).astype(np.float32)
    brain = np.zeros(shape, np.uint8)
    brain[2:18, 1:11, 1:9] = 1  # a box crossing the midline: each half's brain box is 8x10x8
    image[brain == 0] = -1.0
    return image, brain, split


def test_hemisphere_identity_round_trips_exactly():
    image, brain, split = _volume()
    inferer = VolumeInferer((8, 12, 10), hemispheres=True)  # every half's box fits one patch
    out = inferer(lambda x: x, image, brain, split, out_fill=FILL)  # outside both windows: background
    assert out.shape == (1, *image.shape)
    assert np.array_equal(out[0], image)  # every voxel comes back from its own hemisphere's window


def test_hemisphere_windows_never_see_the_other_side():
    image, brain, split = _volume()
    seen = []

    def predictor(x):
        seen.append(x.clone())
        return torch.zeros_like(x)

    VolumeInferer((12, 12, 10), hemispheres=True)(predictor, image, brain, split)
    assert len(seen) == 1 and seen[0].shape[0] == 2  # both hemisphere windows in one batch
    left, right = seen[0][:1], seen[0][1:]
    # the left window is centred on x in [2, 10): its columns at x >= split show only the fill value
    lo = (2 + 10) // 2 - 12 // 2  # = 0
    assert torch.all(left[0, 0, split - lo :] == FILL)
    lo_r = (10 + 18) // 2 - 12 // 2  # = 8
    assert torch.all(right[0, 0, : split - lo_r] == FILL)


def test_larger_brain_box_is_tiled_with_sliding_windows():
    image, brain, split = _volume()
    out = VolumeInferer((4, 6, 4), hemispheres=True, overlap=0.5)(lambda x: x, image, brain, split)
    inside = brain > 0
    np.testing.assert_allclose(out[0][inside], image[inside], atol=1e-5)  # blended identity


def test_whole_mode_is_a_plain_sliding_window():
    image, brain, _ = _volume()
    out = VolumeInferer((8, 8, 8), hemispheres=False)(lambda x: 2 * x, image, brain, None)
    np.testing.assert_allclose(out[0], 2 * image, atol=1e-5)


def test_hemisphere_mode_needs_a_split():
    image, brain, _ = _volume()
    with pytest.raises(ValueError, match="split"):
        VolumeInferer((8, 12, 10))(lambda x: x, image, brain, None)


def test_inferer_feeds_exactly_the_training_patch(tmp_path):
    """The window of each hemisphere equals VolumeDataset's (non-augmented) item for that side."""
    from hpc_modatts.data.store import Store

    _, store_path = make_phantom_store(tmp_path, cases=1)
    store = Store.open(store_path)
    case = store.case_ids[0]
    patch = (24, 56, 48)
    items = VolumeDataset(store_path, [case], "t2", patch_size=patch, half=True)
    expected = [items[i]["image"] for i in range(len(items))]  # left, right
    seen = []

    def predictor(x):
        seen.extend(x.clone())
        return torch.zeros_like(x)

    VolumeInferer(patch, hemispheres=True)(
        predictor, store.read_image(case, "t2"), store.read_brain(case), store.attrs(case)["hemisphere_split"]
    )
    assert len(seen) == 2
    for got, want in zip(seen, expected):
        assert torch.equal(got, want)


def test_both_hemispheres_in_one_batch_give_each_window_its_own_result():
    """The patch-sized windows go through the model as one batch (oneDNN's convolutions, not the
    slow batch-of-one path); every model is per sample, so each hemisphere's output equals the
    model run on that window alone, up to convolution-algorithm rounding."""
    from hpc_modatts.models.layout import to_channels_last
    from hpc_modatts.models.sizes import build_segmenter

    image, brain, split = _volume(shape=(32, 32, 16), split=16)
    brain[:] = 1  # each hemisphere's window is the hemisphere itself
    torch.manual_seed(0)
    model = to_channels_last(build_segmenter("tiny", genseg=True)).eval()
    inferer = VolumeInferer((16, 32, 16), hemispheres=True)
    calls = []

    def predictor(x):
        calls.append(x.shape[0])
        return torch.sigmoid(model(x))

    batched = inferer(predictor, image, brain, split)
    assert calls == [2]
    with torch.no_grad():
        for w in inferer.windows(brain, split):
            lo, hi = w.valid[0]
            alone = torch.sigmoid(model(torch.from_numpy(image[lo:hi])[None, None]))[0, 0].numpy()
            np.testing.assert_allclose(batched[0, lo:hi], alone, atol=1e-5)
