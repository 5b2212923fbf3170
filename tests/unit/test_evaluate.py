"""Evaluation on known masks: identity, an analytically shifted cube, empties, bad folders."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from hpc_modatts.data.errors import DataError
from hpc_modatts.infer.evaluate import evaluate
from hpc_modatts.infer.metrics import case_metrics


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
    diagonal = np.sqrt(3 * 8.0**2)  # BraTS convention: one side empty -> the image diagonal (mm)
    assert r == {
        "dice": 0.0,
        "hd95": pytest.approx(diagonal),
        "assd": pytest.approx(diagonal),
        "note": "empty prediction",
    }
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
    out = evaluate(
        tmp_path / "pred",
        tmp_path / "ref",
        tmp_path / "out",
        target_supervised=tmp_path / "ts.json",
        images=tmp_path / "img",
    )
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


def png_width(path) -> int:
    """Pixel width from the PNG IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big")


def test_panel_shows_every_extra_image_and_extras_in_the_prediction_folder_are_not_cases(tmp_path):
    """Target + pseudo-target + healthy + residual + contours = 5 columns; the predict folder's
    ``<case>_healthy/_residual`` files are read as images, never as cases."""
    rng = np.random.default_rng(0)
    shape = (24, 16, 16)
    save(tmp_path / "ref" / "a.nii.gz", cube())
    save(tmp_path / "pred" / "a.nii.gz", cube(start=(5, 3, 3)))
    save(tmp_path / "pred" / "a_healthy.nii.gz", rng.uniform(-1, 1, shape).astype(np.float32))
    save(tmp_path / "pred" / "a_residual.nii.gz", rng.normal(0, 0.2, shape).astype(np.float32))
    save(tmp_path / "img" / "a.nii.gz", rng.uniform(-1, 1, shape).astype(np.float32))
    save(tmp_path / "img" / "a_pseudo_target.nii.gz", rng.uniform(-1, 1, shape).astype(np.float32))
    evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "contours")  # no images: contours only
    full = evaluate(
        tmp_path / "pred", tmp_path / "ref", tmp_path / "full", images=[tmp_path / "img", tmp_path / "pred"]
    )
    res = json.loads((full / "metrics.json").read_text())
    assert [c["case"] for c in res["cases"]] == ["a"]
    narrow = evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "narrow", images=tmp_path / "img")
    w_one = png_width(tmp_path / "contours" / "panels" / "a.png")
    w_three, w_five = png_width(narrow / "panels" / "a.png"), png_width(full / "panels" / "a.png")
    print("panel widths (1, 3, 5 columns):", w_one, w_three, w_five)
    assert 2.5 * w_one < w_three < w_five  # contours < target+pseudo+contours < all 5 columns
    assert w_five > 4.5 * w_one


def test_panel_columns_follow_the_images_given(tmp_path):
    from hpc_modatts.infer.panels import save_panel

    shape = (24, 16, 16)
    imgs = {
        n: np.random.default_rng(1).normal(size=shape).astype(np.float32)
        for n in ("target", "pseudo_target", "healthy", "residual")
    }
    m = cube()
    widths = [png_width(save_panel(tmp_path / f"{k}.png", "a", dict(list(imgs.items())[:k]), m, m)) for k in range(5)]
    assert widths == sorted(widths) and len(set(widths)) == 5


# ----------------------------------------------------------------------------- pipeline node
def _translator_run(run_dir, cfg):
    """A finished translator run with the best_model.pt (the selected translator) the trainer writes."""
    import torch

    from hpc_modatts.config import config_to_dict
    from hpc_modatts.runs import mark_done
    from hpc_modatts.train.translate import build_cycle_translators

    torch.manual_seed(0)
    model = build_cycle_translators("tiny")
    run_dir.mkdir(parents=True)
    torch.save(
        {
            "models": {"gen": model.state_dict()},
            "config": config_to_dict(cfg),
            "step": 3,
            "dice": 0.5,
            "factories": {"gen": ("hpc_modatts.train.translate:build_cycle_translators", {"size": "tiny"})},
        },
        run_dir / "best_model.pt",
    )
    mark_done(run_dir, best_step=3)
    return model.eval()


def test_pipeline_node_draws_pseudo_target_and_genseg_extras(tmp_path):
    """evaluate.run translates the test case's source image with the selected translator and
    links the predict folder's healthy/residual next to the target image: a 5-column panel."""
    import torch

    from hpc_modatts.config import config_from_dict
    from hpc_modatts.data.splits import Split
    from hpc_modatts.data.store import Store
    from hpc_modatts.infer.evaluate_node import run
    from hpc_modatts.infer.panels import save_panel
    from hpc_modatts.runs import stage_dir
    from hpc_modatts.train.synthesize import translate_volume

    shape = (24, 20, 16)
    rng = np.random.default_rng(0)
    cfg = config_from_dict(
        {
            "name": "exp",
            "run_root": str(tmp_path / "runs"),
            "data": {
                "store": str(tmp_path / "s.zarr"),
                "split": str(tmp_path / "split.json"),
                "source": "t1",
                "target": "t2",
                "slice_size": [32, 32],
            },
            "model": {"translator_size": "tiny"},
            "train": {"variant": "semi-supervised"},
        }
    )
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # original file LAS: stored RAS array is flipped along X
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    ras[0, 3] = -2.0 * (shape[0] - 1)
    brain = np.ones(shape, np.uint8)
    t1, t2 = (rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(2))
    Store.create(tmp_path / "s.zarr").write_case(
        "c1",
        {"t1": t1, "t2": t2},
        mask=cube(shape, (6, 5, 4), 8),
        brain=brain,
        attrs={
            "affine": ras.tolist(),
            "spacing": [2.0] * 3,
            "shape": list(shape),
            "original_shape": list(shape),
            "original_affine": affine.tolist(),
            "original_orientation": ["L", "A", "S"],
            "crop_box": None,
            "resampled_shape": None,
        },
    )
    Split("t1", "t2", [], [], [], [], [], ["c1"]).save(tmp_path / "split.json")
    translator = _translator_run(stage_dir(cfg.run_dir, "translate"), cfg)
    pred = stage_dir(cfg.run_dir, "predict", "semi-supervised")
    nib.save(nib.Nifti1Image(cube(shape, (7, 5, 4), 8)[::-1], affine), _mkdir(pred) / "c1.nii.gz")
    for name in ("healthy", "residual"):
        nib.save(nib.Nifti1Image(rng.uniform(-1, 1, shape).astype(np.float32), affine), pred / f"c1_{name}.nii.gz")

    out = run(cfg)
    pseudo = nib.load(out / "images" / "c1_pseudo_target.nii.gz")
    assert pseudo.shape == shape and np.allclose(pseudo.affine, affine)
    with torch.no_grad():
        expected = translate_volume(translator, t1, brain, (32, 32), torch.device("cpu"))[::-1]  # RAS -> LAS
    np.testing.assert_allclose(pseudo.get_fdata(), expected, atol=1e-5)
    for name in ("healthy", "residual"):
        assert (out / "images" / f"c1_{name}.nii.gz").read_bytes() == (pred / f"c1_{name}.nii.gz").read_bytes()
    assert [c["case"] for c in json.loads((out / "metrics.json").read_text())["cases"]] == ["c1"]
    five = {n: t2 for n in ("target", "pseudo_target", "healthy", "residual")}
    w_ref = png_width(save_panel(tmp_path / "ref5.png", "c1", five, t2 > 0, t2 > 0))
    assert abs(png_width(out / "panels" / "c1.png") - w_ref) < 0.05 * w_ref

    (stage_dir(cfg.run_dir, "translate") / "DONE").unlink()  # no finished translator: no pseudo-target, no error
    (out / "images" / "c1_pseudo_target.nii.gz").unlink()
    run(cfg)
    assert not (out / "images" / "c1_pseudo_target.nii.gz").exists() and (out / "panels" / "c1.png").is_file()


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_models_plausible_reads_the_training_runs_done_markers(tmp_path):
    from hpc_modatts.infer.evaluate_node import models_plausible
    from hpc_modatts.runs import mark_done

    a, b, c = tmp_path / "fold_0", tmp_path / "fold_1", tmp_path / "fold_2"
    mark_done(a, best_step=3, plausible=True)
    mark_done(b, best_step=8, plausible=False)  # every validation implausible (Trainer.fit)
    assert models_plausible([a]) is True
    assert models_plausible([a, b]) is False  # one fold of the ensemble without a selected model
    mark_done(c, best_step=3)  # written before the flag existed: plausible unless it says otherwise
    assert models_plausible([a, c]) is True
    assert models_plausible([a, tmp_path / "missing"]) is None  # not a finished run: no judgement
