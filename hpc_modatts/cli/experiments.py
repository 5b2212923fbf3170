"""CLI group: ``sweep`` (annotation-budget sweeps), ``report`` (their table and plots) and
``advise`` (which target cases to annotate next). Thin wrappers around ``hpc_modatts.experiments``.

Each handler imports the API it calls when it runs (``hpc_modatts.cli``: keeps ``--help`` fast).
"""

from __future__ import annotations

import argparse

from hpc_modatts.config import EXECUTORS


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers, e.g. 1,0.4,0.1") from None


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 0,1,2") from None


def name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="one pipeline per (source fraction, target fraction, seed), submitted as one DAG",
        description="Nested splits per seed, shared stage 1 / bounds where valid (docs/experiments.md), "
        "every job at once (SLURM afterok); rerun = only what is missing.",
    )
    p.add_argument("config", help="experiment YAML (or a built-in config name); name= names the sweep folder")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
    p.add_argument(
        "--source-labeled",
        type=float_list,
        default=[1.0],
        metavar="F,F,...",
        help="annotated source fractions (default 1)",
    )
    p.add_argument(
        "--target-labeled",
        type=float_list,
        default=[0.0],
        metavar="F,F,...",
        help="annotated target fractions (default 0)",
    )
    p.add_argument(
        "--seeds", type=int_list, default=[0], metavar="S,S,...", help="seeds: split and training (default 0)"
    )
    p.add_argument(
        "--variants",
        type=name_list,
        default=None,
        metavar="V,V,...",
        help="stage-2 variants (default: pipeline.variants of the config)",
    )
    p.add_argument("--val", type=float, default=0.1, help="validation fraction of every split (default 0.1)")
    p.add_argument("--test", type=float, default=0.1, help="test fraction of every split (default 0.1)")
    _run_options(p)
    p.set_defaults(func=_sweep)

    r = sub.add_parser("report", help="a sweep's table (CSV, JSON, Markdown) and Dice-vs-fraction plots")
    r.add_argument("sweep_dir", help="sweep folder (holds sweep.json)")
    r.add_argument("-o", "--out", default=None, help="output folder (default SWEEP_DIR/report)")
    r.set_defaults(func=_report)

    a = sub.add_parser("advise", help="rank the unannotated target training cases by the benefit of annotating them")
    a.add_argument("run", help="experiment folder (<run_root>/<name> or a sweep's points/<point>)")
    a.add_argument("--budget", type=int, required=True, help="how many cases you can annotate")
    a.add_argument("--variant", default=None, help="variant whose models judge (default: first MoDATTS variant run)")
    a.add_argument(
        "--scorers",
        type=name_list,
        default=None,
        metavar="S,S,...",
        help="disagreement, instability, volume (default: every one that applies)",
    )
    a.add_argument("-o", "--out", default=None, help="output folder (default RUN/advise-<variant>)")
    a.add_argument(
        "--write-split",
        default=None,
        metavar="PATH",
        help="write the run's split with the selected cases added to target_labeled",
    )
    a.set_defaults(func=_advise)


def executor_options(p: argparse.ArgumentParser) -> None:
    """``--executor`` and ``--cluster``: where the jobs of ``pipeline`` and ``sweep`` run."""
    p.add_argument("--executor", choices=EXECUTORS, default=None, help="default: pipeline.executor of the config")
    p.add_argument(
        "--cluster", default=None, help="cluster preset: a shipped name (hpc_modatts/clusters/) or a YAML path"
    )


def _run_options(p: argparse.ArgumentParser) -> None:
    executor_options(p)
    p.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        help="local executor: jobs at once (default: cores / distributed.threads_per_rank)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the run folders, what they share and the jobs")


def _sweep(args: argparse.Namespace) -> int:
    from hpc_modatts.config import load_config
    from hpc_modatts.experiments.sweep import SweepSpec, run_sweep

    cfg = load_config(args.config, args.overrides)
    spec = SweepSpec(
        source_labeled=args.source_labeled,
        target_labeled=args.target_labeled,
        seeds=args.seeds,
        variants=args.variants or [],
        val=args.val,
        test=args.test,
    )
    print(
        run_sweep(
            cfg,
            spec,
            executor=args.executor,
            cluster=args.cluster,
            max_parallel=args.max_parallel,
            dry_run=args.dry_run,
        )
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from hpc_modatts.experiments.report import report

    print(report(args.sweep_dir, args.out))
    return 0


def _advise(args: argparse.Namespace) -> int:
    from hpc_modatts.experiments.advise import advise

    print(
        advise(
            args.run,
            args.budget,
            variant=args.variant,
            scorers=args.scorers,
            out=args.out,
            write_split=args.write_split,
        )
    )
    return 0
