"""Does stage 1 learn the translation for every seed? Fidelity curves of the demo's stage 1.

    .venv/bin/python benchmarks/stage1_seeds.py                          # seeds 0-4, background on/off (~25 min)
    .venv/bin/python benchmarks/stage1_seeds.py --seeds 0 1 --ablate ""  # the shipped setting only
    .venv/bin/python benchmarks/stage1_seeds.py --seeds 0 --no-shipped --steps 1200 --val-every 100 \
        --ablate "optim.lr=1e-4 train.stage_overrides.translate.optim.disc_lr=2e-4"   # the thesis's lr

Trains the demo's stage 1 (``hpc-modatts train translate demo_cpu``, T1 -> T2 on the demo
phantom) once per training seed and per ablated setting, two runs side by side (one thread
each), and prints at every validation the tumour contrast ratio (pseudo-T2 / real T2), the
paired correlation with the true T2 of the same case, the held-out discriminator accuracy and
the unpaired selection score. Writes ``stage1_seeds.json`` and ``stage1_seeds.md`` into ``--out``.

``--ablate`` names boolean/valued overrides to compare against the shipped config, e.g.
``model.keep_background=false`` (the default ablation: translators that draw their own
background, the thesis's setting).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

KEYS = ("contrast_ratio", "paired_corr", "disc_accuracy", "disc_auc", "score")


def train(out: Path, data: Path, seed: int, setting: str, steps: int, val_every: int) -> list[dict]:
    """One stage-1 run through the CLI (a subprocess: one thread, its own process group)."""
    name = f"seed{seed}_{setting or 'shipped'}".replace("=", "-").replace(".", "_").replace(" ", "__")
    overrides = [
        f"run_root={out / 'runs'}",
        f"name={name}",
        f"data.store={data / 'phantom.zarr'}",
        f"data.split={data / 'split.json'}",
        f"train.seed={seed}",
        "distributed.threads_per_rank=1",
        f"train.stage_overrides.translate.max_steps={steps}",
        f"train.stage_overrides.translate.val_every={val_every}",
        *setting.split(),
    ]
    # `python -m hpc_modatts`, not the console script: works from a source tree on PYTHONPATH too
    cmd = [sys.executable, "-m", "hpc_modatts", "train", "translate", "demo_cpu", *overrides]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    metrics = out / "runs" / name / "translate" / "metrics.jsonl"
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if '"val/score"' in ln]
    return [{"step": r["step"], **{k: r.get(f"val/{k}") for k in KEYS}} for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_stage1", help="output folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument(
        "--ablate",
        nargs="*",
        default=["model.keep_background=false"],
        help="settings compared with the shipped config ('' = shipped only); one setting may "
        "hold several overrides separated by spaces",
    )
    ap.add_argument("--no-shipped", action="store_true", help="only the --ablate settings")
    ap.add_argument("--steps", type=int, default=450)
    ap.add_argument("--val-every", type=int, default=150)
    ap.add_argument("--parallel", type=int, default=2, help="runs side by side (one thread each)")
    args = ap.parse_args(argv)

    from hpc_modatts.config import load_config
    from hpc_modatts.demo import DEMO_CASES, prepare_data

    out = Path(args.out).resolve()
    cfg = load_config("demo_cpu")
    prepare_data(out / "data", DEMO_CASES, 0, 4, cfg.data.source, cfg.data.target, val=0.15, test=0.25)
    settings = ([] if args.no_shipped else [""]) + [a for a in args.ablate if a]
    jobs = [(seed, s) for s in settings for seed in args.seeds]
    with ThreadPoolExecutor(args.parallel) as pool:
        curves = list(pool.map(lambda j: train(out, out / "data", j[0], j[1], args.steps, args.val_every), jobs))
    results = {f"{s or 'shipped'} seed {seed}": c for (seed, s), c in zip(jobs, curves)}
    (out / "stage1_seeds.json").write_text(json.dumps(results, indent=2))
    lines = [
        "| run | " + " | ".join(f"step {r['step']}: ratio / corr / D acc / D AUC" for r in curves[0]) + " |",
        "|---|" + "---|" * len(curves[0]),
    ]
    for name, rows in results.items():
        cells = [
            " / ".join(
                "—" if r.get(k) is None else f"{r[k]:.2f}"
                for k in ("contrast_ratio", "paired_corr", "disc_accuracy", "disc_auc")
            )
            for r in rows
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "stage1_seeds.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
