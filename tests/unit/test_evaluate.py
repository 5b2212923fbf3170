"""Evaluation on known masks: identity, an analytically shifted cube, empties, bad folders."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from hpc_modatts.data.errors import DataError
from hpc_modatts.infer.evaluate import case_metrics, evaluate


def cube(shape=(24, 16, 16), start=(4, 3, 3), n=10) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[tuple(slice(s, s + n) for s in start)] = 1
    return m


def save(path, data, spacing=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), path)


def test_identity_is_perfect():
    m = cube()
    assert case_metrics(m, m, (1.2, 1.0, 3.0)) == {"dice": 1.0, "hd95": 0.0, "assd": 0.0, "note": ""}


@pytest.mark.parametrize("k,s", [(1, 1.0), (2, 1.5), (3, 0.7)])
def test_shifted_cube_gives_analytic_distances(k, s):
    """Cube of side n shifted by k voxels along X, spacing (s, t, t) with t >= k*s.

    Surface voxels (6-connected shell) of the shifted cube and their distance to the other
    surface: far end face n^2 voxels at k*s; the k-1 protruding rings of 4n-4 voxels at j*s;
    the near face's interior (n-2)^2 voxels at k*s (lateral faces are >= t away); the rest lie
    on the other surface (0). Both directions are symmetric, so
    ASSD = s * (n^2 k + (4n-4) k(k-1)/2 + (n-2)^2 k) / (6n^2 - 12n + 8) and, since a third of
    the distances equal the maximum k*s, HD95 = k*s. Dice = 1 - k/n.
    """
    n, t = 10, 4.0
    ref = cube(n=n)
    pred = cube(start=(4 + k, 3, 3), n=n)
    m = case_metrics(pred, ref, (s, t, t))
    assd = s * (n * n * k + (4 * n - 4) * k * (k - 1) / 2 + (n - 2) ** 2 * k) / (6 * n * n - 12 * n + 8)
    assert m["hd95"] == pytest.approx(k * s, rel=1e-5)
    assert m["assd"] == pytest.approx(assd, rel=1e-5)
    assert m["dice"] == pytest.approx(1 - k / n, rel=1e-5)


def test_empty_masks_follow_the_documented_convention():
    empty, m = np.zeros((8, 8, 8), np.uint8), cube((8, 8, 8), (2, 2, 2), 3)
    assert case_metrics(empty, empty, (1, 1, 1)) == {"dice": 1.0, "hd95": 0.0, "assd": 0.0, "note": "both empty"}
    r = case_metrics(empty, m, (1, 1, 1))
    assert r["dice"] == 0.0 and np.isnan(r["hd95"]) and np.isnan(r["assd"]) and r["note"] == "empty prediction"
    assert case_metrics(m, empty, (1, 1, 1))["note"] == "empty reference"


def test_folders_csv_json_panels_and_percent_of_target_supervised(tmp_path):
    sp = (2.0, 1.0, 1.0)
    save(tmp_path / "ref" / "a.nii.gz", cube(), sp)
    save(tmp_path / "ref" / "b.nii.gz", cube(), sp)
    save(tmp_path / "pred" / "a.nii.gz", cube(), sp)
    save(tmp_path / "pred" / "b.nii.gz", cube(start=(5, 3, 3)), sp)
    save(tmp_path / "pred" / "b_prob.nii.gz", cube().astype(np.float32), sp)  # ignored
    save(tmp_path / "img" / "a.nii.gz", np.random.default_rng(0).normal(size=(24, 16, 16)).astype(np.float32), sp)
    (tmp_path / "ts.json").write_text(json.dumps({"summary": {"dice": {"mean": 0.95}}}))
    out = evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", target_supervised=tmp_path / "ts.json",
                   images=tmp_path / "img")
    res = json.loads((out / "metrics.json").read_text())
    assert [c["case"] for c in res["cases"]] == ["a", "b"]
    assert res["cases"][1]["hd95"] == pytest.approx(2.0)  # 1 voxel along X at 2 mm
    assert res["summary"]["dice"]["mean"] == pytest.approx((1 + 0.9) / 2, rel=1e-5)
    assert res["percent_of_target_supervised"] == pytest.approx(100 * 0.95 / 0.95, rel=1e-5)
    assert (out / "metrics.csv").read_text().splitlines()[0] == "case,dice,hd95,assd,note"
    for case in ("a", "b"):
        assert (out / "panels" / f"{case}.png").read_bytes()[:4] == b"\x89PNG"


def test_case_set_and_geometry_mismatch_fail_before_any_work(tmp_path):
    save(tmp_path / "ref" / "a.nii.gz", cube())
    save(tmp_path / "ref" / "b.nii.gz", cube())
    save(tmp_path / "pred" / "a.nii.gz", cube())
    with pytest.raises(DataError, match="case b: present in the reference only"):
        evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")
    save(tmp_path / "pred" / "b.nii.gz", cube(), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(DataError, match="case b: prediction and reference affines differ"):
        evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")
    save(tmp_path / "pred" / "b.nii.gz", cube(shape=(20, 16, 16)))
    with pytest.raises(DataError, match=r"case b: prediction shape \(20, 16, 16\)"):
        evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")
    assert not (tmp_path / "out").exists()
