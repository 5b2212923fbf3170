"""`hpc-modatts demo`: the one-command tour on the embedded phantom (what `make demo` runs).

The handler imports the demo when it runs (``hpc_modatts.cli``: keeps ``--help`` fast); the
parser needs only its defaults (``hpc_modatts.demo_defaults``).
"""

from __future__ import annotations

import argparse

from hpc_modatts.config import EXECUTORS
from hpc_modatts.demo_defaults import CHOICES, DEMO_CASES, VARIANTS


def _demo(args: argparse.Namespace) -> int:
    from hpc_modatts.demo import run_demo

    run_demo(
        out=args.out,
        cases=args.cases,
        seed=args.seed,
        spacing=args.spacing,
        config=args.config,
        executor=args.executor,
        overrides=args.overrides,
        variants=tuple(args.variants),
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="phantom -> convert -> split -> the whole pipeline -> Dice table (CPU, minutes)",
        description="Run the whole MoDATTS pipeline with tiny models on the embedded phantom "
        "and print the target-test Dice of four methods side by side.",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--cases", type=int, default=DEMO_CASES, help=f"phantom cases (default: {DEMO_CASES})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", type=int, default=4, choices=(2, 4), help="phantom voxel size in mm (default 4)")
    p.add_argument("--config", default="demo_cpu", help="built-in config name (hpc_modatts/configs/) or a YAML path")
    p.add_argument("--executor", default="local", choices=EXECUTORS)
    p.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=CHOICES,
        metavar="VARIANT",
        help="rows of the table (default: the four 3D ones; without semi-supervised, about half the "
        "time): " + ", ".join(CHOICES),
    )
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(func=_demo)
