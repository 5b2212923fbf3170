"""The shipped experiment configs load, carry the paper's numbers, and bad keys/values name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_modatts.config import BUILTIN_CONFIGS, ConfigError, apply_overrides, builtin_configs, load_config, stage_config
from hpc_modatts.pipeline.submit import available_presets, load_preset

CONFIGS = Path(__file__).resolve().parents[2] / "hpc_modatts" / "configs"
ALL = sorted(CONFIGS.glob("*.yaml"))


def test_the_expected_configs_exist():
    names = {p.name for p in ALL}
    assert {"demo_cpu.yaml", "brats_t1_t2.yaml", "brats_t2_t1ce.yaml", "crossmoda_t1ce_hrt2.yaml"} <= names


def test_configs_and_presets_are_package_data(tmp_path, monkeypatch):
    """Read through importlib.resources, by name, from any folder (what a wheel install needs)."""
    monkeypatch.chdir(tmp_path)
    assert builtin_configs() == sorted(p.stem for p in ALL)
    assert (BUILTIN_CONFIGS / "demo_cpu.yaml").is_file()
    assert load_config("demo_cpu") == load_config("demo_cpu.yaml") == load_config(CONFIGS / "demo_cpu.yaml")
    with pytest.raises(ConfigError, match=r"nope.yaml does not exist and is not a built-in config \(brats_t1_t2, "):
        load_config("nope.yaml")
    assert {"example_a100", "local_test"} <= set(available_presets())
    assert load_preset("example_a100")["gpus_per_node"] >= 1


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_config_loads_for_every_stage(path):
    cfg = load_config(path)
    for stage in ("translate", "synthesize", "segment", "self-train"):
        s = stage_config(cfg, stage)
        assert s.train.stage == stage and s.train.stage_overrides == {}
        assert stage_config(s, stage) == s  # applying it again changes nothing


@pytest.mark.parametrize("name", ["brats_t1_t2.yaml", "brats_t2_t1ce.yaml", "crossmoda_t1ce_hrt2.yaml"])
def test_paper_numbers(name):
    """Thesis 5.5.1: stage 1 200 epochs batch 15 (adv 1 seg 1 cyc 10); stage 2 300 epochs batch 2;
    3 self-training rounds of 150 epochs; AMSGrad lr 1e-4 betas (0.5, 0.999); alpha 0.6."""
    cfg = load_config(CONFIGS / name)
    t1 = stage_config(cfg, "translate").train
    assert (t1.epochs, t1.batch_size) == (200, 15)
    assert (t1.weights.adv, t1.weights.seg, t1.weights.cyc) == (1, 1, 10)
    t2 = stage_config(cfg, "segment").train
    assert (t2.epochs, t2.batch_size, t2.weights.adv) == (300, 2, 5)
    st = stage_config(cfg, "self-train").train
    assert (st.epochs, st.rounds, st.alpha) == (150, 3, 0.6)
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.amsgrad) == (1e-4, (0.5, 0.999), True)
    assert t2.weights.seg_pt == -1 and t2.weights.st == -1  # from the annotation fraction
    assert cfg.model.segmenter_size == "full" and cfg.model.translator_size == "full"


def test_brats_and_crossmoda_genseg_weights():
    brats = load_config(CONFIGS / "brats_t1_t2.yaml").train.weights
    assert (brats.adv, brats.rec, brats.lat) == (5, 50, 5)
    cm = load_config(CONFIGS / "crossmoda_t1ce_hrt2.yaml")
    assert (cm.train.weights.adv, cm.train.weights.rec, cm.train.weights.lat) == (5, 75, 10)
    assert cm.pipeline.folds == 5
    assert tuple(cm.data.slice_size) == (256, 256)
    assert tuple(load_config(CONFIGS / "brats_t1_t2.yaml").data.patch_size) == (96, 160, 64)


def test_stage_overrides_reach_model_and_optim_of_that_stage_only():
    cfg = load_config(CONFIGS / "demo_cpu.yaml")
    t1, t2 = stage_config(cfg, "translate"), stage_config(cfg, "segment")
    assert t1.model.disc_channels == (16, 32, 64) and t2.model.disc_channels == (8, 16, 32)
    assert t1.optim.disc_lr == 2e-3 and t2.optim.disc_lr != 2e-3


def test_command_line_overrides_win_over_stage_overrides():
    cfg = stage_config(load_config(CONFIGS / "brats_t1_t2.yaml"), "translate")
    cfg = apply_overrides(cfg, ["train.epochs=3"])
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 15


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epoch=3", "train.epoch"),
        ("train.variant=fully-supervised", "train.variant"),
        ("data.patch_size=[1,2]", "data.patch_size"),
        ("train.stage_overrides={translate: {epoch: 3}}", "train.stage_overrides.translate.epoch"),
        ("train.stage_overrides={translat: {epochs: 3}}", "train.stage_overrides"),
        ("train.round=-1", "train.round"),
        ("train.stage_overrides={translate: {model: {disc_channel: [8]}}}", "train.stage_overrides.translate.model"),
        ("train.stage_overrides={translate: {optim: 3}}", "train.stage_overrides.translate.optim"),
    ],
)
def test_wrong_keys_and_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        load_config(CONFIGS / "demo_cpu.yaml", [override])


def test_wrong_key_in_a_yaml_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "demo_cpu.yaml").read_text().replace("  patch_size:", "  patch_sise:"))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*data\.patch_sise"):
        load_config(bad)
