"""Every stage-2 family on 2 gloo ranks under torchrun (real DeepSpeed ZeRO): the 3D chain at
ZeRO-3 (translate, synthesize, semi-supervised), MoDATTS-2D semi-supervised and M-GenSeg at ZeRO-2.

They start from the session's tiny chains (``tests/chains.py``, shared with the unit tests) and
write into their own ``tmp_path``.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from hpc_modatts.config import apply_overrides, config_to_dict
from hpc_modatts.data.store import Store
from hpc_modatts.runs import stage_dir
from hpc_modatts.train import synthesize
from tests.fixtures import torchrun_two_ranks


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_zero3_translate_synthesize_semi_supervised(chain, tmp_path):
    """2 gloo ranks under torchrun, ZeRO-3: every rank runs the same forwards (validation panel,
    GenSeg on mixed A/P batches), synthesis shards cases over ranks without collisions. Stage 1's
    first step is a discriminator-only warm-up step (the generators' forward without gradients
    under ZeRO-3), its second a generator step at half the adversarial weight."""
    cfg, split, _ = chain
    data = config_to_dict(
        apply_overrides(
            cfg,
            [
                f"run_root={tmp_path}",
                "distributed.zero_stage=3",
                "train.batch_size=4",
                "train.stage_overrides={translate: {batch_size: 4, disc_warmup_steps: 1, adv_ramp_steps: 2}}",
            ],
        )
    )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    for cmd in (["train", "translate"], ["synthesize"], ["train", "segment", "--variant", "semi-supervised"]):
        torchrun_two_ranks(*cmd, str(path))
    root = tmp_path / "t"
    rows = [json.loads(ln) for ln in (root / "translate" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/disc" in r]
    assert sorted(k for k in train[0] if k.startswith("train/")) == ["train/disc"]  # the warm-up step
    assert train[1]["train/adv_scale"] == 0.5 and "train/loss" in train[1]
    assert Store.open(root / "translate" / "synth.zarr").case_ids == sorted(split.source_train)
    assert (root / "translate" / synthesize.MARKER).is_file()
    assert (stage_dir(root, "segment", "semi-supervised", 0) / "DONE").is_file()


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_zero2_semi_supervised_2d(chain2d, tmp_path):
    """2 gloo ranks under torchrun, ZeRO-2: MoDATTS-2D semi-supervised trains, validates and saves."""
    cfg, _, _ = chain2d
    data = config_to_dict(
        apply_overrides(
            cfg,
            [
                f"run_root={tmp_path}",
                "distributed.zero_stage=2",
                "train.batch_size=4",
                "train.variant=semi-supervised-2d",
            ],
        )
    )
    data["train"]["translator_run"] = str(cfg.run_dir / "translate")  # stage 1 of the session's 2D chain
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    torchrun_two_ranks("train", "segment", str(path))
    run = stage_dir(tmp_path / "t", "segment", "semi-supervised-2d", 0)
    assert (run / "DONE").is_file()
    best = torch.load(run / "best_model.pt", weights_only=False)
    assert set(best["models"]) == {"gen", "disc"} and best["config"]["distributed"]["zero_stage"] == 2


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_zero2_mgenseg(mgenseg_phantom, tmp_path):
    """2 gloo ranks under torchrun, ZeRO-2: M-GenSeg trains, validates and saves."""
    cfg, _, _ = mgenseg_phantom
    data = config_to_dict(
        apply_overrides(cfg, [f"run_root={tmp_path}", "distributed.zero_stage=2", "train.batch_size=4"])
    )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    torchrun_two_ranks("train", "segment", str(path))
    run = stage_dir(tmp_path / "t", "segment", "m-genseg", 0)
    assert (run / "DONE").is_file()
    best = torch.load(run / "best_model.pt", weights_only=False)
    assert set(best["models"]) == {"gen", "disc"} and best["config"]["distributed"]["zero_stage"] == 2
