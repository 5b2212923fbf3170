"""Does annotating the advisor's top-k target cases help more than annotating k random ones?

    python benchmarks/advisor.py [--out bench_out/advisor] [--config demo_cpu] [--cases 24]
        [--seeds 0,1,2] [--budgets 1,2,4] [--variant self-supervised] [--folds 2]
        [--strategies advisor,random] [--executor local] [key=value overrides ...]

On the phantom (``hpc_modatts.demo.prepare_data``), per seed:

1. a base run with no target annotation (a sweep point ``src1_tgt0_seed<s>``: translate ->
   synthesize -> ``--folds`` segment folds -> self-training rounds -> predict -> evaluate);
2. the advisor ranks the base run's target training cases (``hpc-modatts advise``); ``random``
   draws a seeded permutation of the same cases; ``advisor:<scorer>`` uses one scorer alone
   (to measure which works);
3. for every budget k and strategy, the same experiment retrained with the first k cases of
   that order annotated (the base split plus those masks), reusing the base run's stage 1
   (valid: stage 1 never reads ``target_labeled``, checked with the sweep's own check);
4. test Dice of every run. k = 0 is the base run, shared by every curve.

All retrainings of all seeds are one DAG (local executor, or slurm). Output in ``--out``:
``advisor.json`` (per seed, strategy and k: the cases annotated and the test Dice),
``advisor.md`` (mean ± std over seeds per k and strategy, and the paired difference to random)
and ``advisor.png`` (Dice vs k, one curve per strategy, band = ± std over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out/advisor")
    p.add_argument("--config", default="demo_cpu")
    p.add_argument("--cases", type=int, default=24, help="phantom cases (4 mm)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budgets", default="1,2,4", help="k: target cases annotated")
    p.add_argument("--variant", default="self-supervised")
    p.add_argument("--folds", type=int, default=2, help="segmentation folds (>= 2 for the disagreement scorer)")
    p.add_argument(
        "--strategies", default="advisor,random", help="advisor (every applicable scorer), advisor:<scorer>, random"
    )
    p.add_argument("--executor", default="local", choices=("local", "debug", "slurm"))
    p.add_argument("--cluster", default=None)
    p.add_argument("--val", type=float, default=0.15)
    p.add_argument("--test", type=float, default=0.25)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.max_steps=100")
    return p.parse_args(argv)


def orders(args, base_dir: Path, points: list[dict], strategies: list[str], k_max: int) -> dict:
    """Per (strategy, seed): the candidate cases in the order that strategy annotates them."""
    from hpc_modatts.experiments.advise import advise

    out = {}
    for p in points:
        point_dir = base_dir / "points" / p["id"]
        for s in strategies:
            if s == "random":
                split = json.loads(Path(p["split"]).read_text())
                todo = sorted(set(split["target_train"]) - set(split["target_labeled"]))
                rng = np.random.default_rng([p["seed"], 7])
                out[(s, p["seed"])] = [todo[i] for i in rng.permutation(len(todo))]
            else:
                scorers = [s.split(":", 1)[1]] if ":" in s else None
                folder = advise(
                    point_dir,
                    k_max,
                    variant=args.variant,
                    scorers=scorers,
                    out=Path(args.out) / "advice" / f"{s.replace(':', '-')}_seed{p['seed']}",
                )
                rows = json.loads((folder / "advice.json").read_text())["cases"]
                out[(s, p["seed"])] = [r["case"] for r in sorted(rows, key=lambda r: r["rank"])]
    return out


def retrain_units(base_dir: Path, points: list[dict], order: dict, budgets: list[int], variant: str):
    """One unit per (strategy, k, seed) with its split; stage 1 from the base point's group."""
    from hpc_modatts.data.splits import Split
    from hpc_modatts.experiments.sweep import Unit, check_sharing, load_sweep

    base_units = {u["id"]: u for u in load_sweep(base_dir)["units"]}
    # the base translators' nodes (DONE, so not run again) are the retrainings' parents in the DAG
    units = [Unit(**u) for u in base_units.values() if u["translator"]]
    runs = []
    for (strategy, seed), cases in order.items():
        p = next(p for p in points if p["seed"] == seed)
        base = Split.load(p["split"])
        translator = base_units[p["units"][variant]]["translator_from"]
        for k in budgets:
            rid = f"{strategy.replace(':', '-')}_k{k}_seed{seed}"
            split = dataclasses.replace(
                base,
                target_labeled=sorted(set(base.target_labeled) | set(cases[:k])),
                meta={**base.meta, "benchmark": {"strategy": strategy, "k": k}},
            )
            path = split.save(base_dir / "splits" / "retrain" / f"{rid}.json")
            # the base translator is valid for this split: the fields stage 1 reads are unchanged
            check_sharing(
                [Unit(translator, p["split"], seed, translator=True, shared_by=[p["id"], rid])],
                {p["id"]: base, rid: split},
            )
            units.append(
                Unit(f"retrain/{rid}", str(path), seed, [variant], translator_from=translator, shared_by=[rid])
            )
            runs.append({"strategy": strategy, "k": k, "seed": seed, "cases": cases[:k], "unit": f"retrain/{rid}"})
    return units, runs


def dice_of_run(folder: Path, variant: str) -> float | None:
    path = folder / f"evaluate-{variant}" / "metrics.json"
    return json.loads(path.read_text())["summary"]["dice"]["mean"] if path.is_file() else None


def curves(runs: list[dict], strategies: list[str], budgets: list[int]) -> dict:
    """Mean ± std over seeds of test Dice per (strategy, k), and the paired difference to random."""
    out = {}
    for s in strategies:
        for k in [0, *budgets]:
            vals = {
                r["seed"]: r["dice"]
                for r in runs
                if r["k"] == k and r["strategy"] in (s, "base") and r["dice"] is not None
            }
            entry = {
                "mean": float(np.mean(list(vals.values()))) if vals else None,
                "std": float(np.std(list(vals.values()))) if vals else None,
                "seeds": sorted(vals),
            }
            rand = {
                r["seed"]: r["dice"]
                for r in runs
                if r["k"] == k and r["strategy"] in ("random", "base") and r["dice"] is not None
            }
            diff = [vals[x] - rand[x] for x in vals if x in rand]
            if s != "random" and diff:
                entry["minus_random"] = {"mean": float(np.mean(diff)), "std": float(np.std(diff))}
            out[f"{s}@{k}"] = entry
    return out


def write_outputs(out: Path, result: dict, strategies: list[str], budgets: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpc_modatts.runs import atomic_write_json, atomic_write_text

    c = result["curves"]
    ks = [0, *budgets]
    lines = [
        "| k (target cases annotated) | "
        + " | ".join(strategies)
        + " | "
        + " | ".join(f"{s} - random" for s in strategies if s != "random")
        + " |",
        "|" + "---|" * (1 + len(strategies) + sum(s != "random" for s in strategies)),
    ]
    fmt = lambda e: "n/a" if not e or e.get("mean") is None else f"{e['mean']:.3f} ± {e['std']:.3f}"  # noqa: E731
    for k in ks:
        row = [fmt(c[f"{s}@{k}"]) for s in strategies]
        row += [fmt(c[f"{s}@{k}"].get("minus_random")) for s in strategies if s != "random"]
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    atomic_write_text(
        out / "advisor.md",
        "\n".join(lines) + f"\n\nTest Dice, mean ± std over seeds "
        f"{result['seeds']}; differences paired by seed. Command: `{result['command']}`\n",
    )
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for s in strategies:
        m = np.array([c[f"{s}@{k}"]["mean"] if c[f"{s}@{k}"]["mean"] is not None else np.nan for k in ks])
        sd = np.array([c[f"{s}@{k}"]["std"] if c[f"{s}@{k}"]["std"] is not None else np.nan for k in ks])
        ax.plot(ks, m, marker="o", label=s)
        ax.fill_between(ks, m - sd, m + sd, alpha=0.2)
    ax.set_xlabel("target cases annotated (k)")
    ax.set_ylabel("test Dice (mean ± std over seeds)")
    ax.set_title(f"advisor vs random: {result['variant']}, {len(result['seeds'])} seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out / "advisor.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_json(out / "advisor.json", result)


def main(argv: list[str] | None = None) -> Path:
    from rich.console import Console

    from hpc_modatts.config import apply_overrides, load_config
    from hpc_modatts.demo import prepare_data
    from hpc_modatts.experiments.sweep import SweepSpec, default_parallel, run_sweep, sweep_dag
    from hpc_modatts.pipeline.submit import run_pipeline

    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the DAG's "finished <node>" lines
    t0 = time.time()
    out = Path(args.out).resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = sorted(int(k) for k in args.budgets.split(","))
    strategies = [s for s in args.strategies.split(",") if s]
    cfg0 = load_config(args.config, args.overrides)
    store, _ = prepare_data(out / "data", args.cases, 0, 4, cfg0.data.source, cfg0.data.target, args.val, args.test)
    cfg = load_config(
        args.config,
        [
            f"run_root={out}",
            "name=base",
            f"data.store={store}",
            f"pipeline.folds={args.folds}",
            f"pipeline.variants=[{args.variant}]",
            *args.overrides,
        ],
    )
    spec = SweepSpec(
        source_labeled=[1.0], target_labeled=[0.0], seeds=seeds, variants=[args.variant], val=args.val, test=args.test
    )
    base_dir = run_sweep(cfg, spec, executor=args.executor, cluster=args.cluster)
    if args.executor == "slurm":
        raise SystemExit("slurm: the base runs are submitted; rerun this command once they are DONE")
    t_base = time.time() - t0
    points = json.loads((base_dir / "sweep.json").read_text())["points"]
    order = orders(args, base_dir, points, strategies, max(budgets))
    units, runs = retrain_units(base_dir, points, order, budgets, args.variant)
    # one DAG for every retraining; recorded in <out>/retrain/pipeline.json (`hpc-modatts status`)
    run_pipeline(
        apply_overrides(cfg, ["name=retrain"]),
        executor=args.executor,
        cluster=args.cluster,
        dag=sweep_dag(cfg, units, base_dir),
        check=False,
        max_parallel=default_parallel(cfg) if args.executor == "local" else None,
    )
    for r in runs:
        r["dice"] = dice_of_run(base_dir / r["unit"], args.variant)
    runs += [
        {
            "strategy": "base",
            "k": 0,
            "seed": p["seed"],
            "cases": [],
            "unit": p["units"][args.variant],
            "dice": dice_of_run(base_dir / p["units"][args.variant], args.variant),
        }
        for p in points
    ]
    result = {
        "command": " ".join(["python benchmarks/advisor.py", *(argv if argv is not None else sys.argv[1:])]),
        "variant": args.variant,
        "seeds": seeds,
        "budgets": budgets,
        "strategies": strategies,
        "folds": args.folds,
        "cases": args.cases,
        "runs": runs,
        "curves": curves(runs, strategies, budgets),
        "seconds": {"base": round(t_base, 1), "total": round(time.time() - t0, 1)},
    }
    write_outputs(out, result, strategies, budgets)
    Console().print((out / "advisor.md").read_text())
    return out


if __name__ == "__main__":
    main()
