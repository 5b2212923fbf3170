"""MoDATTS-2D (``self-supervised-2d``, ``semi-supervised-2d``) end to end on a tiny phantom, on CPU
with real DeepSpeed engines: stage 1 as for 3D, stage 2 on hemisphere slices, a self-training
round, bit-exact resume after a kill, slice-by-slice prediction restacked into NIfTI volumes in
the original geometry, the evaluate table (2 gloo ranks: tests/integration/test_variants_two_ranks.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from hpc_modatts.config import SLICE_VARIANTS, apply_overrides
from hpc_modatts.data.store import Store
from hpc_modatts.data.volume_slices import VolumeSliceDataset
from hpc_modatts.infer import evaluate_node, predict
from hpc_modatts.infer.inferer import VolumeInferer, inferer_from_config
from hpc_modatts.runs import stage_dir
from hpc_modatts.train import segment, segment_variants, self_training
from tests.fixtures import assert_segment_resumes_bit_exactly


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- data
def test_slices_of_hemispheres_carry_m_genseg_weak_labels(chain2d):
    cfg, split, _ = chain2d
    case = split.target_train[0]
    ds = VolumeSliceDataset(cfg.data.store, [case], "t2", slice_size=(24, 56), half=True)
    store = Store.open(cfg.data.store)
    mask, brain, x_split = store.read_mask(case), store.read_brain(case), store.attrs(case)["hemisphere_split"]
    assert {s for _, s, *_ in ds.index} == {"left", "right"}
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == item["mask"].shape == (1, 24, 56) and not item["has_mask"]
        part = slice(0, x_split) if item["side"] == "left" else slice(x_split, None)
        tumour, area = mask[part, :, item["z"]].sum(), brain[part, :, item["z"]].sum()
        expected = 0 if tumour == 0 else (1 if tumour >= 0.01 * area else -1)  # thesis 4.4.1
        assert item["weak"] == expected, (item["side"], item["z"])
    assert {ds[i]["weak"] for i in range(len(ds))} >= {0, 1}
    whole = VolumeSliceDataset(cfg.data.store, [case], "t2", slice_size=(48, 56), half=False)
    assert {s for _, s, *_ in whole.index} == {"whole"} and whole[0]["image"].shape == (1, 48, 56)
    # the pseudo-target store's slices of annotated cases carry the source masks
    pt = VolumeSliceDataset(
        cfg.train.pseudo_target_store or cfg.run_dir / "translate" / "synth.zarr",
        [split.source_labeled[0]],
        "t2",
        slice_size=(24, 56),
        annotated={split.source_labeled[0]},
    )
    items = [pt[i] for i in range(len(pt))]
    assert all(it["has_mask"] for it in items) and any(it["mask"].sum() > 0 for it in items)


def test_slice_inferer_restacks_what_a_2d_model_sees_per_slice():
    """A 2D 'model' returning its input: the volume comes back inside both hemispheres."""
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (20, 30, 7)).astype(np.float32)
    brain = np.ones_like(image, dtype=np.uint8)
    seen = []

    def identity_2d(t: torch.Tensor) -> torch.Tensor:
        assert t.dim() == 4  # (B, 1, X, Y): a 2D model's input
        seen.append(t.shape[0])
        return t

    out = VolumeInferer((10, 30, 1), hemispheres=True, sw_batch_size=4, slices=True)(identity_2d, image, brain, 10)
    assert out.shape == (1, 20, 30, 7) and np.allclose(out[0], image, atol=1e-6)
    assert sum(seen) == 2 * 7  # every slice of each hemisphere once
    with pytest.raises(ValueError, match=r"\(X, Y, 1\)"):
        VolumeInferer((10, 30, 2), slices=True)


def test_2d_variants_are_pipeline_nodes_sharing_stage_1(tmp_path):
    from hpc_modatts.config import config_from_dict
    from hpc_modatts.pipeline.dag import build_dag

    cfg = config_from_dict(
        {
            "name": "exp",
            "run_root": str(tmp_path),
            "pipeline": {
                "self_training_rounds": 1,
                "variants": ["self-supervised", *SLICE_VARIANTS, "target-supervised"],
            },
        }
    )
    dag = build_dag(cfg)
    assert [n for n in dag.nodes if n in ("translate", "synthesize")] == ["translate", "synthesize"]  # one stage 1
    for v in SLICE_VARIANTS:
        assert dag[f"segment/{v}/fold_0"].deps == ("synthesize",)
        assert dag[f"predict/{v}"].deps == (f"segment/{v}/fold_0/round_1",)
        assert dag[f"predict/{v}"].run_dir == stage_dir(cfg.run_dir, "predict", v)
        assert "evaluate/target-supervised" in dag[f"evaluate/{v}"].deps  # % of the 3D upper bound
        assert cfg.final_model_dirs(v) == [stage_dir(cfg.run_dir, "self-train", v, 0, 1)]


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("variant", SLICE_VARIANTS)
def test_2d_variant_trains_self_trains_and_predicts_in_the_original_geometry(chain2d, variant, tmp_path):
    cfg, split, nifti = chain2d
    # into a run root of its own (the session's chain stays read-only), from the chain's stage 1
    stage1 = cfg.run_dir / "translate"
    cfg = apply_overrides(cfg, [f"train.variant={variant}", f"run_root={tmp_path}", f"train.translator_run={stage1}"])
    run = segment.run(cfg)
    assert run == stage_dir(cfg.run_dir, "segment", variant, 0) and (run / "DONE").is_file()
    rows = _metrics(run)
    train = [r for r in rows if "train/loss" in r]
    assert len(train) == 2 and all(np.isfinite(v) for r in train for v in r.values())
    assert any("val/dice" in r for r in rows)
    best = torch.load(run / "best_model.pt", weights_only=False)
    if variant == "semi-supervised-2d":
        assert {"train/adv", "train/rec", "train/lat", "train/disc", "train/seg_pt"} <= set(train[0])
        assert set(best["models"]) == {"gen", "disc"}
        assert best["factories"]["disc"][0].endswith("build_discriminators_2d")
    assert best["factories"]["gen"][1]["spatial_dims"] == 2
    # one self-training round: pseudo-labels are volumes predicted slice by slice
    round_1 = self_training.run(apply_overrides(cfg, ["train.rounds=1"]))
    labels = Store.open(round_1 / "pseudo_labels.zarr")
    src = Store.open(cfg.data.store)
    assert labels.case_ids == sorted(split.target_train)
    case = labels.case_ids[0]
    assert labels.read_array(case, "pseudo_label").shape == src.read_image(case, "t2").shape
    assert "train/st" in _metrics(round_1)[0]
    # predict (the round's model, slice by slice) and evaluate like the 3D variants
    pred = predict.run(cfg)
    for case in split.test:
        ref = nib.load(next((nifti / case).glob("*_t2.nii.gz")))
        out = nib.load(pred / f"{case}.nii.gz")
        assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
        if variant == "semi-supervised-2d":  # GenSeg extras of a 2D model, restacked too
            assert nib.load(pred / f"{case}_healthy.nii.gz").shape == ref.shape
    ev = evaluate_node.run(cfg)
    summary = json.loads((ev / "metrics.json").read_text())["summary"]
    assert summary["dice"]["n"] == len(split.test)
    from hpc_modatts.demo import results_table

    _, table = results_table(cfg.run_dir, (variant,))
    assert set(table) == {variant}


def test_cli_offers_the_2d_variants(capsys):
    from hpc_modatts.cli import main

    for stage in ("segment", "self-train"):
        with pytest.raises(SystemExit):  # argparse's own usage error
            main(["train", stage, "exp.yaml", "--variant", "bogus"])
        err = capsys.readouterr().err
        assert all(f"'{v}'" in err for v in SLICE_VARIANTS), err


def test_2d_inferer_from_config_and_task_classes(chain2d):
    cfg, _, _ = chain2d
    inferer = inferer_from_config(apply_overrides(cfg, ["train.variant=self-supervised-2d"]))
    assert inferer.slices and inferer.patch_size == (24, 56, 1) and inferer.sw_batch_size == 2 * 16
    assert not inferer_from_config(cfg).slices
    for v in SLICE_VARIANTS:
        assert issubclass(segment_variants.VARIANT_TASKS[v], segment_variants.SliceTask)


def test_2d_semi_supervised_resumes_bit_exactly_after_a_kill(chain2d, tmp_path):
    """Killed during step 3 (latest checkpoint: step 2), resumed: the weights of both engines
    equal those of an uninterrupted run, bit for bit."""
    cfg0, _, _ = chain2d
    assert_segment_resumes_bit_exactly(
        cfg0,
        tmp_path,
        [
            "train.variant=semi-supervised-2d",
            "train.batch_size=2",
            f"train.translator_run={cfg0.run_dir / 'translate'}",
        ],
    )
