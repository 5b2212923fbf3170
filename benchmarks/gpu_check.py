"""One prepared GPU check of the training engines (bf16 + ZeRO-2), for a session that has CUDA.

    .venv/bin/python benchmarks/gpu_check.py            # ~2-4 min on one H200; exits 0 without CUDA
    .venv/bin/python benchmarks/gpu_check.py --sizes tiny --steps 2

What it runs, on ``cuda:LOCAL_RANK`` (world of 1 through ``init_distributed``, nccl):

1. For each size (tiny, full) and each stage's engines, a few real training steps in bf16
   (DeepSpeed ``torch_autocast``) with ZeRO-2, through the tasks' own step code:
   translate (CycleTranslators + 2D discriminators, ``TranslateTask.train_step``), plain
   segmentation (Dice), semi-supervised GenSeg (``GenSegTask._genseg_terms`` + ``_disc_step``).
   Checks: no skipped step, finite losses, fp32 parameters, bf16 really used in the forward.
2. Peak CUDA memory of the full-size semi-supervised generator+discriminator step at batch 2 of
   96x160x64, without and with activation checkpointing (policy bmdh, conv, decoder).

Prints one line per check and a JSON summary; exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

GIB = 2**30
# discriminators (channels, scales): the paper's for full size, the CPU demo's for tiny inputs
DISC = {"tiny": ([8, 16, 32], 2), "full": ([60, 120, 240, 480], 3)}


def _engines(models: dict, env, micro: int) -> dict:
    from hpc_modatts.config import DistributedConfig, OptimConfig
    from hpc_modatts.distributed.engine import build_engine

    dcfg = DistributedConfig(zero_stage=2, precision="bf16")
    return {name: build_engine(m, OptimConfig(), dcfg, env, micro, name) for name, m in models.items()}


def _volume_batch(shape, batch, device):
    import torch

    x = torch.rand(batch, 1, *shape, device=device) * 2 - 1  # (B, 1, X, Y, Z)
    mask = (torch.rand(batch, 1, *shape, device=device) > 0.8).float()
    weak = torch.arange(batch, device=device) % 2  # A, P, A, P ...
    return {
        "image": x,
        "mask": mask,
        "has_mask": torch.ones(batch, dtype=torch.bool, device=device),
        "weak": weak,
        "case": [f"case{i}" for i in range(batch)],
    }


def translate_steps(size: str, steps: int, env, batch: int = 2) -> list[dict]:
    import torch

    from hpc_modatts.distributed.engine import autocast_context
    from hpc_modatts.train.translate import TranslateTask, build_cycle_translators, build_discriminators

    hw = (64, 64) if size == "tiny" else (240, 240)
    engines = _engines(
        {"gen": build_cycle_translators(size), "disc": build_discriminators(["source", "target"], 2, *DISC[size])},
        env,
        batch,
    )
    task = TranslateTask.__new__(TranslateTask)  # the real step code without a store/split
    task.weights = {"adv": 1 / 12, "seg": 1 / 12, "cyc": 10 / 12}
    dev = env.device
    out = []
    for step in range(steps):
        src = {
            "image": torch.rand(batch, 1, *hw, device=dev) * 2 - 1,
            "mask": (torch.rand(batch, 1, *hw, device=dev) > 0.8).float(),
            "has_mask": torch.ones(batch, dtype=torch.bool, device=dev),
        }
        batch_ = {"source": src, "target": {"image": torch.rand(batch, 1, *hw, device=dev) * 2 - 1}}
        with autocast_context(True, dev):
            out.append({k: float(v) for k, v in task.train_step(batch_, engines, step).items()})
    return _report(f"translate/{size}", engines, out)


def segment_steps(
    size: str, steps: int, env, genseg: bool, shape, batch: int = 2, checkpointing: list[str] | None = None
) -> tuple[list, float]:
    """Training steps of the plain or the semi-supervised segmenter; returns (report, peak GiB)."""
    import torch

    from hpc_modatts.distributed.engine import autocast_context
    from hpc_modatts.losses import dice_loss
    from hpc_modatts.models import apply_activation_checkpointing, build_segmenter
    from hpc_modatts.train.segment_variants import GenSegTask, build_discriminators_3d

    gen = build_segmenter(size, genseg=genseg)
    if checkpointing:
        apply_activation_checkpointing(gen, checkpointing)
    models = {"gen": gen}
    if genseg:
        models["disc"] = build_discriminators_3d(*DISC[size])
    engines = _engines(models, env, batch)
    task = GenSegTask.__new__(GenSegTask)
    task.weights = {"seg_pt": 100 / 160, "adv": 5 / 160, "rec": 50 / 160, "lat": 5 / 160}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = []
    for _ in range(steps):
        b = _volume_batch(shape, batch, env.device)
        with autocast_context(True, env.device):
            seg = dice_loss(engines["gen"](b["image"]).float(), b["mask"], b["has_mask"])
            terms = {"seg_pt": seg}
            if genseg:
                res = task._genseg_terms(b, engines, terms)
                loss = sum(task.weights[k] * v for k, v in terms.items())
            else:
                loss = seg
            engines["gen"].backward(loss)
            engines["gen"].step()
            record = {"loss": float(loss), **{k: float(v) for k, v in terms.items()}}
            if genseg:
                record["disc"] = float(task._disc_step(b, res, engines["disc"]))
        out.append(record)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / GIB
    name = f"segment-{'semi' if genseg else 'plain'}/{size}" + ("/ckpt" if checkpointing else "")
    report = _report(name, engines, out)
    del engines, models, gen
    torch.cuda.empty_cache()
    return report, peak


def _report(name: str, engines: dict, losses: list[dict]) -> list[dict]:
    import torch

    finite = all(math.isfinite(v) for rec in losses for v in rec.values())
    skipped = {n: int(e.skipped_steps) for n, e in engines.items()}
    fp32 = all(p.dtype == torch.float32 for e in engines.values() for p in e.module.parameters())
    ok = finite and not any(skipped.values()) and fp32
    print(
        f"[{'ok' if ok else 'FAIL'}] {name}: {len(losses)} steps, skipped {skipped}, finite {finite}, "
        f"fp32 weights {fp32}, first/last loss {losses[0]['loss']:.4f}/{losses[-1]['loss']:.4f}",
        flush=True,
    )
    return [{"check": name, "ok": ok, "skipped": skipped, "losses": losses}]


def bf16_is_used(env) -> bool:
    """The engine's forward really runs convolutions in bf16 (DeepSpeed torch_autocast)."""
    import torch

    from hpc_modatts.distributed.engine import autocast_context
    from hpc_modatts.models import build_segmenter

    engine = _engines({"gen": build_segmenter("tiny")}, env, 1)["gen"]
    with autocast_context(engine, env.device), torch.no_grad():
        y = engine(torch.zeros(1, 1, 32, 32, 32, device=env.device))
    print(f"[{'ok' if y.dtype == torch.bfloat16 else 'FAIL'}] bf16 forward: output dtype {y.dtype}", flush=True)
    return y.dtype == torch.bfloat16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the full-size peak-memory check")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA: skipped (benchmarks/gpu_check.py needs a GPU)")
        return 0
    from hpc_modatts.config import DistributedConfig
    from hpc_modatts.distributed.env import init_distributed

    env = init_distributed(DistributedConfig(zero_stage=2, precision="bf16"))
    print(
        f"device {env.device} ({torch.cuda.get_device_name(env.device)}), backend {env.backend}, "
        f"torch {torch.__version__}",
        flush=True,
    )
    t0 = time.time()
    results: list[dict] = [{"check": "bf16 forward", "ok": bf16_is_used(env)}]
    for size in args.sizes:
        shape = (32, 32, 32) if size == "tiny" else (96, 160, 64)
        # each lambda runs inside this iteration; the defaults bind size/shape explicitly all the same
        for label, fn in (
            ("translate", lambda size=size: translate_steps(size, args.steps, env)),
            ("segment-plain", lambda size=size, shape=shape: segment_steps(size, args.steps, env, False, shape)[0]),
            ("segment-semi", lambda size=size, shape=shape: segment_steps(size, args.steps, env, True, shape)[0]),
        ):
            try:
                results += fn()
            except Exception as e:  # report and go on: one failure must not hide the others
                print(f"[FAIL] {label}/{size}: {type(e).__name__}: {e}", flush=True)
                results.append({"check": f"{label}/{size}", "ok": False, "error": repr(e)})
    if not args.no_memory:
        for policy in (None, ["bmdh", "conv", "decoder"]):
            try:
                report, peak = segment_steps("full", 2, env, True, (96, 160, 64), checkpointing=policy)
                print(
                    f"[info] peak CUDA memory, full semi-supervised step, batch 2 of 96x160x64, "
                    f"checkpointing {policy or 'off'}: {peak:.2f} GiB",
                    flush=True,
                )
                results += [{**report[0], "peak_gib": round(peak, 3), "checkpointing": policy}]
            except Exception as e:
                print(f"[FAIL] memory (checkpointing {policy}): {type(e).__name__}: {e}", flush=True)
                results.append({"check": f"memory/{policy}", "ok": False, "error": repr(e)})
    failed = [r["check"] for r in results if not r["ok"]]
    print(
        json.dumps(
            {
                "seconds": round(time.time() - t0, 1),
                "failed": failed,
                "results": [{k: v for k, v in r.items() if k != "losses"} for r in results],
            }
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
