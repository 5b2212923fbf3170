"""Per-rank model-state memory and step time of DeepSpeed ZeRO 0/1/2/3 on N CPU ranks.

    python benchmarks/zero.py [--ranks 2] [--size full] [--input 32] [--steps 3] [--stages 0 1 2 3]

For each stage a ``torchrun --nproc_per_node N`` job builds the GenSeg segmenter
(``build_segmenter(size, genseg=True)``), wraps it in ``build_engine`` (fp32 on CPU, client
Adam with AMSGrad) and trains ``--steps`` steps on a (1, 1, S, S, S) input per rank, touching
every decoder (encode + common, residual and segmentation decodes) so every parameter has a
gradient. State-size accounting (bytes each rank really holds, summed numel * element_size):

* params     local parameter storage: ``p.data``, or the partition ``p.ds_tensor`` (ZeRO-3)
* grads      after backward: ``p.grad`` (ZeRO-0/1), the partitioned gradient buffers
             (ZeRO-2 ``averaged_gradients``, ZeRO-3 ``grad_partitions_flat_buffer``)
* optimizer  Adam state (exp_avg, exp_avg_sq, max_exp_avg_sq) held by this rank
* master     ZeRO's fp32 partition copies the optimiser updates (ZeRO-1/2/3; none at ZeRO-0)

Memory from allocator statistics would mix in activations, communication buckets and code;
this counts the model state ZeRO partitions (the ZeRO paper's accounting). Step time: mean
wall time of the steps after the first, ratio to ZeRO-0. Prints a rich table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _nbytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors if t is not None))


def _grad_tensors(engine) -> list:
    """Gradient storage after backward (before step) on this rank."""
    import torch

    opt = engine.optimizer
    out = [p.grad for p in engine.module.parameters() if p.grad is not None]
    flat = getattr(opt, "grad_partitions_flat_buffer", None)  # ZeRO-3
    if torch.is_tensor(flat):
        return out + [flat]
    averaged = getattr(opt, "averaged_gradients", None)  # ZeRO-2
    if isinstance(averaged, dict):
        out += [t for group in averaged.values() for t in (group or []) if torch.is_tensor(t)]
    return out


def _master_tensors(engine) -> list:
    opt = engine.optimizer
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        if hasattr(opt, name):
            return list(getattr(opt, name))
    return []


def _optimizer_state(engine) -> list:
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return [v for s in inner.state.values() for v in s.values() if hasattr(v, "dim") and v.dim() > 0]


def _step_loss(model, x):
    """Use every part of the GenSeg model so all parameters receive gradients."""
    c, u, skips = model.encode(x)
    return (
        model.decode_common(c, skips).mean()
        + model.decode_residual(c, u, skips).mean()
        + model.decode_segmentation(c, u, skips).mean()
    )


def worker(out: Path, stage: int, size: str, side: int, steps: int) -> None:
    import torch
    import torch.distributed as dist

    from hpc_modatts.config import DistributedConfig, OptimConfig
    from hpc_modatts.distributed import init_distributed
    from hpc_modatts.distributed.engine import build_engine
    from hpc_modatts.models import build_segmenter

    dcfg = DistributedConfig(zero_stage=stage)
    env = init_distributed(dcfg)
    torch.manual_seed(0)
    model = build_segmenter(size, genseg=True)
    n_params = sum(p.numel() for p in model.parameters())
    engine = build_engine(model, OptimConfig(), dcfg, env, micro_batch=1, name="gen")
    x = torch.randn(1, 1, side, side, side, device=env.device)  # (B, C, X, Y, Z)
    times, grads = [], 0
    for i in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        loss = _step_loss(engine.module, x)
        engine.backward(loss)
        if i == 0:
            grads = _nbytes(_grad_tensors(engine))
        engine.step()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    params = _nbytes(
        getattr(p, "ds_tensor", None) if hasattr(p, "ds_tensor") else p.data for p in engine.module.parameters()
    )
    record = {
        "stage": stage,
        "rank": env.rank,
        "world": env.world_size,
        "n_params": n_params,
        "params": params,
        "grads": grads,
        "optimizer": _nbytes(_optimizer_state(engine)),
        "master": _nbytes(_master_tensors(engine)),
        "step_s": sum(times[1:]) / max(1, len(times) - 1),
    }
    rows = [None] * env.world_size
    dist.all_gather_object(rows, record)
    if env.is_main:
        out.write_text(json.dumps(rows))


def launch(stage: int, args: argparse.Namespace, tmp: Path) -> list[dict]:
    from hpc_modatts.distributed.env import free_port

    out = tmp / f"zero{stage}.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--nproc_per_node",
        str(args.ranks),
        "--master_port",
        str(free_port()),
        __file__,
        "--worker",
        str(out),
        "--stage",
        str(stage),
        "--size",
        args.size,
        "--input",
        str(args.input),
        "--steps",
        str(args.steps),
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"ZeRO-{stage} run failed:\n{res.stderr[-3000:]}")
    return json.loads(out.read_text())


def report(results: dict[int, list[dict]]) -> dict:
    from rich.console import Console
    from rich.table import Table

    mib = 2**20
    base = results.get(0)
    base_total = max(r["params"] + r["grads"] + r["optimizer"] + r["master"] for r in base) if base else None
    base_time = base[0]["step_s"] if base else None
    first = next(iter(results.values()))[0]
    table = Table(
        title=f"ZeRO on {first['world']} CPU ranks: per-rank model state in MiB "
        f"(GenSeg, {first['n_params'] / 1e6:.1f} M parameters, fp32, Adam-AMSGrad)"
    )
    for col in ("stage", "params", "grads", "optim", "master", "total", "mem/Z0", "step s", "time/Z0"):
        table.add_column(col, justify="right")
    summary = {}
    for stage, rows in sorted(results.items()):
        r = max(rows, key=lambda r: r["params"] + r["grads"] + r["optimizer"] + r["master"])  # worst rank
        total = r["params"] + r["grads"] + r["optimizer"] + r["master"]
        step = max(x["step_s"] for x in rows)
        ratio = total / base_total if base_total else float("nan")
        tratio = step / base_time if base_time else float("nan")
        summary[stage] = {"total_bytes": total, "ratio": ratio, "step_s": step, "time_ratio": tratio}
        table.add_row(
            str(stage),
            *(f"{r[k] / mib:.0f}" for k in ("params", "grads", "optimizer", "master")),
            f"{total / mib:.0f}",
            f"{ratio:.2f}",
            f"{step:.2f}",
            f"{tratio:.2f}",
        )
    Console().print(table)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--size", default="full", help="segmenter size (tiny/small/semi8m/full)")
    ap.add_argument("--input", type=int, default=32, help="cubic input side per rank")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stage", type=int, default=0, help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args(argv)
    if args.worker is not None:
        from hpc_modatts.distributed import shutdown_distributed

        worker(args.worker, args.stage, args.size, args.input, args.steps)
        shutdown_distributed()
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        results = {s: launch(s, args, Path(tmp)) for s in args.stages}
    summary = report(results)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
