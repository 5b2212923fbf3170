"""Lazy loaders over a real zarr store: slices, hemisphere patches, sampler resume, fork workers."""

import numpy as np
import pytest
import torch

from hpc_modatts.data.errors import DataError
from hpc_modatts.data.loaders import (
    RankSampler,
    SliceDataset,
    VolumeCache,
    VolumeDataset,
    lazy_volumes,
    make_loader,
    read_window,
)
from hpc_modatts.data.store import Store

SHAPE = (24, 20, 12)  # (X, Y, Z); hemisphere split at X = 12


def _case(rng, tumour_side):
    """Ellipsoid brain (-1 outside), an image whose values encode the position, a tumour cube."""
    x, y, z = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    brain = (((x - 11.5) / 10) ** 2 + ((y - 9.5) / 8) ** 2 + ((z - 5.5) / 5) ** 2 <= 1).astype(np.uint8)
    code = (x * 1000 + y * 10 + z).astype(np.float32) / 30000  # unique value per voxel, in [0, 1)
    img = {
        m: np.where(brain, code + 0.01 * k + rng.normal(0, 1e-3, SHAPE).astype(np.float32), -1)
        for k, m in enumerate(("t1", "t2"))
    }
    mask = np.zeros(SHAPE, np.uint8)
    if tumour_side == "left":
        mask[4:8, 6:10, 4:7] = 1
    elif tumour_side == "right":
        mask[15:19, 6:10, 4:7] = 1
    weak = {"left": "P" if tumour_side == "left" else "A", "right": "P" if tumour_side == "right" else "A"}
    return img, mask, brain, {"hemisphere_split": 12, "weak_labels": weak}


def _build_store(path, **create_kwargs):
    """Four cases (tumour left, right, none, left) with a pseudo-label array each."""
    store = Store.create(path, kind="dataset", **create_kwargs)
    rng = np.random.default_rng(0)
    for i, side in enumerate(["left", "right", None, "left"]):
        img, mask, brain, attrs = _case(rng, side)
        store.write_case(
            f"c{i}",
            img,
            mask=mask,
            brain=brain,
            attrs=attrs,
            extra={"pseudo_label": (img["t2"] > 0.2).astype(np.uint8)},
        )
    return path


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return _build_store(tmp_path_factory.mktemp("loaders") / "s.zarr")


def _stored(store_path, case, name):
    return Store.open(store_path).read_array(case, name)


def test_read_window_pads_and_restricts():
    arr = np.arange(24, dtype=np.float32).reshape(4, 6)
    out = read_window(arr, [(0, 2), (0, 6)], (-1, 1), (4, 3), -1.0, np.float32)
    assert out.tolist() == [[-1, -1, -1], [1, 2, 3], [7, 8, 9], [-1, -1, -1]]


def test_slice_dataset_weak_labels_masks_and_crop(store_path):
    ds = SliceDataset(store_path, ["c0", "c2"], "t1", annotated={"c0"}, size=(16, 24), min_tumour_fraction=0.05)
    brain = _stored(store_path, "c0", "brain")
    mask = _stored(store_path, "c0", "mask")
    for i in range(len(ds)):
        it = ds[i]
        case, z = it["case"], it["z"]
        assert it["image"].shape == (1, 16, 24) and it["mask"].shape == (1, 16, 24)
        full = _stored(store_path, case, "image_t1")[:, :, z]
        assert np.array_equal(it["image"][0, :, 2:22].numpy(), full[4:20])  # X cropped, Y padded
        assert (it["image"][0, :, :2] == -1).all() and (it["image"][0, :, 22:] == -1).all()
        assert bool(it["has_mask"]) == (case == "c0")
        if case == "c0":
            assert np.array_equal(it["mask"][0, :, 2:22].numpy(), mask[4:20, :, z])
            t, b = mask[:, :, z].sum(), brain[:, :, z].sum()
            assert it["weak"] == (1 if t else 0) and (t == 0 or t >= 0.05 * b)
        else:
            assert it["weak"] == 0 and it["mask"].sum() == 0
    zs = {ds[i]["z"] for i in range(len(ds)) if ds[i]["case"] == "c2"}
    assert zs == {z for z in range(SHAPE[2]) if brain[:, :, z].sum() >= 0.01 * 24 * 20}
    strict = SliceDataset(store_path, ["c0"], "t1", min_tumour_fraction=0.9)  # small tumours are ambiguous
    assert {strict[i]["weak"] for i in range(len(strict))} == {0}


def test_volume_dataset_hemispheres(store_path):
    ds = VolumeDataset(store_path, ["c0", "c1", "c2"], "t2", patch_size=(16, 24, 12), annotated={"c0", "c1"})
    assert len(ds) == 6
    img = _stored(store_path, "c1", "image_t2")
    brain = _stored(store_path, "c1", "brain")
    weak = {}
    for i in range(len(ds)):
        it = ds[i]
        weak[(it["case"], it["side"])] = it["weak"]
        assert it["image"].shape == (1, 16, 24, 12)
        assert it["image"].min() >= -1 and bool(it["has_mask"]) == (it["case"] != "c2")
        if it["case"] == "c1":  # the patch shows only its own hemisphere's voxels, the rest is -1 padding
            own, other = (slice(0, 12), slice(12, 24))[:: 1 if it["side"] == "left" else -1]
            shown = it["image"][0][it["image"][0] > -1].numpy()
            assert shown.size == int(brain[own].sum())  # the whole half-brain fits in the patch
            assert set(shown.tolist()) <= set(img[own].ravel().tolist())
            assert not set(shown.tolist()) & set(img[other][brain[other] > 0].ravel().tolist())
    assert weak == {
        ("c0", "left"): 1,
        ("c0", "right"): 0,
        ("c1", "left"): 0,
        ("c1", "right"): 1,
        ("c2", "left"): 0,
        ("c2", "right"): 0,
    }
    whole = VolumeDataset(store_path, ["c0"], "t1", patch_size=SHAPE, half=False, annotated={"c0"})
    it = whole[0]  # patch == volume and the brain is centred: exactly the stored arrays
    assert it["side"] == "whole" and it["weak"] == 1
    assert np.array_equal(it["image"][0].numpy(), _stored(store_path, "c0", "image_t1"))
    assert np.array_equal(it["mask"][0].numpy(), _stored(store_path, "c0", "mask"))


def test_random_offsets_deterministic_from_seed_epoch_index(store_path):
    def ds(seed):
        return VolumeDataset(store_path, ["c0", "c1"], "t1", patch_size=(8, 8, 6), augment=True, seed=seed)

    a, b = ds(3), ds(3)
    assert torch.equal(a[1]["image"], b[1]["image"]) and torch.equal(a[1]["mask"], b[1]["mask"])
    first = a[1]["image"]
    a.set_epoch(1)
    assert not torch.equal(first, a[1]["image"])
    assert not torch.equal(first, ds(4)[1]["image"])


def test_extra_mask_pseudo_label(store_path, tmp_path):
    ds = VolumeDataset(store_path, ["c2"], "t2", patch_size=(12, 20, 12), extra_mask="pseudo_label")
    it = ds[0]  # left half; the brain spans x in [2, 12): the window [1, 13) is centred on it, x=12 is padding
    assert bool(it["has_mask"]) and it["mask"].sum() > 0
    expected = np.zeros((12, 20, 12), np.float32)
    expected[:11] = _stored(store_path, "c2", "pseudo_label")[1:12]
    assert np.array_equal(it["mask"][0].numpy(), expected)
    other = Store.create(tmp_path / "pl.zarr", kind="pseudo_labels")
    other.write_case("c1", {}, extra={"pseudo_label": np.ones(SHAPE, np.uint8)})
    ds2 = VolumeDataset(
        store_path,
        ["c1", "c2"],
        "t2",
        patch_size=(12, 20, 12),
        extra_mask="pseudo_label",
        extra_store=tmp_path / "pl.zarr",
    )
    assert ds2[0]["mask"][0, :11].min() == 1 and ds2[0]["mask"][0, 11].max() == 0 and bool(ds2[0]["has_mask"])
    assert not bool(ds2[2]["has_mask"]) and ds2[2]["mask"].sum() == 0  # c2 has no pseudo-label there


def test_errors_name_the_case(store_path, tmp_path):
    with pytest.raises(DataError, match="ghost"):
        SliceDataset(store_path, ["ghost"], "t1")
    with pytest.raises(DataError, match="flair"):
        VolumeDataset(store_path, ["c0"], "flair")
    bad = Store.create(tmp_path / "bad.zarr", kind="dataset")
    bad.write_case("nosplit", {"t1": np.zeros(SHAPE)}, mask=np.zeros(SHAPE), attrs={})
    with pytest.raises(DataError, match="nosplit.*hemisphere_split"):
        VolumeDataset(tmp_path / "bad.zarr", ["nosplit"], "t1")


def test_rank_sampler_disjoint_equal_deterministic():
    shares = [RankSampler(11, seed=5, rank=r, world_size=3).indices() for r in range(3)]
    assert all(len(s) == 3 for s in shares)
    flat = sum(shares, [])
    assert len(set(flat)) == 9 and set(flat) <= set(range(11))
    assert RankSampler(11, seed=5, rank=1, world_size=3).indices() == shares[1]
    s = RankSampler(11, seed=5, rank=1, world_size=3)
    s.set_epoch(1)
    assert s.indices() != shares[1]
    over = RankSampler(4, seed=0, num_samples=10).indices()
    assert len(over) == 10 and set(over) == set(range(4))
    with pytest.raises(DataError):
        RankSampler(1, seed=0, rank=0, world_size=2)


class _IndexDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return i


def test_resume_continues_with_the_same_samples():
    def epochs(loader, sampler, start_epoch, n_epochs, stop_after=None):
        seen = []
        for e in range(start_epoch, n_epochs):
            sampler.set_epoch(e)
            for k, batch in enumerate(loader):
                seen.append(batch.tolist())
                if stop_after is not None and (e, k) == stop_after:
                    return seen
        return seen

    ref_s = RankSampler(20, seed=1, rank=1, world_size=2)
    reference = epochs(make_loader(_IndexDataset(), 3, ref_s, 0), ref_s, 0, 3)
    s1 = RankSampler(20, seed=1, rank=1, world_size=2)
    part = epochs(make_loader(_IndexDataset(), 3, s1, num_workers=2), s1, 0, 3, stop_after=(1, 1))
    state = s1.state_dict()
    assert state["epoch"] == 1 and state["position"] == 6  # workers prefetch ahead; position does not
    s2 = RankSampler(20, seed=1, rank=1, world_size=2)
    s2.load_state_dict(state)
    rest = epochs(make_loader(_IndexDataset(), 3, s2, 0), s2, state["epoch"], 3)
    assert part + rest == reference
    with pytest.raises(DataError, match="seed"):
        RankSampler(20, seed=2, rank=1, world_size=2).load_state_dict(state)


def test_fork_workers_match_single_process(store_path):
    ds = VolumeDataset(
        store_path, ["c0", "c1", "c3"], "t1", patch_size=(12, 16, 8), augment=True, seed=2, annotated={"c0"}
    )

    def run(workers):
        sampler = RankSampler(len(ds), seed=0)
        sampler.set_epoch(1)
        return list(make_loader(ds, 2, sampler, num_workers=workers))

    single, forked = run(0), run(2)
    assert len(single) == len(forked) == 3
    for a, b in zip(single, forked):
        assert a["case"] == b["case"] and a["side"] == b["side"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["image"].shape == (2, 1, 12, 16, 8) and a["weak"].dtype == torch.int64


def test_lazy_volumes(store_path, tmp_path):
    vol = lazy_volumes(store_path, ["c0", "c1"], "t1")
    assert vol.shape == (2, *SHAPE)
    assert np.allclose(vol[1].compute(), _stored(store_path, "c1", "image_t1"))
    per_case_tumour = lazy_volumes(store_path, ["c0", "c1", "c2"], "mask").sum(axis=(1, 2, 3)).compute()
    assert per_case_tumour.tolist() == [48, 48, 0]


@pytest.fixture(scope="module")
def f16_store_path(tmp_path_factory):
    """The same cases stored as float16 (convert's default)."""
    return _build_store(tmp_path_factory.mktemp("loaders16") / "s16.zarr", dtype="float16")


def _items(ds):
    return [ds[i] for i in range(len(ds))]


def _same_items(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert x["weak"] == y["weak"] and bool(x["has_mask"]) == bool(y["has_mask"])


def test_cached_reads_equal_zarr_reads_float16(f16_store_path):
    img16 = _stored(f16_store_path, "c1", "image_t2")
    assert img16.dtype == np.float16
    cases, ann = ["c0", "c1", "c2"], {"c0", "c1"}
    cold = VolumeDataset(
        f16_store_path,
        cases,
        "t2",
        patch_size=(16, 24, 12),
        annotated=ann,
        augment=True,
        extra_mask="pseudo_label",
        cache_bytes=0,
    )
    warm = VolumeDataset(
        f16_store_path, cases, "t2", patch_size=(16, 24, 12), annotated=ann, augment=True, extra_mask="pseudo_label"
    )
    _same_items(_items(cold), _items(warm))
    _same_items(_items(cold), _items(warm))  # second pass: served from memory
    assert len(cold.cache) == 0 and len(warm.cache) == 3 * 3  # image, mask, pseudo_label per case
    whole = VolumeDataset(f16_store_path, ["c1"], "t2", patch_size=SHAPE, half=False)
    got = whole[0]["image"][0].numpy()
    assert got.dtype == np.float32 and np.array_equal(got, img16.astype(np.float32))  # exact f16 -> f32
    s_cold = SliceDataset(f16_store_path, cases, "t1", annotated=ann, size=(16, 24), cache_bytes=0)
    s_warm = SliceDataset(f16_store_path, cases, "t1", annotated=ann, size=(16, 24))
    _same_items(_items(s_cold), _items(s_warm))
    assert len(s_warm.cache) == 3 + 2  # three images, masks of the two annotated cases


def test_cache_budget_never_exceeded_and_full_cache_reads_zarr(f16_store_path):
    one_image = int(np.prod(SHAPE)) * 2  # float16 bytes
    ds = VolumeDataset(f16_store_path, ["c0", "c1", "c2"], "t1", patch_size=(16, 24, 12), cache_bytes=one_image + 10)
    ref = VolumeDataset(f16_store_path, ["c0", "c1", "c2"], "t1", patch_size=(16, 24, 12), cache_bytes=0)
    _same_items(_items(ds), _items(ref))
    assert ds.cache.used <= one_image + 10 and len(ds.cache) == 1  # c0's image; the rest read from zarr
    # c0's uint8 mask (half the bytes) no longer fits after its image: pinned entries are never evicted
    assert ds.cache.max_bytes - ds.cache.used < int(np.prod(SHAPE))
    with pytest.raises(Exception, match="cache_bytes"):
        VolumeCache(-1)


def test_cache_is_not_pickled_and_fork_workers_use_it(f16_store_path):
    import pickle

    ds = VolumeDataset(
        f16_store_path, ["c0", "c1", "c3"], "t1", patch_size=(12, 16, 8), augment=True, seed=2, annotated={"c0"}
    )
    _items(ds)  # fill the parent's cache; forked workers inherit it
    assert len(ds.cache) > 0
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone.cache) == 0 and clone.cache.max_bytes == ds.cache.max_bytes
    assert clone.handle.cache is clone.cache  # handles still share the dataset's cache
    _same_items(_items(clone), _items(ds))

    def run(workers):
        sampler = RankSampler(len(ds), seed=0)
        return list(make_loader(ds, 2, sampler, num_workers=workers))

    for a, b in zip(run(0), run(2)):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
