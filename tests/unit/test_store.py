"""Store: create/open, round trips, atomic case writes, foreign paths."""

import numpy as np
import pytest

from hpc_modatts.data.errors import DataError
from hpc_modatts.data.store import Store


def _case(rng, shape=(20, 24, 16)):
    img = rng.uniform(-1, 1, shape).astype(np.float32)
    mask = (img > 0.8).astype(np.uint8)
    return img, mask


def test_round_trip_and_listing(tmp_path):
    rng = np.random.default_rng(0)
    img, mask = _case(rng)
    st = Store.create(tmp_path / "s.zarr", kind="dataset", note="x")
    st.write_case(
        "b",
        {"t1": img, "t2": -img},
        mask=mask,
        labels=mask * 2,
        brain=np.ones_like(mask),
        extra={"prob": img},
        attrs={"spacing": [1.0, 1.0, 1.0], "weak_labels": {"left": "A", "right": "P"}},
    )
    st.write_case("a", {"t1": img})
    st = Store.open(tmp_path / "s.zarr")
    assert st.case_ids == ["a", "b"]
    assert st.modalities("b") == ["t1", "t2"]
    assert st.root_attrs["kind"] == "dataset" and st.root_attrs["note"] == "x"
    attrs = st.attrs("b")
    assert attrs["complete"] is True and attrs["has_mask"] is True and attrs["shape"] == [20, 24, 16]
    np.testing.assert_array_equal(st.read_image("b", "t2"), -img)
    region = (slice(2, 5), slice(None), slice(3, 4))
    np.testing.assert_array_equal(st.read_mask("b", region), mask[region])
    np.testing.assert_array_equal(st.read_labels("b"), mask * 2)
    np.testing.assert_array_equal(st.read_array("b", "prob"), img)
    assert st.read_mask("a") is None and st.read_labels("a") is None and st.attrs("a")["has_mask"] is False
    np.testing.assert_array_equal(st.dask("b", "t1").compute(), img)
    np.testing.assert_array_equal(st.dask("b", "mask").compute(), mask)
    assert st.image("b", "t1")[0, 0, 0] == img[0, 0, 0]
    with pytest.raises(DataError, match="no modality 'flair'"):
        st.image("b", "flair")
    with pytest.raises(DataError, match="no case 'zz'"):
        st.attrs("zz")


def test_brain_derived_from_images_when_not_stored(tmp_path):
    img = -np.ones((8, 8, 8), np.float32)
    img[2:5, 2:5, 2:5] = 0.3
    st = Store.create(tmp_path / "s.zarr")
    st.write_case("c", {"t1": img})
    assert st.read_brain("c").sum() == 27


def test_float16_and_sharded(tmp_path):
    img, _ = _case(np.random.default_rng(1))
    st = Store.create(tmp_path / "s.zarr", dtype="float16", sharded=True)
    st.write_case("c", {"t1": img})
    assert st.image("c", "t1").dtype == np.float16
    assert st.image("c", "t1").shards is not None
    out = st.read_image("c", "t1")
    assert out.dtype == np.float32 and np.abs(out - img).max() <= 2.0**-12  # float16 round-off on [-1, 1]


def test_defaults_exact_float32_sharded_background_chunks_not_written(tmp_path):
    img = np.full((40, 40, 32), -1.0, np.float32)  # (120, 120, 16) chunks clip to (40, 40, 16): 2 chunks along Z
    img[5:30, 5:30, 2:12] = np.random.default_rng(4).uniform(-1, 1, (25, 25, 10))  # only the first Z chunk
    st = Store.create(tmp_path / "s.zarr")
    assert st.root_attrs["layout"]["image_dtype"] == "float32" and st.root_attrs["layout"]["sharded"] is True
    st.write_case("c", {"t1": img}, mask=(img > 0.5).astype(np.uint8))
    arr = st.image("c", "t1")
    assert arr.dtype == np.float32 and arr.shards is not None and arr.fill_value == -1
    assert st.mask("c").fill_value == 0
    np.testing.assert_array_equal(st.read_image("c", "t1"), img)  # float32: exact
    plain = Store.create(tmp_path / "plain.zarr", sharded=False)
    plain.write_case("c", {"t1": img})
    chunk_files = [
        p
        for p in (tmp_path / "plain.zarr" / "cases" / "c" / "image_t1").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    ]
    assert len(chunk_files) == 1  # the all-background chunk is never written...
    np.testing.assert_array_equal(plain.read_image("c", "t1"), img)  # ...and reads back as -1


def test_rewrite_replaces_case_atomically(tmp_path):
    rng = np.random.default_rng(2)
    img, mask = _case(rng)
    st = Store.create(tmp_path / "s.zarr")
    st.write_case("c", {"t1": img}, mask=mask)
    st.write_case("c", {"t2": img})
    assert st.modalities("c") == ["t2"] and st.mask("c") is None
    assert [p.name for p in (tmp_path / "s.zarr" / "cases").iterdir() if p.is_dir()] == ["c"]


def test_failed_write_leaves_nothing(tmp_path):
    st = Store.create(tmp_path / "s.zarr")
    with pytest.raises(DataError, match="share one 3D"):
        st.write_case("c", {"t1": np.zeros((4, 4, 4))}, mask=np.zeros((4, 4, 5)))
    assert st.case_ids == [] and [p for p in (tmp_path / "s.zarr" / "cases").iterdir() if p.is_dir()] == []


def test_stale_temp_and_incomplete_cases(tmp_path):
    img, _ = _case(np.random.default_rng(3))
    st = Store.create(tmp_path / "s.zarr")
    st.write_case("ok", {"t1": img})
    # a killed writer leaves a temp group; an incomplete group is not listed either
    Store.create(tmp_path / "other.zarr").write_case("x", {"t1": img})
    import subprocess

    from hpc_modatts.data.integrity import HOST

    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names a writer that is gone
    stale = f".tmp-x~{HOST}~{dead.pid}~abcdef"
    (tmp_path / "other.zarr" / "cases" / "x").rename(tmp_path / "s.zarr" / "cases" / stale)
    import zarr

    g = zarr.open_group(str(tmp_path / "s.zarr" / "cases" / "half"), mode="w", zarr_format=3)
    g.attrs["complete"] = False
    assert Store.open(tmp_path / "s.zarr").case_ids == ["ok"]
    st = Store.create(tmp_path / "s.zarr")  # reopen ours: cleans temp groups of dead writers
    assert not (tmp_path / "s.zarr" / "cases" / stale).exists()
    assert st.case_ids == ["ok"] and st.all_case_dirs() == ["half", "ok"]


def test_foreign_paths_refused(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.txt").write_text("not a store")
    with pytest.raises(DataError, match="foreign"):
        Store.create(tmp_path / "foreign")
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    with pytest.raises(DataError, match="not an hpc-modatts store"):
        Store.open(tmp_path / "plain.zarr")
    with pytest.raises(DataError, match="missing"):
        Store.open(tmp_path / "nothing.zarr")
    Store.create(tmp_path / "s.zarr", kind="synthetic")
    with pytest.raises(DataError, match="kind 'synthetic'"):
        Store.create(tmp_path / "s.zarr", kind="dataset")
    with pytest.raises(DataError, match="case id"):
        Store.open(tmp_path / "s.zarr").write_case("../x", {"t1": np.zeros((2, 2, 2))})
