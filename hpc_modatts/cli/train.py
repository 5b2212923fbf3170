"""Training commands: ``train translate|segment|self-train`` and ``synthesize`` (thin wrappers).

Each loads CONFIG, merges the stage's ``train.stage_overrides`` block, applies the command
line's ``key.sub=value`` overrides (they win), and calls the stage's ``run(cfg) -> Path``.
Works the same under ``deepspeed``/``torchrun`` launchers (every rank runs the command).
Each handler imports the API it calls when it runs (``hpc_modatts.cli``: keeps ``--help`` fast).
"""

from __future__ import annotations

import argparse
import importlib
import logging

from hpc_modatts.config import MODATTS_VARIANTS, VARIANTS

log = logging.getLogger(__name__)

STAGES = {
    "translate": ("hpc_modatts.train.translate", "stage 1: tumour-aware 2D CycleGAN translation (source <-> target)"),
    "segment": (
        "hpc_modatts.train.segment",
        "stage 2: MedFormer segmentation of the target (3D; 2D: -2d variants; m-genseg: end to end)",
    ),
    "self-train": ("hpc_modatts.train.self_training", "self-training rounds on thresholded pseudo-labels"),
}


def stage_cfg(args: argparse.Namespace, stage: str):
    """CONFIG + the stage's and the variant's override blocks + the command line's overrides and flags."""
    from hpc_modatts.config import apply_overrides, load_config, stage_config

    overrides = list(args.overrides)
    # the variant the run will have (flag, else a train.variant= override, else the config's) picks
    # its block before the command line's overrides are applied, so those win
    variant = getattr(args, "variant", None) or next(
        (o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("train.variant=")), None
    )
    cfg = stage_config(load_config(args.config), stage, variant)
    if getattr(args, "resume", None) is not None:
        overrides.append(f"train.resume={str(args.resume).lower()}")
    if getattr(args, "variant", None):
        overrides.append(f"train.variant={args.variant}")
    if getattr(args, "rounds", None):
        overrides.append(f"train.rounds={args.rounds}")
    if getattr(args, "round", None):
        overrides.append(f"train.round={args.round}")
    return apply_overrides(cfg, overrides)


def _runner(stage: str, module: str):
    def run(args: argparse.Namespace) -> int:
        cfg = stage_cfg(args, stage)
        out = importlib.import_module(module).run(cfg)
        log.info("%s done: %s", stage, out)
        return 0

    return run


def _common_args(p: argparse.ArgumentParser, resume: bool = True) -> None:
    p.add_argument("config", help="experiment YAML (a path, or a built-in name such as demo_cpu)")
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.max_steps=10 data.fold=2"
    )
    if resume:
        p.add_argument(
            "--resume",
            dest="resume",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="resume from the run's latest checkpoint (default: train.resume)",
        )


def register(sub) -> None:
    """Add ``train`` (with translate/segment/self-train) and ``synthesize``."""
    p = sub.add_parser("train", help="train a stage (translate, segment, self-train)")
    stages = p.add_subparsers(dest="stage", metavar="STAGE")
    stages.required = True
    for stage, (module, text) in STAGES.items():
        s = stages.add_parser(stage, help=text, description=text)
        _common_args(s)
        if stage == "segment":
            s.add_argument("--variant", choices=VARIANTS, help="overrides train.variant")
        if stage == "self-train":
            s.add_argument(
                "--variant", choices=MODATTS_VARIANTS, help="overrides train.variant (which segment run to refine)"
            )
            s.add_argument("--rounds", type=int, help="overrides train.rounds (k)")
            s.add_argument("--round", type=int, help="run only this round (train.round)")
        s.set_defaults(func=_runner(stage, module))

    p = sub.add_parser(
        "synthesize",
        help="translate every source training volume into a pseudo-target store",
        description="Stage 1 -> 2 hand-off: pseudo-target volumes from the last translator state.",
    )
    _common_args(p, resume=False)
    p.set_defaults(func=_runner("synthesize", "hpc_modatts.train.synthesize"))
