"""Prediction: sliding windows tile whole volumes seamlessly, fold ensembles average
probabilities, masks land in the original geometry, unfinished runs fail before any work."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from hpc_modatts.config import config_from_dict, config_to_dict
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.store import Store
from hpc_modatts.infer.inferer import VolumeInferer, inferer_from_config
from hpc_modatts.infer.predict import ensemble, genseg_outputs, predict, predict_case
from hpc_modatts.runs import mark_done
from hpc_modatts.train.best_model import register_model_factory

SHAPE = (20, 16, 12)  # (X, Y, Z) stored, canonical RAS
ROI = (8, 16, 8)  # a "half-volume" patch: X is less than half of the volume


def pointwise_model(weight: float = 4.0, bias: float = 0.0) -> torch.nn.Module:
    """logits = weight * x + bias per voxel: its output depends only on the voxel's own value."""
    conv = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(weight)
        conv.bias.fill_(bias)
    return conv


register_model_factory("tests.unit.test_predict:pointwise_model", pointwise_model)  # allowed by code, not by the file


def make_run(path, weight: float, bias: float):
    cfg = config_from_dict({"data": {"patch_size": list(ROI), "target": "t2", "store": "/nonexistent"}})
    model = pointwise_model(weight, bias)
    path.mkdir(parents=True)
    torch.save(
        {
            "models": {"gen": model.state_dict()},
            "config": config_to_dict(cfg),
            "factories": {"gen": ("tests.unit.test_predict:pointwise_model", {"weight": weight, "bias": bias})},
        },
        path / "best_model.pt",
    )
    mark_done(path)
    return path


def ramp() -> np.ndarray:
    """Values that differ at every position: a seam anywhere would change some voxel."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    return (0.6 * x + 0.3 * np.sin(3 * y) - 0.2 * z).astype(np.float32)


def make_store(path, image: np.ndarray) -> Store:
    shape = image.shape
    # original file in LPS orientation: the stored (RAS) array is flipped along X and Y
    orig_affine = np.array(
        [[-2.0, 0, 0, 2 * shape[0] - 2], [0, -2.0, 0, 2 * shape[1] - 2], [0, 0, 2.0, -11], [0, 0, 0, 1]]
    )
    ras_affine = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, -11], [0, 0, 0, 1]])
    st = Store.create(path)
    st.write_case(
        "c1",
        {"t2": image},
        brain=np.ones(shape, np.uint8),
        attrs={
            "affine": ras_affine.tolist(),
            "spacing": [2.0, 2.0, 2.0],
            "shape": list(shape),
            "original_shape": list(shape),
            "original_affine": orig_affine.tolist(),
            "original_orientation": ["L", "P", "S"],
            "crop_box": None,
            "resampled_shape": None,
            "hemisphere_split": shape[0] // 2,
        },
    )
    return st


@pytest.mark.parametrize("hemispheres", [True, False])
def test_windows_over_half_volume_patches_are_seamless(hemispheres):
    image = ramp()
    model = pointwise_model(4.0, 0.5)
    inferer = VolumeInferer(ROI, hemispheres=hemispheres)
    prob = ensemble(
        [model], inferer, image, np.ones(SHAPE, np.uint8), SHAPE[0] // 2, lambda m, t: torch.sigmoid(m(t)), (0.0,)
    )[0]
    direct = torch.sigmoid(4.0 * torch.from_numpy(image) + 0.5).numpy()
    assert prob.shape == SHAPE
    np.testing.assert_allclose(prob, direct, atol=1e-5)  # both hemispheres, no seam at window edges


def test_ensemble_mean_probabilities_threshold_and_original_geometry(tmp_path):
    image = ramp()
    runs = [make_run(tmp_path / "fold_0", 4.0, 1.0), make_run(tmp_path / "fold_1", 2.0, -1.0)]
    store = make_store(tmp_path / "in.zarr", image)
    out = predict(runs, store.path, tmp_path / "out", probabilities=True)
    expected = (torch.sigmoid(4.0 * torch.from_numpy(image) + 1) + torch.sigmoid(2.0 * torch.from_numpy(image) - 1)) / 2
    expected = expected.numpy()[::-1, ::-1, :]  # RAS -> the original LPS grid
    mask_img, prob_img = nib.load(out / "c1.nii.gz"), nib.load(out / "c1_prob.nii.gz")
    orig_affine = np.asarray(store.attrs("c1")["original_affine"])
    for img in (mask_img, prob_img):
        assert img.shape == SHAPE and np.allclose(img.affine, orig_affine)
    assert prob_img.get_data_dtype() == np.float32
    np.testing.assert_allclose(prob_img.get_fdata(), expected, atol=1e-5)
    mask = np.asarray(mask_img.dataobj)
    assert mask.dtype == np.uint8 and 0 < mask.sum() < mask.size
    np.testing.assert_array_equal(mask, (expected >= 0.5).astype(np.uint8))
    assert not any(p.name.startswith(".") for p in out.iterdir())  # temp folder removed


def test_unfinished_run_fails_before_any_work(tmp_path):
    good = make_run(tmp_path / "fold_0", 1.0, 0.0)
    bad = tmp_path / "fold_1"
    bad.mkdir()
    (bad / "best_model.pt").write_bytes(b"")
    with pytest.raises(DataError, match=f"run {bad} has no finished model"):
        predict([good, bad], tmp_path / "missing-input", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="input .*missing-input does not exist"):
        predict([good], tmp_path / "missing-input", tmp_path / "out")


def test_nifti_folder_is_converted_and_masks_match_the_source_grid(tmp_path):
    shape = (24, 20, 16)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    brain = (x**2 + y**2 + z**2) < 0.8
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS source file
    case = tmp_path / "src" / "case1"
    case.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.where(brain, 100 + 50 * x, 0).astype(np.float32), affine), case / "case1_t2.nii.gz")
    out = predict([make_run(tmp_path / "fold_0", 4.0, 0.0)], tmp_path / "src", tmp_path / "out", layout="brats")
    mask_img = nib.load(out / "case1.nii.gz")
    assert mask_img.shape == shape and np.allclose(mask_img.affine, affine)
    mask = np.asarray(mask_img.dataobj)
    assert mask.any() and not mask[~brain].any()  # background is -1 after normalisation: never tumour
    assert sorted(p.name for p in out.iterdir()) == ["case1.nii.gz"]  # the temporary store is gone


# ----------------------------------------------------------------------------- GenSeg extras
GENSEG_ROI = (32, 16, 16)  # MedFormer: every axis >= 16, one > 16
GENSEG_SHAPE = (40, 20, 16)  # several windows along X and Y
GENSEG_FACTORY = ("hpc_modatts.models:build_segmenter", {"size": "tiny", "genseg": True})


def make_genseg_run(path, seed: int = 0):
    """A finished run holding a tiny (untrained, seeded) GenSeg MedFormer, saved like the trainer does."""
    from hpc_modatts.train.best_model import build_model

    torch.manual_seed(seed)
    model = build_model(GENSEG_FACTORY)
    cfg = config_from_dict({"data": {"patch_size": list(GENSEG_ROI), "target": "t2", "store": "/nonexistent"}})
    path.mkdir(parents=True)
    torch.save(
        {"models": {"gen": model.state_dict()}, "config": config_to_dict(cfg), "factories": {"gen": GENSEG_FACTORY}},
        path / "best_model.pt",
    )
    mark_done(path)
    return path


def test_genseg_window_outputs_are_probability_healthy_and_residual():
    from hpc_modatts.train.best_model import build_model

    torch.manual_seed(0)
    model = build_model(GENSEG_FACTORY).eval()
    image = np.random.default_rng(0).uniform(-1, 1, GENSEG_ROI).astype(np.float32)
    whole = VolumeInferer(GENSEG_ROI, hemispheres=False)  # one window = the whole volume
    out = dict(
        zip(
            ("prob", "healthy", "residual"),
            ensemble([model], whole, image, np.ones(GENSEG_ROI), None, genseg_outputs, (0.0, -1.0, 0.0)),
        )
    )
    with torch.no_grad():
        c, u, skips = model.encode(torch.from_numpy(image)[None, None])
        direct = {
            "prob": torch.sigmoid(model.decode_segmentation(c, u, skips)),
            "healthy": model.decode_common(c, skips),
            "residual": model.decode_residual(c, u, skips),
        }
    for name, ref in direct.items():
        np.testing.assert_allclose(out[name], ref[0, 0].numpy(), atol=1e-5, err_msg=name)
    assert not np.allclose(out["healthy"], out["residual"])


def test_predict_extras_write_healthy_and_residual_in_the_original_geometry(tmp_path):
    from hpc_modatts.infer.predict import load_models

    image = np.random.default_rng(1).uniform(-1, 1, GENSEG_SHAPE).astype(np.float32)
    runs = [make_genseg_run(tmp_path / "fold_0", 0), make_genseg_run(tmp_path / "fold_1", 1)]
    store = make_store(tmp_path / "in.zarr", image)
    out = predict(runs, store.path, tmp_path / "out", probabilities=True, extras=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "c1.nii.gz",
        "c1_healthy.nii.gz",
        "c1_prob.nii.gz",
        "c1_residual.nii.gz",
    ]
    models, cfg = load_models(runs, torch.device("cpu"))
    inferer = inferer_from_config(cfg)
    expected = predict_case(models, inferer, store, "c1", "t2", extras=True)  # ensemble mean, stored (RAS) grid
    orig_affine = np.asarray(store.attrs("c1")["original_affine"])
    for name in ("healthy", "residual", "prob"):
        img = nib.load(out / f"c1_{name}.nii.gz")
        assert img.shape == GENSEG_SHAPE and np.allclose(img.affine, orig_affine)
        assert img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.get_fdata(), expected[name][::-1, ::-1, :], atol=1e-5, err_msg=name)
    single = predict_case(models[:1], inferer, store, "c1", "t2", extras=True)["healthy"]
    assert not np.allclose(single, expected["healthy"], atol=1e-4)  # really the mean of both folds
    mask = np.asarray(nib.load(out / "c1.nii.gz").dataobj)
    np.testing.assert_array_equal(mask, (expected["prob"][::-1, ::-1, :] >= 0.5).astype(np.uint8))


def test_plain_model_extras_are_skipped_without_error(tmp_path, caplog):
    store = make_store(tmp_path / "in.zarr", ramp())
    with caplog.at_level("INFO", logger="hpc_modatts.infer.predict"):
        out = predict([make_run(tmp_path / "fold_0", 4.0, 0.0)], store.path, tmp_path / "out", extras=True)
    assert sorted(p.name for p in out.iterdir()) == ["c1.nii.gz"]
    assert sum("not GenSeg" in r.message for r in caplog.records) == 1
