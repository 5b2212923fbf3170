"""verify: clean stores pass; moved sources warn; changed sources, bad values and shapes fail."""

import nibabel as nib
import numpy as np
import zarr

from hpc_modatts.cli import main
from hpc_modatts.data.verify import verify
from tests.fixtures import make_phantom_store


def _errors(problems):
    return [p for p in problems if p.severity == "error"]


def test_clean_store_and_cli(tmp_path, capsys):
    _, store = make_phantom_store(tmp_path, cases=2)
    assert verify(store) == []
    assert main(["verify", str(store)]) == 0
    assert "no problem found" in capsys.readouterr().out


def test_moved_source_is_a_warning_changed_source_an_error(tmp_path):
    nifti, store = make_phantom_store(tmp_path, cases=2)
    (nifti / "phantom_000" / "phantom_000_t1.nii.gz").unlink()
    f = nifti / "phantom_001" / "phantom_001_seg.nii.gz"
    img = nib.load(f)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), f)
    problems = verify(store)
    warnings = [p for p in problems if p.severity == "warning"]
    assert len(warnings) == 1 and warnings[0].case == "phantom_000" and "source moved" in warnings[0].message
    assert [(p.case, "source changed" in p.message) for p in _errors(problems)] == [("phantom_001", True)]
    assert verify(store, check_sources=False) == []


def test_bad_values_shapes_and_attrs(tmp_path):
    _, store = make_phantom_store(tmp_path, cases=2)
    case0 = store / "cases" / "phantom_000"
    img = zarr.open_array(str(case0 / "image_t1"), mode="r+")
    img[0, 0, 0] = 1.5
    img[1, 0, 0] = np.nan
    mask = zarr.open_array(str(case0 / "mask"), mode="r+")
    mask[0, 0, 0] = 2
    case1 = zarr.open_group(str(store / "cases" / "phantom_001"), mode="r+")
    del case1.attrs["norm"]
    zarr.open_array(str(store / "cases" / "phantom_001" / "brain"), mode="r+")[...] = 0
    case1.create_array("extra", shape=(3, 3, 3), dtype="uint8")
    msgs = {(p.case, p.message.split(" ")[0]) for p in _errors(verify(store))}
    assert ("phantom_000", "image_t1") in msgs  # NaN (checked before the range)
    assert ("phantom_000", "mask") in msgs
    assert ("phantom_001", "missing") in msgs  # attribute 'norm'
    assert ("phantom_001", "brain") in msgs  # empty brain
    assert ("phantom_001", "array") in msgs  # shape mismatch
    assert main(["verify", str(store)]) == 1


def test_not_a_store(tmp_path):
    (tmp_path / "x").mkdir()
    problems = verify(tmp_path / "x")
    assert len(problems) == 1 and problems[0].severity == "error"
    assert main(["verify", str(tmp_path / "x")]) == 1
