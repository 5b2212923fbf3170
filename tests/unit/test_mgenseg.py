"""M-GenSeg (``m-genseg``, thesis chapter 4) on a tiny phantom, on CPU with real DeepSpeed engines:
the model (attention-gated skips, a translation decoder per modality, counts), its DAG node
without stage 1, end-to-end training on source + target slices, slice-by-slice prediction into
NIfTI volumes in the original geometry, the evaluate table, bit-exact resume after a kill (2 gloo
ranks: tests/integration/test_variants_two_ranks.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets.attentionunet import AttentionBlock

from hpc_modatts.config import apply_overrides
from hpc_modatts.infer import evaluate_node, predict
from hpc_modatts.infer.inferer import inferer_from_config
from hpc_modatts.models.mgenseg import MGenSeg, build_mgenseg
from hpc_modatts.models.sizes import build_segmenter
from hpc_modatts.runs import stage_dir
from hpc_modatts.train import segment
from hpc_modatts.train.best_model import build_model
from hpc_modatts.train.mgenseg import DOMAINS, MGenSegTask
from tests.fixtures import assert_segment_resumes_bit_exactly


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- model
def test_every_decoder_gates_its_skips_and_each_modality_translates():
    torch.manual_seed(0)
    net = build_mgenseg("tiny").eval()
    for m in (net.source, net.target):
        for decoder in (m.common_decoder, m.res_seg_decoder, m.translation_decoder):
            gates = [getattr(decoder, s).gate for s in ("up1", "up2", "up3", "up4")]
            assert all(isinstance(g, AttentionBlock) for g in gates)
        assert not any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())
    x = torch.rand(2, 1, 24, 56) * 2 - 1
    x[:, :, :3] = -1.0  # background
    with torch.no_grad():
        c, u, skips = net.source.encode(x)
        y = net.source.translate(c, u, skips, x)
        assert y.shape == x.shape and y.abs().max() <= 1
        assert torch.all(y[:, :, :3] == -1.0)  # model.keep_background
        assert torch.equal(net(x), net.target.segment(x))  # THE segmenter is the target's
        assert net(x).shape == (2, 1, 24, 56)
    # the ungated MedFormer keeps its parameters (PassSkip has none)
    assert _count(build_segmenter("tiny", genseg=True, spatial_dims=2)) < _count(net.target)


def test_activation_checkpointing_keeps_gradients_bit_identical():
    """model.checkpointing on M-GenSeg: gated decoder stages recomputed (their switchable gate norms
    included) give the same loss and gradients as the plain model."""
    import copy

    from hpc_modatts.models.checkpointing import apply_activation_checkpointing

    torch.manual_seed(0)
    plain = build_mgenseg("tiny")
    ckpt = apply_activation_checkpointing(copy.deepcopy(plain), ["bmdh", "conv", "decoder"])
    assert sum(1 for m in ckpt.modules() if getattr(m, "_activation_checkpointed", False)) > 0
    x = torch.rand(2, 1, 24, 56) * 2 - 1

    def loss(m: MGenSeg) -> torch.Tensor:
        torch.manual_seed(1)
        c, u, skips = m.source.encode(x)
        y = m.source.translate(c, u, skips, x)
        c2, u2, skips2 = m.target.encode(y)
        return (
            m.target.decode_segmentation(c2, u2, skips2).mean()
            + m.target.translate(c2, u2, skips2, y).mean()
            + m.source.decode_residual(c, m.source.sample_u(u), skips).mean()
        )

    a, b = loss(plain), loss(ckpt)
    a.backward()
    b.backward()
    assert torch.equal(a, b)
    grads = dict(ckpt.named_parameters())
    for k, p in plain.named_parameters():
        if p.grad is not None:
            assert torch.equal(p.grad, grads[k].grad), k


def test_parameter_counts():
    """The thesis gives no M-GenSeg size (4.3.3: GenSeg's encoders and decoders); ours is the 2D
    MedFormer of a named size per modality + a gated translation decoder (models.mgenseg)."""
    full = build_mgenseg("full")
    assert 94.0e6 < _count(full) < 95.0e6  # two modalities of ~47.2 M
    assert 7.5e6 < _count(full.source.translation_decoder) < 7.7e6
    assert 0.26e6 < _count(build_mgenseg("tiny")) < 0.28e6
    assert isinstance(full, MGenSeg)


# ----------------------------------------------------------------------------- pipeline
def test_mgenseg_is_a_pipeline_node_without_stage_1(tmp_path):
    from hpc_modatts.config import config_from_dict
    from hpc_modatts.pipeline.dag import build_dag

    cfg = config_from_dict(
        {
            "name": "exp",
            "run_root": str(tmp_path),
            "pipeline": {"self_training_rounds": 1, "variants": ["m-genseg", "target-supervised"]},
        }
    )
    dag = build_dag(cfg)
    assert "translate" not in dag.nodes and "synthesize" not in dag.nodes
    assert not any("round_" in n for n in dag.nodes)
    assert dag["segment/m-genseg/fold_0"].deps == ()
    assert dag["predict/m-genseg"].deps == ("segment/m-genseg/fold_0",)
    assert "evaluate/target-supervised" in dag["evaluate/m-genseg"].deps
    assert cfg.final_model_dirs("m-genseg") == [stage_dir(cfg.run_dir, "segment", "m-genseg", 0)]


def test_weights_follow_the_thesis_and_sum_to_one(mgenseg_phantom):
    cfg, split, _ = mgenseg_phantom
    task = MGenSegTask(cfg, split, Path("unused"))
    w = task.weights
    assert set(w) == {"mod_adv", "mod_cyc", "gen_adv", "gen_rec", "gen_lat", "seg"}  # no target masks
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["mod_cyc"] / w["mod_adv"] == pytest.approx(20 / 3) and w["gen_rec"] / w["gen_lat"] == pytest.approx(10)
    assert w["seg"] / w["gen_lat"] == pytest.approx(100 / 2)  # 100 % annotated source: lambda_seg 100
    assert inferer_from_config(cfg).slices
    with pytest.raises(Exception, match="train.mgenseg_weights.gen_adv"):
        apply_overrides(cfg, ["train.mgenseg_weights.gen_adv=-1"])


class _GradEngine:
    """An engine that keeps the gradients of one backward and never steps (to inspect them)."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *args):
        return self.module(*args)

    def backward(self, loss):
        self.module.zero_grad(set_to_none=True)
        loss.backward()
        self.grads = {
            k: None if p.grad is None else p.grad.abs().sum().item() for k, p in self.module.named_parameters()
        }

    def step(self):
        pass


def test_the_translation_dice_trains_the_translator_and_the_target_segmenter(mgenseg_phantom):
    """Only lambda_seg active: Dice(y_S, G_seg^T(E_T(G_T(E_S(S))))) reaches G_T (the source network's
    translation decoder) and the target's encoder and residual/segmentation decoder, never the
    common decoders nor the target's translation decoder G_S (used by T->S and the cycles only)."""
    from torch.utils.data import default_collate

    cfg, split, _ = mgenseg_phantom
    zeros = [f"train.mgenseg_weights.{k}=0" for k in ("mod_adv", "mod_cyc", "gen_adv", "gen_rec", "gen_lat")]
    task = MGenSegTask(apply_overrides(cfg, zeros), split, Path("unused"))
    assert set(task.weights) == {"seg"}
    ds = task.train_dataset()
    torch.manual_seed(0)
    diseased = [i for i, item in enumerate(ds.first.index) if item[4] == 1]  # source slices weakly P
    batch = default_collate([ds[i] for i in (diseased[0], diseased[-1], 0, len(ds.first) - 1)])
    assert batch["source"]["has_mask"].all() and batch["source"]["mask"].sum() > 0
    gen = _GradEngine(build_mgenseg("tiny"))
    disc = _GradEngine(build_model(task.model_factory("disc")))
    out = task.train_step(batch, {"gen": gen, "disc": disc}, 0)
    assert out["seg"] > 0
    grads = gen.grads

    def touched(prefix: str) -> bool:
        return any(v for k, v in grads.items() if k.startswith(prefix))

    for prefix in (
        "source.encoder.",
        "source.translation_decoder.",
        "target.encoder.",
        "target.res_seg_decoder.",
        "source.res_seg_decoder.",
    ):
        assert touched(prefix), prefix
    for prefix in ("source.common_decoder.", "target.common_decoder.", "target.translation_decoder."):
        assert not touched(prefix), prefix


# ----------------------------------------------------------------------------- training
def test_mgenseg_trains_end_to_end_and_predicts_in_the_original_geometry(mgenseg_phantom, tmp_path):
    cfg, split, nifti = mgenseg_phantom
    cfg = apply_overrides(cfg, [f"run_root={tmp_path}"])  # the session's fixture stays read-only
    run = segment.run(cfg)
    assert run == stage_dir(cfg.run_dir, "segment", "m-genseg", 0) and (run / "DONE").is_file()
    rows = _metrics(run)
    train = [r for r in rows if "train/loss" in r]
    assert len(train) == 2 and all(np.isfinite(v) for r in train for v in r.values())
    terms = ("mod_adv", "mod_cyc", "gen_adv", "gen_rec", "gen_lat", "seg", "disc")
    assert {f"train/{k}" for k in terms} <= set(train[0])
    assert any("val/dice" in r for r in rows)
    best = torch.load(run / "best_model.pt", weights_only=False)
    assert set(best["models"]) == {"gen", "disc"}
    assert best["factories"]["gen"][0] == "hpc_modatts.models:build_mgenseg"
    assert best["factories"]["disc"][1]["domains"] == list(DOMAINS)
    pred = predict.run(cfg)
    for case in split.test:
        ref = nib.load(next((nifti / case).glob("*_t2.nii.gz")))
        out = nib.load(pred / f"{case}.nii.gz")
        assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
        assert nib.load(pred / f"{case}_healthy.nii.gz").shape == ref.shape  # the target's GenSeg extras
    ev = evaluate_node.run(cfg)
    summary = json.loads((ev / "metrics.json").read_text())["summary"]
    assert summary["dice"]["n"] == len(split.test)
    from hpc_modatts.demo import results_table

    _, table = results_table(cfg.run_dir, ("m-genseg",))
    assert set(table) == {"m-genseg"}


def test_mgenseg_resumes_bit_exactly_after_a_kill(mgenseg_phantom, tmp_path):
    """Killed during step 3 (latest checkpoint: step 2), resumed: the weights of both engines
    equal those of an uninterrupted run, bit for bit."""
    assert_segment_resumes_bit_exactly(mgenseg_phantom[0], tmp_path, ["train.batch_size=2"])
