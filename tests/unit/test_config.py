"""Typed configs: YAML loading, dotted overrides, errors naming the key, resolved-config dump."""

import pytest
import yaml

from hpc_modatts.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_to_dict,
    lambda_seg_pt_for_fraction,
    load_config,
    save_config,
)


def test_defaults_follow_the_paper():
    cfg = ExperimentConfig()
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.5, 0.999) and cfg.optim.amsgrad
    assert cfg.optim.for_engine("gen") is cfg.optim and cfg.optim.for_engine("disc") is cfg.optim  # no disc_lr
    two_lr = apply_overrides(cfg, ["optim.disc_lr=4e-4"]).optim
    assert two_lr.for_engine("disc").lr == 4e-4 and two_lr.for_engine("gen").lr == 1e-4
    assert cfg.optim.decay == "constant" and cfg.optim.lr_at(50, 100) == 1e-4
    poly = apply_overrides(cfg, ["optim.decay=poly"]).optim
    assert [poly.lr_at(s, 100) for s in (0, 100, 150)] == [1e-4, 0.0, 0.0]
    assert poly.lr_at(50, 100) == pytest.approx(1e-4 * 0.5**0.9)
    assert cfg.train.alpha == 0.6 and cfg.train.rounds == 3
    assert cfg.data.patch_size == (96, 160, 64)
    assert cfg.model.common_fraction == 0.75


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "train": {"epochs": 7, "weights": {"rec": 75}}}))
    cfg = load_config(p, ["train.batch_size=4", "data.patch_size=[32,32,16]", "model.checkpointing=bmdh,conv"])
    assert cfg.name == "x" and cfg.train.epochs == 7 and cfg.train.weights.rec == 75.0
    assert cfg.train.batch_size == 4 and cfg.data.patch_size == (32, 32, 16)
    assert cfg.model.checkpointing == ["bmdh", "conv"]


def test_stage_override_keys_can_be_overridden_on_the_command_line():
    cfg = load_config(
        "demo_cpu",
        [
            "train.stage_overrides.translate.max_steps=40",
            "train.stage_overrides.translate.optim.disc_lr=0.01",
            "train.stage_overrides.segment.val_every=5",
        ],
    )
    block = cfg.train.stage_overrides
    assert block["translate"]["max_steps"] == 40 and block["translate"]["optim"]["disc_lr"] == 0.01
    assert block["translate"]["batch_size"] == 8  # the rest of the shipped block is kept
    assert block["segment"] == {"val_every": 5}


def test_variant_block_applies_to_its_variant_after_the_stage_block_and_the_command_line_wins(tmp_path):
    from argparse import Namespace

    from hpc_modatts.cli.train import stage_cfg
    from hpc_modatts.config import stage_config
    from hpc_modatts.pipeline.dag import Node, node_config

    p = tmp_path / "c.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "train": {
                    "batch_size": 2,
                    "max_steps": 10,
                    "stage_overrides": {"segment": {"batch_size": 4, "max_steps": 20}, "translate": {"batch_size": 8}},
                    "variant_overrides": {"self-supervised-2d": {"batch_size": 16, "optim": {"lr": 3e-4}}},
                }
            }
        )
    )
    cfg = load_config(p)
    two_d = stage_config(cfg, "segment", "self-supervised-2d")
    assert (two_d.train.batch_size, two_d.train.max_steps, two_d.optim.lr) == (16, 20, 3e-4)  # variant > stage
    assert two_d.train.variant == "self-supervised-2d" and two_d.train.variant_overrides == {}
    assert stage_config(two_d, "segment") == two_d  # applying it again changes nothing
    assert stage_config(cfg, "segment", "self-supervised").train.batch_size == 4  # another variant: stage block
    assert stage_config(cfg, "translate", "self-supervised-2d").train.batch_size == 8  # not a variant's stage
    # the CLI picks the block of the variant it will set (flag or override), then its overrides win
    args = Namespace(config=str(p), overrides=[], variant="self-supervised-2d")
    assert stage_cfg(args, "segment").train.batch_size == 16
    args = Namespace(config=str(p), overrides=["train.variant=self-supervised-2d", "train.batch_size=32"])
    assert stage_cfg(args, "segment").train.batch_size == 32
    # a pipeline node of the variant gets it too
    node = Node(
        "segment/self-supervised-2d/fold_0",
        "x:y",
        run_dir=tmp_path,
        overrides={"train.stage": "segment", "train.variant": "self-supervised-2d"},
    )
    assert node_config(cfg, node).train.batch_size == 16
    # a variant block's own per-stage block: the 2D segment stage longer, its self-training round not
    nested = load_config(
        p,
        [
            "train.variant_overrides={self-supervised-2d: "
            "{max_steps: 300, stage_overrides: {self-train: {max_steps: 30}}}}"
        ],
    )
    assert stage_config(nested, "segment", "self-supervised-2d").train.max_steps == 300
    assert stage_config(nested, "self-train", "self-supervised-2d").train.max_steps == 30
    assert stage_config(nested, "segment", "self-supervised").train.max_steps == 20  # other variant: stage block


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.variant_overrides.self-supervised-2d.batch_size=0", "train.variant_overrides.self-supervised-2d"),
        ("train.variant_overrides.nnunet.batch_size=4", "train.variant_overrides"),
        ("train.variant_overrides.self-supervised.variant=semi-supervised", "variant cannot be set"),
        (
            "train.variant_overrides={m-genseg: {stage_overrides: {translate: {max_steps: 3}}}}",
            "stage_overrides='translate' is not allowed",
        ),
        (
            "train.variant_overrides={m-genseg: {stage_overrides: {segment: {stage_overrides: {}}}}}",
            "stage_overrides cannot be set",
        ),
        ("train.stage_overrides.translate.max_stepz=3", "train.stage_overrides.translate"),
        ("train.stage_overrides.translate.optim.lr=-1", "train.stage_overrides.translate.optim"),
        ("train.stage_overrides.predict.max_steps=3", "train.stage_overrides"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.grad_clip=-1", "optim.grad_clip"),
        ("optim.decay=cosine", "optim.decay"),
        ("train.epoks=3", "train.epoks"),
        ("nope=1", "nope"),
        ("train.weights.foo=1", "train.weights.foo"),
        ("distributed.zero_stage=5", "distributed.zero_stage"),
        ("model.segmenter_size=huge", "model.segmenter_size"),
        ("train.batch_size=two", "train.batch_size"),
        ("train.alpha=1.5", "train.alpha"),
        ("train.keep_better_margin=-0.1", "train.keep_better_margin"),
        ("train.stage_overrides.translate.disc_warmup_steps=-5", "disc_warmup_steps"),
        ("train.adv_ramp_steps=-1", "train.adv_ramp_steps"),
        ("train.stage_overrides.translate.extend_fraction=-1", "extend_fraction"),
        ("train.extend_until_contrast=1.5", "train.extend_until_contrast"),
        ("pipeline.executor=kubernetes", "pipeline.executor"),
        ("data.patch_size=[32,32]", "data.patch_size"),
    ],
)
def test_wrong_key_or_value_names_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        apply_overrides(ExperimentConfig(), [override])
    assert needle in str(e.value)


def test_unknown_key_lists_allowed_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epoks: 3\n")
    with pytest.raises(ConfigError, match=r"allowed keys: .*'epochs'"):
        load_config(p)


def test_allowed_values_are_listed():
    with pytest.raises(ConfigError, match=r"choose one of \['local', 'debug', 'slurm'\]"):
        apply_overrides(ExperimentConfig(), ["pipeline.executor=k8s"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_save_roundtrip(tmp_path):
    cfg = apply_overrides(ExperimentConfig(), ["train.variant=semi-supervised", "distributed.zero_stage=3"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert not list(path.parent.glob(".*tmp*"))


def test_lambda_seg_pt_table():
    # thesis 5.5.1: 100 at 100 %, 50 / 25 / 1 / 0.1 at 70 / 40 / 10 / 1 %
    for frac, w in [(1.0, 100), (0.7, 50), (0.4, 25), (0.1, 1), (0.01, 0.1)]:
        assert lambda_seg_pt_for_fraction(frac) == pytest.approx(w)
