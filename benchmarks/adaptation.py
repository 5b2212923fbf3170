"""Does the adaptation work? The demo pipeline for several training seeds, side by side.

    .venv/bin/python benchmarks/adaptation.py                       # demo budget, seeds 0 1 2 (28-45 min on 2 cores)
    .venv/bin/python benchmarks/adaptation.py --seeds 0 --out /tmp/a  # one seed
    .venv/bin/python benchmarks/adaptation.py --budget gpu --parallel  # one GPU: 4x the demo's steps, 3 seeds at once
    .venv/bin/python benchmarks/adaptation.py --budget long          # GPU: 2 mm phantom, longer schedules
    .venv/bin/python benchmarks/adaptation.py --variants self-supervised-2d m-genseg target-supervised  # other rows
    .venv/bin/python benchmarks/adaptation.py --out /tmp/a optim.lr=2e-3 --seeds 1 2  # overrides BEFORE --seeds

One phantom dataset (``--data-seed``, ``--cases``, the demo's split: T1 annotated -> T2), then the
whole demo pipeline (``hpc_modatts.demo.run_demo``) once per training seed (``train.seed``; the
thesis repeats each BraTS experiment with 3 weight-initialisation seeds). Reported, per variant:
target-test Dice mean ± std over seeds (each seed's number is the mean over test cases), HD95,
% of target-supervised, and the mean predicted vs reference tumour volume; for stage 1, at the
selected checkpoint: the selection score, tumour contrast ratio, appearance, paired correlation, and
the discriminator accuracy and AUC at the first and last validation. Writes ``adaptation.json`` and
``adaptation.md`` into ``--out``.

``--budget gpu`` fits one short GPU lease (``GPU_OVERRIDES``): the demo's phantom, models and
learning rates, 4x its steps, stage 1 validated every 50 steps (the discriminator's curve), the jobs
on the GPU. ``--budget long`` is for a longer GPU allocation: the 2 mm phantom (96x112x96), 10x
the demo's steps, the ``small`` segmenter (``LONG_OVERRIDES``). Both run on a CPU too, slowly.
``--parallel`` runs the seeds side by side (one process each, the dataset prepared once before):
on a GPU node the tiny demo jobs leave the GPU and most cores idle, so three seeds take about the
wall time of one.

To benchmark another commit, run from its worktree AS THE WORKING DIRECTORY
(``cd /tmp/wt && PYTHONPATH=. /path/to/.venv/bin/python benchmarks/adaptation.py``): the pipeline's
local jobs start as ``python -m submitit.core._submit`` in the current directory, which ``-m``
puts ahead of ``PYTHONPATH`` on ``sys.path``, so jobs launched from a checkout import that
checkout's code (docs/results.md "Per-level padding", caveat).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from hpc_modatts.config import TABLE_ORDER
from hpc_modatts.demo_defaults import VARIANTS as DEMO_VARIANTS
from hpc_modatts.host import describe_host, host_facts

ON_GPU = "pipeline.gpus_per_node=1"
"""Training jobs ask for one GPU: the local executor sets CUDA_VISIBLE_DEVICES to the GPUs a job asks
for, so a job asking for none (the demo config's default) runs on the CPU even on a GPU node."""

GPU_OVERRIDES = [
    ON_GPU,
    "train.max_steps=600",
    "train.val_every=100",
    "train.stage_overrides.translate.max_steps=1200",
    "train.stage_overrides.translate.val_every=50",
    "train.stage_overrides.self-train.max_steps=120",
    "train.stage_overrides.self-train.val_every=60",
]
"""One short GPU lease: the demo's configuration (phantom, models, learning rates) at 4x its steps."""

LONG_OVERRIDES = [
    ON_GPU,
    "data.slice_size=[96,112]",
    "data.patch_size=[48,112,96]",
    "data.augment=true",
    "model.segmenter_size=small",
    "distributed.precision=auto",
    "distributed.threads_per_rank=0",
    "train.max_steps=2000",
    "train.val_every=200",
    "train.stage_overrides.translate.max_steps=6000",
    "train.stage_overrides.translate.val_every=500",
    "train.stage_overrides.self-train.max_steps=600",
    "train.stage_overrides.self-train.val_every=200",
]
"""The longer budget (GPU). Spacing 2 mm doubles every side of the phantom, hence the sizes."""


def stage1_summary(translate_dir: Path) -> dict:
    """Fidelity of the selected stage-1 checkpoint; the discriminator (accuracy, AUC) at the first/last validation."""
    rows = [
        json.loads(ln)
        for ln in (translate_dir / "metrics.jsonl").read_text().splitlines()
        if ln.strip() and '"val/score"' in ln
    ]
    done = json.loads((translate_dir / "DONE").read_text())
    best = next((r for r in rows if r["step"] == done.get("best_step")), rows[-1])
    keys = ("score", "contrast_ratio", "appearance", "paired_corr", "paired_mae", "disc_accuracy", "disc_auc")
    out = {k: best.get(f"val/{k}") for k in keys}
    out["selected_step"] = best["step"]
    for k in ("disc_accuracy", "disc_auc"):  # the AUC: runs from before it was logged have none
        out.update({f"{k}_first": rows[0].get(f"val/{k}"), f"{k}_last": rows[-1].get(f"val/{k}")})
        seen = [r[f"val/{k}"] for r in rows if r.get(f"val/{k}") is not None]
        out[f"{k}_max"] = max(seen) if seen else None
    return out


def stage1_curve(translate_dir: Path) -> list[dict]:
    """Every stage-1 validation: step, discriminator accuracy and AUC, contrast ratio, paired correlation, score."""
    rows = [
        json.loads(ln)
        for ln in (translate_dir / "metrics.jsonl").read_text().splitlines()
        if ln.strip() and '"val/score"' in ln
    ]
    keys = ("disc_accuracy", "disc_auc", "contrast_ratio", "paired_corr", "score")
    return [{"step": r["step"], **{k: r.get(f"val/{k}") for k in keys}} for r in rows]


def seed_summary(out: Path) -> dict:
    """One seed's numbers: per variant Dice/HD95/volumes (evaluate metrics.json), stage 1."""
    from hpc_modatts.runs import stage_dir

    run_dir = out / "runs" / "demo_cpu"
    variants = {}
    for v in TABLE_ORDER:
        path = stage_dir(run_dir, "evaluate", v) / "metrics.json"
        if path.is_file():
            s = json.loads(path.read_text())["summary"]
            variants[v] = {
                "dice": s["dice"]["mean"],
                "hd95": s["hd95"]["mean"],
                "assd": s["assd"]["mean"],
                "pred_ml": s.get("volume_ml", {}).get("pred"),
                "ref_ml": s.get("volume_ml", {}).get("ref"),
            }
    results = json.loads((out / "results.json").read_text())
    translate = stage_dir(run_dir, "translate")
    has_stage1 = (translate / "DONE").is_file()  # M-GenSeg alone trains end to end: no stage 1
    return {
        "variants": variants,
        "stage1": stage1_summary(translate) if has_stage1 else {},
        "stage1_curve": stage1_curve(translate) if has_stage1 else [],
        "seconds": results["seconds"],
        "job_seconds": results.get("job_seconds"),
        "failed": results.get("failed"),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    return (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))


def aggregate(seeds: dict[int, dict]) -> dict:
    table = {}
    ts = mean_std([s["variants"].get("target-supervised", {}).get("dice") for s in seeds.values()])[0]
    for v in TABLE_ORDER:
        per = [s["variants"][v] for s in seeds.values() if v in s["variants"]]
        if not per:
            continue
        row = {k: mean_std([p[k] for p in per]) for k in ("dice", "hd95", "assd", "pred_ml", "ref_ml")}
        row["percent_of_target_supervised"] = 100.0 * row["dice"][0] / ts if ts and math.isfinite(ts) else None
        row["seeds"] = len(per)
        table[v] = row
    keys = dict.fromkeys(k for s in seeds.values() for k in s["stage1"])  # seeds without stage 1 add none
    stage1 = {k: mean_std([s["stage1"].get(k) for s in seeds.values()]) for k in keys}
    return {"variants": table, "stage1": stage1, "seconds": mean_std([s["seconds"] for s in seeds.values()])}


def finite_or_none(obj):
    """JSON has no NaN: a metric missing from every seed is written as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def markdown(agg: dict, seeds: list[int], budget: str, machine: str = "") -> str:
    lines = [
        f"Budget `{budget}`, training seeds {seeds} (mean ± std over seeds of the per-seed test mean)"
        + (f" on {machine}." if machine else "."),
        "",
        "| method | Dice | HD95 (mm) | % of target-sup. | pred. volume (ml) | ref. volume (ml) |",
        "|---|---|---|---|---|---|",
    ]
    for v, r in agg["variants"].items():
        pct = r["percent_of_target_supervised"]
        lines.append(
            f"| {v} | {r['dice'][0]:.3f} ± {r['dice'][1]:.3f} | {r['hd95'][0]:.1f} ± {r['hd95'][1]:.1f} | "
            f"{'n/a' if pct is None else f'{pct:.0f} %'} | {r['pred_ml'][0]:.1f} | {r['ref_ml'][0]:.1f} |"
        )
    lines += ["", "| stage 1 (selected checkpoint) | mean ± std |", "|---|---|"]
    for k, (m, s) in agg["stage1"].items():
        lines.append(f"| {k} | {m:.3f} ± {s:.3f} |")
    m, s = agg["seconds"]
    lines += ["", f"Wall time per seed: {m / 60:.1f} ± {s / 60:.1f} min."]
    return "\n".join(lines) + "\n"


BUDGETS = {"demo": (4, []), "gpu": (4, GPU_OVERRIDES), "long": (2, LONG_OVERRIDES)}
"""Budget -> (phantom spacing in mm, config overrides)."""


def run_seed(
    out: Path,
    seed: int,
    cases: int,
    data_seed: int,
    spacing: int,
    executor: str,
    overrides: list[str],
    prepared: tuple[Path, Path],
    variants: tuple[str, ...],
) -> dict:
    """One training seed's demo pipeline (reused when an earlier invocation finished it)."""
    from hpc_modatts.demo import run_demo
    from hpc_modatts.pipeline.waves import StagesFailed

    t0 = time.time()
    done = out / f"seed_{seed}" / "results.json"
    if not (done.is_file() and not json.loads(done.read_text()).get("failed")):
        try:
            run_demo(
                out=out / f"seed_{seed}",
                cases=cases,
                seed=data_seed,
                spacing=spacing,
                executor=executor,
                overrides=[f"train.seed={seed}", *overrides],
                prepared=prepared,
                variants=variants,
            )
        except StagesFailed as e:  # the variants that finished still count; the summary says which failed
            print(f"seed {seed}: {e}", flush=True)
        print(f"seed {seed}: {time.time() - t0:.0f} s", flush=True)
    try:
        return seed_summary(out / f"seed_{seed}")
    except (OSError, ValueError, KeyError) as e:  # a stage that never finished: keep the other seeds' numbers
        print(f"seed {seed}: no summary ({type(e).__name__}: {e})", flush=True)
        return {"variants": {}, "stage1": {}, "stage1_curve": [], "seconds": time.time() - t0, "error": repr(e)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_adaptation", help="output folder (one sub-folder per seed)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (train.seed)")
    ap.add_argument("--data-seed", type=int, default=0, help="phantom and split seed")
    ap.add_argument("--cases", type=int, default=None, help="phantom cases (default: the demo's)")
    ap.add_argument("--budget", choices=tuple(BUDGETS), default="demo")
    ap.add_argument("--parallel", action="store_true", help="run the seeds side by side (GPU nodes)")
    ap.add_argument("--executor", default="local", choices=("local", "debug", "slurm"))
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=TABLE_ORDER,
        default=list(DEMO_VARIANTS),
        help="the rows (default: the demo's four 3D rows)",
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="extra config overrides, given before --seeds / --variants (which take several values)",
    )
    args = ap.parse_args(argv)

    from hpc_modatts.demo import DEMO_CASES, demo_data

    out = Path(args.out).resolve()
    spacing, budget_overrides = BUDGETS[args.budget]
    extra = [*budget_overrides, *args.overrides]
    cases = args.cases or DEMO_CASES
    prepared = demo_data(out / "data", cases, args.data_seed, spacing, overrides=extra)  # once, before any seed
    jobs = [
        (out, seed, cases, args.data_seed, spacing, args.executor, extra, prepared, tuple(args.variants))
        for seed in args.seeds
    ]
    t0 = time.time()
    if args.parallel:
        # one process per seed: run_demo drives its own executor and console; spawn, not fork (torch threads)
        with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            per_seed = dict(zip(args.seeds, pool.map(run_seed, *zip(*jobs))))
    else:
        per_seed = {job[1]: run_seed(*job) for job in jobs}
    agg = aggregate(per_seed)
    record = finite_or_none(
        {
            "budget": args.budget,
            "overrides": extra,
            "machine": host_facts(),
            "parallel": args.parallel,
            "wall_seconds": time.time() - t0,
            "seeds": per_seed,
            "aggregate": agg,
        }
    )
    (out / "adaptation.json").write_text(json.dumps(record, indent=2, allow_nan=False, default=str))
    text = markdown(agg, args.seeds, args.budget, describe_host(record["machine"]))
    (out / "adaptation.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
