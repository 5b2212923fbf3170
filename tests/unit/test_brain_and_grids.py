"""Brain masks (files, manifest column, z-scored constant backgrounds) and modalities that are not
on one grid (``--resample-to``)."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to
from scipy import ndimage as ndi

from hpc_modatts.cli import main
from hpc_modatts.data.convert import convert
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.layouts import find_cases
from hpc_modatts.data.store import Store
from hpc_modatts.data.verify import verify
from tests.releases import CONTRASTS, phantom, save, zscore


def _write_case(folder, cid, case, images=lambda m, v: v, seg=True):
    for m in CONTRASTS:
        save(folder / cid / f"{cid}_{m}.nii.gz", images(m, case[m]), case["affine"])
    if seg:
        save(folder / cid / f"{cid}_seg.nii.gz", case["seg"], case["affine"])


def _dice(a, b):
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_zscored_case_gets_the_brain_of_its_unshifted_twin(tmp_path, caplog):
    case = phantom(tmp_path, 1)[0]
    src = tmp_path / "src"
    _write_case(src, "twin_plain", case)
    _write_case(src, "twin_zscored", case, images=lambda m, v: zscore(v, -3.6))  # background exactly -3.6
    with caplog.at_level(logging.WARNING):
        st = Store.open(convert(src, tmp_path / "s.zarr", progress=False))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("twin_zscored" in w and "-3.6 in t1" in w for w in warnings), warnings
    assert not any("twin_plain" in w for w in warnings)
    plain, shifted = st.read_brain("twin_plain"), st.read_brain("twin_zscored")
    assert np.abs(plain.astype(int) - shifted).sum() <= 3 and shifted.sum() < 0.5 * shifted.size
    assert st.attrs("twin_zscored")["background"]["flair"] == pytest.approx(-3.6)
    # z-scoring is affine per modality: the brain-normalised images are the same up to float16 round-off
    for m in CONTRASTS:
        diff = np.abs(st.read_image("twin_plain", m) - st.read_image("twin_zscored", m))
        assert diff.max() < 2e-3, m
    assert verify(st) == []


def test_brain_mask_files_and_manifest_column(tmp_path):
    case = phantom(tmp_path, 1)[0]
    brain = ndi.binary_erosion(case["t1"] > 0, iterations=2).astype(np.uint8)  # a smaller brain than "non-zero"
    d = tmp_path / "m"
    for m in ("t1", "t2"):
        save(d / f"{m}.nii.gz", case[m], case["affine"])
    save(d / "seg.nii.gz", case["seg"], case["affine"])
    save(d / "brain.nii.gz", brain, case["affine"])
    (d / "manifest.csv").write_text(
        "case,modality,image,mask,brain\np0,t1,t1.nii.gz,seg.nii.gz,brain.nii.gz\np0,t2,t2.nii.gz,,\n"
    )
    st = Store.open(convert(d / "manifest.csv", tmp_path / "m.zarr", progress=False))
    expected = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(brain, case["affine"])).dataobj)
    assert np.array_equal(st.read_brain("p0"), expected) and st.attrs("p0")["brain_from"] == "file"
    assert (st.read_image("p0", "t2")[expected == 0] == -1).all()
    assert set(st.attrs("p0")["sources"]) == {"t1", "t2", "mask", "brain"}
    # folders: <case>_brainmask (2018-2021 naming) and <case>-mask (2023-2025 naming)
    _write_case(tmp_path / "b", "c0", case)
    save(tmp_path / "b" / "c0" / "c0_brainmask.nii.gz", brain, case["affine"])
    cid = "BraTS-GLI-00001-000"
    for m, name in (("t1", "t1n"), ("t2", "t2w")):
        save(tmp_path / "n" / cid / f"{cid}-{name}.nii.gz", case[m], case["affine"])
    save(tmp_path / "n" / cid / f"{cid}-mask.nii.gz", brain, case["affine"])
    assert find_cases(tmp_path / "b", "auto")[0].brain.name == "c0_brainmask.nii.gz"
    spec = find_cases(tmp_path / "n", "auto", modalities=("t1", "t2"))[0]
    assert spec.brain.name == f"{cid}-mask.nii.gz" and spec.names == {"t1": "t1n", "t2": "t2w"}


def _off_grid(img_case, name, scale=1.5, shift=(5.0, -3.0, 2.0), order=1):
    """``name`` of the case resampled onto another grid: coarser voxels and a shifted origin."""
    affine = img_case["affine"].copy()
    affine[:3, :3] *= scale
    affine[:3, 3] += shift
    shape = tuple(int(np.ceil(s / scale)) + 4 for s in img_case[name].shape)
    src = nib.Nifti1Image(img_case[name].astype(np.float32 if order else np.uint8), img_case["affine"])
    out = resample_from_to(src, (shape, affine), order=order, mode="constant", cval=0)
    data = np.asarray(out.dataobj)
    return (np.rint(data).astype(np.int16) if order else data.astype(np.uint8)), affine


def test_unregistered_modalities_need_resample_to(tmp_path, capsys):
    case = phantom(tmp_path, 1)[0]
    _write_case(tmp_path / "ref", "c0", case)  # the registered twin
    twin = Store.open(convert(tmp_path / "ref", tmp_path / "twin.zarr", progress=False))
    src = tmp_path / "src"
    _write_case(src, "c0", case)
    t2, t2_affine = _off_grid(case, "t2")
    off = save(src / "c0" / "c0_t2.nii.gz", t2, t2_affine)
    with pytest.raises(
        DataError,
        match=rf"{off}: t2 image is not on the grid of c0_flair.nii.gz .*"
        r"add --resample-to flair",
    ) as e:
        convert(src, tmp_path / "no.zarr", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "no.zarr").exists()
    rc = main(["convert", str(src), str(tmp_path / "no.zarr"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--resample-to" in err[0]
    # the mask on its own (finer) grid too
    seg, seg_affine = _off_grid(case, "seg", scale=0.5, shift=(0.0, 0.0, 0.0), order=0)
    save(src / "c0" / "c0_seg.nii.gz", seg, seg_affine)
    st = Store.open(convert(src, tmp_path / "s.zarr", resample_to="t1", progress=False))
    a = st.attrs("c0")
    assert a["reference_modality"] == "t1" and a["original_shape"] == list(case["t1"].shape)
    moved = a["resampled_to"]["files"]
    assert set(moved) == {"t2", "mask"} and moved["t2"]["shape"] == list(t2.shape) and moved["mask"]["order"] == 0
    brain = twin.read_brain("c0") > 0
    assert _dice(st.read_brain("c0"), brain) > 0.97
    got, want = st.read_image("c0", "t2"), twin.read_image("c0", "t2")
    corr = np.corrcoef(got[brain], want[brain])[0, 1]
    # the best a linear resampler can do: the same round trip (4 mm -> 6 mm -> 4 mm) by nibabel alone
    back = resample_from_to(
        nib.Nifti1Image(t2.astype(np.float32), t2_affine), (case["t2"].shape, case["affine"]), order=1
    )
    raw = case["t2"].astype(np.float32)
    best = np.corrcoef(np.asarray(back.dataobj)[raw > 0], raw[raw > 0])[0, 1]
    assert corr > best - 0.01, (corr, best)
    for ax in range(3):  # and aligned: one voxel off in any direction matches worse
        for step in (-1, 1):
            assert corr > np.corrcoef(got[brain], np.roll(want, step, axis=ax)[brain])[0, 1] + 0.05
    assert np.array_equal(st.read_image("c0", "t1"), twin.read_image("c0", "t1"))  # the reference is untouched
    assert _dice(st.read_mask("c0"), twin.read_mask("c0")) > 0.9
    assert set(np.unique(st.read_labels("c0"))) <= {0, 1, 2, 4}  # nearest neighbour: no new label values
    assert verify(st) == []
