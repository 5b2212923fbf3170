"""Phantom: deterministic, BraTS layout, realistic contrast rules, one-sided tumours."""

import nibabel as nib
import numpy as np
import pytest

from hpc_modatts.data.phantom import CONTRASTS, hemisphere_split, make_case, make_phantom


@pytest.fixture(scope="module")
def case():
    return make_case(0, seed=3, spacing=4)


def test_layout_files_and_determinism(tmp_path):
    a = make_phantom(tmp_path / "a", cases=2, seed=5, spacing=4)
    b = make_phantom(tmp_path / "b", cases=1, seed=5, spacing=4)
    assert [p.name for p in a] == ["phantom_000", "phantom_001"]
    names = sorted(p.name for p in a[0].iterdir())
    assert names == [f"phantom_000_{k}.nii.gz" for k in ("flair", "seg", "t1", "t1ce", "t2")]
    for k in (*CONTRASTS, "seg"):
        x = np.asarray(nib.load(a[0] / f"phantom_000_{k}.nii.gz").dataobj)
        y = np.asarray(nib.load(b[0] / f"phantom_000_{k}.nii.gz").dataobj)
        assert x.tobytes() == y.tobytes()
    other = np.asarray(nib.load(a[1] / "phantom_001_t1.nii.gz").dataobj)
    first = np.asarray(nib.load(a[0] / "phantom_000_t1.nii.gz").dataobj)
    assert other.shape == x.shape and not np.array_equal(other, first)
    img = nib.load(a[0] / "phantom_000_t1.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # like BraTS
    assert np.allclose(img.header.get_zooms(), 4.0) and img.shape == (48, 56, 48)


def test_labels_and_one_sided_tumour(case):
    seg, brain = case["seg"], case["t1"] > 0
    assert set(np.unique(seg)) == {0, 1, 2, 4}
    assert (seg[~brain] == 0).all()
    split = hemisphere_split(brain)
    left, right = seg[:split].any(), seg[split:].any()
    assert left != right and ("left" if left else "right") == case["side"]
    for k in CONTRASTS:
        assert (case[k][~brain] == 0).all() and (case[k][brain] > 0).all()


def test_contrasts_behave_like_real_ones(case):
    from hpc_modatts.data.phantom import load_anatomy

    seg, brain = case["seg"], case["t1"] > 0
    tumour, normal = seg > 0, brain & (seg == 0)
    mean = {
        k: {
            "tumour": case[k][tumour].mean(),
            "brain": case[k][normal].mean(),
            "oedema": case[k][seg == 2].mean(),
            "enh": case[k][seg == 4].mean(),
        }
        for k in CONTRASTS
    }
    assert mean["flair"]["tumour"] > 1.3 * mean["flair"]["brain"]
    assert mean["t2"]["tumour"] > 1.1 * mean["t2"]["brain"]
    assert mean["t1ce"]["enh"] > 1.3 * mean["t1ce"]["brain"]
    # tissue classes of the (undeformed) template as a proxy for location
    anat = load_anatomy(4)
    wm = normal & (anat.wm > 0.9)
    csf = normal & (anat.csf > 0.9)
    assert wm.sum() > 50 and csf.sum() > 20
    t1, t2, flair = (case[k].astype(float) for k in ("t1", "t2", "flair"))
    assert t1[tumour].mean() < 0.8 * t1[wm].mean()  # tumour hypo-intense vs WM in T1
    assert t1[csf].mean() < t1[wm].mean() and t2[csf].mean() > t2[wm].mean()  # CSF dark T1, bright T2
    assert flair[csf].mean() < flair[wm].mean()  # FLAIR suppresses CSF


def test_healthy_cases_and_grid_sizes(tmp_path):
    full = make_case(7, seed=0, spacing=2)  # 2 mm: the long-budget benchmark size
    assert full["t1"].shape == (96, 112, 96)
    healthy = make_case(1, seed=0, spacing=4, healthy=True)
    assert not healthy["seg"].any() and healthy["side"] == "none"
