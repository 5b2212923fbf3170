"""Tiny training chains shared by the unit tests and the two-rank integration tests (session fixtures).

Each runs once per test session (``tests/conftest.py`` registers them) and is READ-ONLY: a test
that needs to change a run works on a copy (``shutil.copytree`` + a ``run_root=`` override).

* ``chain``: 3D MoDATTS, translate -> synthesize -> segment (self-supervised) -> one self-training
  round; 32x32 slices, 32x32x16 patches, 2 steps each.
* ``chain2d``: stage 1 only (translate -> synthesize) for the MoDATTS-2D variants, stage 2 on 24x56
  slice windows (a whole hemisphere of the 48x56 phantom).
* ``mgenseg_phantom``: the data and config of M-GenSeg (no stage 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_modatts.config import apply_overrides, load_config
from hpc_modatts.data.splits import make_split
from hpc_modatts.train import segment, self_training, synthesize, translate
from tests.fixtures import make_phantom_store

DEMO = Path(__file__).resolve().parents[1] / "hpc_modatts" / "configs" / "demo_cpu.yaml"
TRANSLATE_TINY = "train.stage_overrides={translate: {batch_size: 2, weights: {adv: 1, seg: 1, cyc: 10}}}"


def tiny_overrides(root: Path, store: Path, split: Path) -> list[str]:
    """The 3D chain's settings: 32x32 slices, 32x32x16 patches, 2 steps per stage."""
    return [
        f"data.store={store}",
        f"data.split={split}",
        f"run_root={root / 'runs'}",
        "name=t",
        "data.slice_size=[32,32]",
        "data.patch_size=[32,32,16]",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.val_cases=1",
        "train.log_every=1",
        TRANSLATE_TINY,
    ]


def tiny_overrides_2d(root: Path, store: Path, split: Path) -> list[str]:
    """32x32 stage-1 slices; stage 2 on 24x56 slice windows (a whole hemisphere of the 48x56 phantom)."""
    later = ["data.patch_size=[24,56,16]", "train.batch_size=4", "pipeline.self_training_rounds=1"]
    # the demo config's 2D blocks set 300 steps (variant blocks win over train.*): 2 here too
    later += [f"train.variant_overrides.{v}.max_steps=2" for v in ("self-supervised-2d", "semi-supervised-2d")]
    return [*tiny_overrides(root, store, split), *later]  # later overrides win


def _phantom(root: Path, source_labeled: float, target_labeled: float, test: float):
    nifti, store = make_phantom_store(root, cases=6, seed=0, size="small")
    split = make_split(store, "t1", "t2", source_labeled, target_labeled, val=0.2, test=test, seed=0)
    split.save(root / "split.json")
    return nifti, store, split


def _stage1(root: Path, overrides, source_labeled: float, target_labeled: float, test: float):
    """Phantom, split and a finished stage 1 (translate -> synthesize): (cfg, split, nifti, paths)."""
    nifti, store, split = _phantom(root, source_labeled, target_labeled, test)
    cfg = load_config(DEMO, overrides(root, store, root / "split.json"))
    return cfg, split, nifti, {"translate": translate.run(cfg), "synth": synthesize.run(cfg)}


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
    """Run translate -> synthesize -> segment -> self-train once; return (cfg, split, paths)."""
    cfg, split, _, out = _stage1(tmp_path_factory.mktemp("stages"), tiny_overrides, 0.5, 0.5, test=0.0)
    out["segment"] = segment.run(cfg)
    out["round_1"] = self_training.run(apply_overrides(cfg, ["train.rounds=1"]))
    return cfg, split, out


@pytest.fixture(scope="session")
def chain2d(tmp_path_factory):
    """translate -> synthesize once (stage 1, unchanged); the 2D variants' runs come in the tests."""
    cfg, split, nifti, _ = _stage1(tmp_path_factory.mktemp("stages2d"), tiny_overrides_2d, 1.0, 0.0, test=0.2)
    return cfg, split, nifti


@pytest.fixture(scope="session")
def mgenseg_phantom(tmp_path_factory):
    """6 phantom cases, T1 source fully annotated, T2 target unannotated; 24x56 slice windows."""
    root = tmp_path_factory.mktemp("mgenseg")
    nifti, store, split = _phantom(root, source_labeled=1.0, target_labeled=0.0, test=0.2)
    overrides = [
        f"data.store={store}",
        f"data.split={root / 'split.json'}",
        f"run_root={root / 'runs'}",
        "name=t",
        "data.patch_size=[24,56,16]",
        "train.variant=m-genseg",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.val_cases=1",
        "train.log_every=1",
        "infer.sw_batch_size=16",
    ]
    return load_config(DEMO, overrides), split, nifti
