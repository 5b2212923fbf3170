"""Bad input: each raises a one-line DataError naming the file/case, CLI exit 2, nothing half-written."""

import shutil

import nibabel as nib
import numpy as np
import pytest

from hpc_modatts.cli import main
from hpc_modatts.data.convert import convert
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.store import Store
from tests.fixtures import make_phantom_nifti

BAD = "phantom_001"


@pytest.fixture
def src(tmp_path):
    return make_phantom_nifti(tmp_path, cases=2, seed=0)


def _file(src, name, case=BAD):
    return src / case / f"{case}_{name}.nii.gz"


def _rewrite(path, fn, affine=None):
    img = nib.load(path)
    nib.save(nib.Nifti1Image(fn(np.asarray(img.dataobj)), img.affine if affine is None else affine), path)


def _run_cli(capsys, src, store, *extra):
    rc = main(["convert", str(src), str(store), "--workers", "2", "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def _expect_failure(capsys, src, store, match, *extra):
    """CLI exits 2 with one line naming the problem; the good case is complete, the bad one absent."""
    rc, err = _run_cli(capsys, src, store, *extra)
    errors = [line for line in err if "error:" in line]
    assert rc == 2 and len(errors) == 1, err
    assert match in errors[0], errors[0]
    st = Store.open(store)
    assert st.case_ids == ["phantom_000"]
    assert [p.name for p in (store / "cases").iterdir() if p.is_dir()] == ["phantom_000"]  # no temp groups
    return errors[0]


def test_truncated_gzip(tmp_path, capsys, src):
    f = _file(src, "t2")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    line = _expect_failure(capsys, src, tmp_path / "s.zarr", str(f))
    assert "cannot read t2 image NIfTI" in line


def test_garbage_file(tmp_path, capsys, src):
    f = _file(src, "flair")
    f.write_bytes(b"this is not a nifti file at all" * 10)
    _expect_failure(capsys, src, tmp_path / "s.zarr", str(f))


def test_mask_of_different_shape(tmp_path, capsys, src):
    _rewrite(_file(src, "seg"), lambda a: a[:-2])
    line = _expect_failure(capsys, src, tmp_path / "s.zarr", str(_file(src, "seg")))
    assert "shape" in line


def test_mask_of_different_affine(tmp_path, capsys, src):
    aff = nib.load(_file(src, "seg")).affine.copy()
    aff[0, 3] += 3.0
    _rewrite(_file(src, "seg"), lambda a: a, affine=aff)
    line = _expect_failure(capsys, src, tmp_path / "s.zarr", str(_file(src, "seg")))
    assert "affine differs" in line


def test_4d_image(tmp_path, capsys, src):
    _rewrite(_file(src, "t1"), lambda a: np.stack([a, a], axis=-1))
    line = _expect_failure(capsys, src, tmp_path / "s.zarr", str(_file(src, "t1")))
    assert "4D" in line


def test_nan_and_inf_voxels(tmp_path, capsys, src):
    def poison(a):
        a = a.astype(np.float32)
        a[10, 10, 10], a[11, 11, 11] = np.nan, np.inf
        return a

    _rewrite(_file(src, "t1ce"), poison)
    line = _expect_failure(capsys, src, tmp_path / "s.zarr", str(_file(src, "t1ce")))
    assert "2 NaN/Inf" in line


def test_unexpected_labels(tmp_path, capsys, src):
    def add_label(a):
        a = a.copy()
        a[a == 2] = 3
        return a

    _rewrite(_file(src, "seg"), add_label)  # with --labels auto this reads as BraTS 2013 (tests/unit/test_datasets.py)
    line = _expect_failure(capsys, src, tmp_path / "s.zarr", str(_file(src, "seg")), "--labels", "brats2021")
    assert "unexpected label values [3]" in line


def test_empty_brain(tmp_path, capsys, src):
    for m in ("t1", "t1ce", "t2", "flair"):
        _rewrite(_file(src, m), np.zeros_like)
    line = _expect_failure(capsys, src, tmp_path / "s.zarr", BAD)
    assert "empty brain mask" in line


def test_missing_modality_fail_or_skip(tmp_path, capsys, src, caplog):
    _file(src, "t2").unlink()
    with pytest.raises(DataError, match=f"case {BAD}: missing modality t2"):
        convert(src, tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()  # refused before the store was touched
    rc, _ = _run_cli(capsys, src, tmp_path / "s.zarr", "--missing", "skip")
    assert rc == 0 and Store.open(tmp_path / "s.zarr").case_ids == ["phantom_000"]
    assert any("missing modality t2, skipped" in r.getMessage() for r in caplog.records)


def test_duplicate_case_ids(tmp_path, capsys, src):
    shutil.copytree(src / "phantom_000", src / "more" / "phantom_000")
    rc, err = _run_cli(capsys, src, tmp_path / "s.zarr")
    assert rc == 2 and "duplicate case id 'phantom_000'" in err[-1]
    assert not (tmp_path / "s.zarr").exists()


def test_empty_source_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = _run_cli(capsys, tmp_path / "empty", tmp_path / "s.zarr")
    assert rc == 2 and err == [f"hpc-modatts convert: error: {tmp_path / 'empty'}: source folder is empty"]
    assert not (tmp_path / "s.zarr").exists()


def test_store_path_not_ours(tmp_path, capsys, src):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    rc, err = _run_cli(capsys, src, tmp_path / "mine")
    assert rc == 2 and str(tmp_path / "mine") in err[-1]
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]


def test_every_case_bad_leaves_no_store(tmp_path, src):
    for case in ("phantom_000", BAD):
        _file(src, "t1", case).write_bytes(b"junk")
    with pytest.raises(DataError, match=r"phantom_000.*\(and 1 more failing case"):
        convert(src, tmp_path / "s.zarr", workers=2, progress=False)
    assert not (tmp_path / "s.zarr").exists()
