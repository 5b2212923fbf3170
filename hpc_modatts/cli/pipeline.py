"""CLI group: ``pipeline`` (submit an experiment's DAG) and ``status`` (its jobs' states)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="build an experiment's stage DAG and submit it (slurm/local/debug)",
                       description="convert -> translate -> synthesize -> segment (folds) -> self-train "
                                   "rounds -> predict -> evaluate; done stages are skipped.")
    p.add_argument("config", help="experiment YAML (or a built-in config name)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. pipeline.folds=5")
    p.add_argument("--executor", choices=("slurm", "local", "debug"), default=None,
                   help="default: pipeline.executor of the config")
    p.add_argument("--cluster", default=None, help="cluster preset name (launchers/clusters/) or YAML path")
    p.add_argument("--dry-run", action="store_true", help="print the DAG and what would be submitted")
    p.set_defaults(func=_pipeline)

    s = sub.add_parser("status", help="stages, job ids and states of a submitted pipeline")
    s.add_argument("run_dir", help="experiment folder (<run_root>/<name>) holding pipeline.json")
    s.set_defaults(func=_status)


def _pipeline(args: argparse.Namespace) -> int:
    from hpc_modatts.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from hpc_modatts.pipeline.dag import build_dag

        for n in build_dag(cfg).topological():
            print(f"{'done ' if n.done else 'todo '} {n.name:45s} <- {', '.join(n.deps) or '-'}")
        return 0
    from hpc_modatts.pipeline import run_pipeline

    print(run_pipeline(cfg, executor=args.executor, cluster=args.cluster))
    return 0


def _status(args: argparse.Namespace) -> int:
    from hpc_modatts.pipeline.status import print_status

    print_status(args.run_dir)
    return 0
