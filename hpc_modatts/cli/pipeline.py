"""CLI group: ``pipeline`` (submit an experiment's DAG) and ``status`` (its jobs' states).

Each handler imports the API it calls when it runs (``hpc_modatts.cli``: keeps ``--help`` fast);
``status`` and ``pipeline --dry-run`` never load torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hpc_modatts.cli.experiments import executor_options, int_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="build an experiment's stage DAG and submit it (slurm/local/debug)",
        description="convert -> translate -> synthesize -> segment (folds) -> self-train "
        "rounds -> predict -> evaluate; done stages are skipped.",
    )
    p.add_argument("config", help="experiment YAML (or a built-in config name)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. pipeline.folds=5")
    executor_options(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the DAG and what would be submitted (with slurm: every sbatch script, as submitit "
        "writes it, with stand-in job ids)",
    )
    p.add_argument(
        "--seeds",
        type=int_list,
        default=None,
        metavar="S,S,...",
        help="one run per train.seed on the config's split, as a sweep folder (see `sweep`, `report`)",
    )
    p.set_defaults(func=_pipeline)

    s = sub.add_parser("status", help="stages, job ids and states of a submitted pipeline (or sweep)")
    s.add_argument("run_dir", help="experiment folder (<run_root>/<name>) holding pipeline.json")
    s.add_argument("--nodes", action="store_true", help="sweeps: also every job, not only the run folders")
    s.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=10.0,
        default=None,
        metavar="SECONDS",
        help="keep refreshing (every 10 s, or SECONDS) until every stage has ended; on a terminal "
        "the table is redrawn in place, otherwise one line per state change",
    )
    s.set_defaults(func=_status)


def _pipeline(args: argparse.Namespace) -> int:
    from hpc_modatts.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.seeds is not None:  # seeds everywhere: the run becomes a sweep over train.seed
        from hpc_modatts.experiments.sweep import SweepSpec, run_sweep

        spec = SweepSpec(seeds=args.seeds, variants=list(cfg.pipeline.variants), resplit=False)
        print(run_sweep(cfg, spec, executor=args.executor, cluster=args.cluster, dry_run=args.dry_run))
        return 0
    if args.dry_run:
        from hpc_modatts.pipeline.dag import build_dag

        for n in build_dag(cfg).topological():
            print(f"{'done ' if n.done else 'todo '} {n.name:45s} <- {', '.join(n.deps) or '-'}")
        if (args.executor or cfg.pipeline.executor) == "slurm":  # what submitit would hand to sbatch
            from hpc_modatts.pipeline.dryrun import dry_run_slurm

            for s in dry_run_slurm(cfg, args.cluster):
                print(f"\n# ---- {s['node']} (job {s['job_id']}, afterok: {', '.join(s['after']) or '-'})")
                print(s["script"], end="")
        return 0
    from hpc_modatts.pipeline.submit import run_pipeline

    print(run_pipeline(cfg, executor=args.executor, cluster=args.cluster))
    return 0


def _status(args: argparse.Namespace) -> int:
    from hpc_modatts.pipeline.status import print_status

    if (Path(args.run_dir) / "sweep.json").is_file():  # a sweep: one row per run folder
        from hpc_modatts.experiments.status import print_sweep_status

        print_sweep_status(args.run_dir, nodes=args.nodes)
        return 0
    if args.watch is not None and args.watch <= 0:
        raise SystemExit(f"status --watch {args.watch}: the interval must be > 0 seconds")
    print_status(args.run_dir, watch_s=args.watch)
    return 0
