"""Conversion: phantom -> store, resume, geometry round trip, CrossMoDA and manifest layouts."""

import json

import nibabel as nib
import numpy as np
import pytest

from hpc_modatts.cli import main
from hpc_modatts.data.convert import convert
from hpc_modatts.data.layouts import find_cases
from hpc_modatts.data.preprocess import to_original_geometry
from hpc_modatts.data.store import Store
from tests.fixtures import make_phantom_store, phantom_store  # noqa: F401 (session fixture)


def test_phantom_store_contents(phantom_store):  # noqa: F811 (the session fixture imported above)
    nifti_dir, store_path = phantom_store
    st = Store.open(store_path)
    assert st.case_ids == [f"phantom_{i:03d}" for i in range(4)]
    for case in st.case_ids:
        a = st.attrs(case)
        assert st.modalities(case) == ["flair", "t1", "t1ce", "t2"]
        assert a["original_orientation"] == "LPS" and a["shape"] == [48, 56, 48]
        assert np.allclose(np.asarray(a["affine"])[:3, :3], np.diag([4.0, 4, 4]))  # canonical RAS
        brain = st.read_brain(case).astype(bool)
        img = st.read_image(case, "t2")
        assert (img[~brain] == -1).all() and img.min() >= -1 and img.max() <= 1
        inside = img[brain] * 5 * 1.0  # (v - mean) / std, clip aside
        assert abs(inside.mean()) < 0.2
        mask = st.read_mask(case)
        assert set(np.unique(mask)) <= {0, 1} and mask.any()
        np.testing.assert_array_equal(mask, st.read_labels(case) > 0)
        split = a["hemisphere_split"]
        weak = a["weak_labels"]
        assert {weak["left"], weak["right"]} == {"A", "P"}
        assert (weak["left"] == "P") == bool(mask[:split].any())
        assert set(a["sources"]) == {"t1", "t1ce", "t2", "flair", "mask"}
        # stored arrays are the RAS view of the LPS source
        src = nib.load(nifti_dir / case / f"{case}_seg.nii.gz")
        np.testing.assert_array_equal(np.asarray(nib.as_closest_canonical(src).dataobj) > 0, mask)


def test_resume_skips_unchanged_and_redoes_changed(tmp_path):
    nifti_dir, store_path = make_phantom_store(tmp_path, cases=2, seed=0)
    case_dir = store_path / "cases" / "phantom_001"
    before = {c: (store_path / "cases" / c / "zarr.json").stat().st_mtime_ns for c in ("phantom_000", "phantom_001")}
    convert(nifti_dir, store_path, progress=False)
    assert (case_dir / "zarr.json").stat().st_mtime_ns == before["phantom_001"]
    # change one source file: that case (only) is converted again
    f = nifti_dir / "phantom_001" / "phantom_001_t2.nii.gz"
    img = nib.load(f)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 1, img.affine, img.header), f)
    convert(nifti_dir, store_path, progress=False)
    st = Store.open(store_path)
    assert (case_dir / "zarr.json").stat().st_mtime_ns != before["phantom_001"]
    assert (store_path / "cases" / "phantom_000" / "zarr.json").stat().st_mtime_ns == before["phantom_000"]
    assert st.case_ids == ["phantom_000", "phantom_001"]
    with pytest.raises(Exception, match="converted with"):
        convert(nifti_dir, store_path, crop=(32, 32, 32), progress=False)


def _lps_case(tmp_path, spacing=(1.2, 0.9, 2.5)):
    """A non-RAS (LPS), anisotropic volume with a blob tumour, as a manifest row."""
    shape = (60, 70, 30)
    idx = np.indices(shape, dtype=np.float32)
    c = (np.array(shape) - 1) / 2
    rho = np.sqrt(sum(((idx[a] - c[a]) / (0.42 * shape[a])) ** 2 for a in range(3)))
    img = np.where(rho < 1, 100 + 50 * np.cos(idx[0] / 3) + idx[2], 0).astype(np.float32)
    t_rho = np.sqrt(((idx[0] - 18) / 7) ** 2 + ((idx[1] - 40) / 9) ** 2 + ((idx[2] - 16) / 4) ** 2)
    seg = (t_rho < 1).astype(np.uint8)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [40.0, 30.0, -20.0]
    d = tmp_path / "lps"
    d.mkdir()
    nib.save(nib.Nifti1Image(img, affine), d / "case_t2.nii.gz")
    nib.save(nib.Nifti1Image(seg, affine), d / "case_seg.nii.gz")
    (d / "manifest.csv").write_text("case,modality,image,mask\nlps1,t2,case_t2.nii.gz,case_seg.nii.gz\n")
    return d, seg, affine


@pytest.mark.parametrize("spacing,crop,exact", [(None, (56, 64, 28), True), ((1.0, 1.0, 1.0), "brain", False)])
def test_original_geometry_round_trip(tmp_path, spacing, crop, exact):
    d, seg, affine = _lps_case(tmp_path)
    store = convert(
        d / "manifest.csv", tmp_path / "s.zarr", layout="manifest", spacing=spacing, crop=crop, progress=False
    )
    st = Store.open(store)
    a = st.attrs("lps1")
    assert a["original_orientation"] == "LPS"
    if spacing:
        assert a["spacing"] == [1.0, 1.0, 1.0] and a["resampled_shape"] is not None
    back = to_original_geometry(st.read_mask("lps1"), a, order=0)
    assert back.shape == seg.shape and np.allclose(back.affine, affine)
    out = np.asarray(back.dataobj)
    if exact:
        np.testing.assert_array_equal(out, seg)
    else:
        dice = 2 * (out & seg).sum() / (out.sum() + seg.sum())
        assert dice > 0.95
    # images too (order 1): the brain region lands back where it was
    img_back = np.asarray(to_original_geometry(st.read_brain("lps1"), a, order=0).dataobj)
    src = np.asarray(nib.load(d / "case_t2.nii.gz").dataobj) > 0
    assert 2 * (img_back.astype(bool) & src).sum() / (img_back.sum() + src.sum()) > 0.97


def test_crossmoda_layout(tmp_path):
    d = tmp_path / "cm"
    d.mkdir()
    rng = np.random.default_rng(0)
    vol = np.zeros((24, 24, 12), np.float32)
    vol[4:20, 4:20, 2:10] = rng.uniform(10, 20, (16, 16, 8))
    lab = np.zeros(vol.shape, np.uint8)
    lab[5:9, 6:10, 4:7] = 1
    lab[15:17, 10:12, 5:6] = 2  # cochlea: not tumour
    aff = np.diag([0.5, 0.5, 1.5, 1])
    for name, arr in (
        ("crossmoda2022_etz_1_ceT1", vol),
        ("crossmoda2022_etz_1_Label", lab),
        ("crossmoda2022_ldn_7_hrT2", vol * 0.5),
    ):
        nib.save(nib.Nifti1Image(arr, aff), d / f"{name}.nii.gz")
    specs = find_cases(d, "crossmoda")
    assert [(s.case_id, sorted(s.images), s.mask is not None) for s in specs] == [
        ("crossmoda2022_etz_1", ["ceT1"], True),
        ("crossmoda2022_ldn_7", ["hrT2"], False),
    ]
    st = Store.open(convert(d, tmp_path / "cm.zarr", layout="crossmoda", crop=(20, 20, 10), workers=2, progress=False))
    assert st.modalities("crossmoda2022_ldn_7") == ["hrT2"] and st.mask("crossmoda2022_ldn_7") is None
    assert st.read_mask("crossmoda2022_etz_1").sum() == 4 * 4 * 3
    assert st.attrs("crossmoda2022_ldn_7")["weak_labels"] is None


def test_manifest_weak_labels_json_and_cli(tmp_path):
    nifti_dir, _ = make_phantom_store(tmp_path, cases=2)
    rows = [
        {
            "case": "p0",
            "modality": m,
            "image": str(nifti_dir / "phantom_000" / f"phantom_000_{m}.nii.gz"),
            "weak_left": "P",
            "weak_right": "A",
        }
        for m in ("t1", "t2")
    ]
    (tmp_path / "m.json").write_text(json.dumps(rows))
    rc = main(
        [
            "convert",
            str(tmp_path / "m.json"),
            str(tmp_path / "m.zarr"),
            "--layout",
            "manifest",
            "--spacing",
            "8",
            "8",
            "8",
            "--dtype",
            "float16",
            "--no-progress",
        ]
    )
    assert rc == 0
    st = Store.open(tmp_path / "m.zarr")
    assert st.case_ids == ["p0"] and st.modalities("p0") == ["t1", "t2"]
    assert st.attrs("p0")["weak_labels"] == {"left": "P", "right": "A"} and st.mask("p0") is None
    assert st.image("p0", "t1").dtype == np.float16 and st.attrs("p0")["shape"] == [24, 28, 24]


def test_distributed_scheduler_and_one_bad_case(tmp_path):
    """--scheduler ADDRESS: a real dask.distributed cluster; a bad case surfaces as one DataError."""
    distributed = pytest.importorskip("distributed")
    from hpc_modatts.data.errors import DataError
    from tests.fixtures import make_phantom_nifti

    src = make_phantom_nifti(tmp_path, cases=3)
    (src / "phantom_002" / "phantom_002_t1.nii.gz").write_bytes(b"broken")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        with pytest.raises(DataError) as info:
            convert(src, tmp_path / "d.zarr", scheduler=cluster.scheduler_address, progress=False)
    assert "phantom_002_t1.nii.gz" in str(info.value) and "\n" not in str(info.value)
    assert Store.open(tmp_path / "d.zarr").case_ids == ["phantom_000", "phantom_001"]


def test_manifest_example_parses():
    from pathlib import Path

    specs = find_cases(Path(__file__).parents[2] / "data" / "manifest_example.csv", "manifest")
    assert [s.case_id for s in specs] == ["patient_001", "patient_002", "patient_003"]
    assert specs[0].mask is not None and specs[0].weak is None and specs[0].brain.name == "brainmask.nii.gz"
    assert specs[1].weak == {"left": "P", "right": "A"} and specs[2].mask is None


def test_split_cli_wraps_make_split(tmp_path):
    from hpc_modatts.data.splits import Split

    _, store = make_phantom_store(tmp_path, cases=4)
    out = tmp_path / "split.json"
    rc = main(
        [
            "split",
            str(store),
            "--source",
            "t1",
            "--target",
            "t2",
            "--source-labeled",
            "1.0",
            "--target-labeled",
            "0.0",
            "--val",
            "0.25",
            "--test",
            "0.25",
            "--folds",
            "1",
            "--seed",
            "0",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    split = Split.load(out)
    assert split.source == "t1" and split.target == "t2"
    used = set(split.source_train) | set(split.target_train) | set(split.val) | set(split.test)
    assert used <= set(Store.open(store).case_ids)
