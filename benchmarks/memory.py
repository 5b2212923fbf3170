"""Memory/time of one GenSeg generator step with and without activation checkpointing.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/memory.py            # default, CPU, a few minutes
    .venv/bin/python benchmarks/memory.py --sizes full --shapes 64,64,32 96,96,48 --device cuda

The objective mirrors the semi-supervised segmentation stage's generator update (thesis 5.4.2):
P->A translation through the common decoder, residual decoder, X_PP = X_PA + D_PP, A->P with
u ~ N(0, I), segmentation (Dice), image reconstruction L1 and latent re-encoding L1 (both
generated images go through the encoder again). The discriminators' forward in the adversarial
term is left out (a separate small network with its own engine). Batch = number of P samples +
number of A samples (half each).

Peak memory is measured with torch.profiler memory events on CPU (exact, repeatable) or
`torch.cuda.max_memory_allocated` on GPU; it counts what the step allocates (activations, their
gradients and the parameter gradients), not the parameters that already exist. Activation
memory per voxel is fitted from two input sizes and extrapolated to batch 2 of 96x160x64
half-brains, plus parameters + AMSGrad state (4 + 12 bytes per fp32 parameter; the parameter
gradients are allocated inside the step, so they are already in the measured peak).
Each (size, shape) runs in a fresh subprocess so one blow-up cannot take the others down; inside
it the policies are applied one after the other to the same model (a policy never changes the
parameters, and the profiler counts only what each step allocates).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

GIB = 2**30
TARGET_SHAPE = (96, 160, 64)  # per half-brain input (docs/architecture.md, GenSeg split)
STATE_BYTES_PER_PARAM = 4 + 12  # fp32 weights + AMSGrad exp_avg/exp_avg_sq/max_exp_avg_sq (grads are in the peak)


def generator_step(model, x_p, x_a, mask_p):
    """One GenSeg-generator-like forward + backward; returns the loss value."""
    from monai.losses import DiceLoss

    c_p, u_p, skips_p = model.encode(x_p)
    c_a, u_a, skips_a = model.encode(x_a)
    x_pa = model.decode_common(c_p, skips_p)  # P -> A
    x_pp = x_pa + model.decode_residual(c_p, u_p, skips_p)
    u_sampled = model.sample_u(u_a)
    x_aa = model.decode_common(c_a, skips_a)
    x_ap = x_aa + model.decode_residual(c_a, u_sampled, skips_a)  # A -> P
    logits = model.decode_segmentation(c_p, u_p, skips_p)
    c_pa, _, _ = model.encode(x_pa)
    c_ap, u_ap, _ = model.encode(x_ap)
    rec = (x_aa - x_a).abs().mean() + (x_pp - x_p).abs().mean()
    lat = (c_pa - c_p.detach()).abs().mean() + (c_ap - c_a.detach()).abs().mean() + (u_ap - u_sampled).abs().mean()
    loss = 50 * rec + 5 * lat + 100 * DiceLoss(sigmoid=True)(logits, mask_p)
    loss.backward()
    return loss.item()


def measure(size: str, shape: tuple, batch: int, policies: list[list[str]], device: str) -> list[dict]:
    """Build the model once; per policy (applied cumulatively, in order): peak memory and time of one step.

    The first step is a warm-up (on CPU it is ~3x slower: fresh pages, oneDNN primitives). The
    measured step runs under the memory profiler on CPU; its wall time is the step time (profiler
    overhead measured at < 1 % on this CPU, and equal for every policy).
    """
    import torch

    from hpc_modatts.models import apply_activation_checkpointing, build_segmenter, count_parameters
    from hpc_modatts.models.checkpointing import measure_peak_memory

    torch.manual_seed(0)
    model = build_segmenter(size, genseg=True).to(device)
    half = max(batch // 2, 1)
    x_p, x_a = (torch.rand(half, 1, *shape, device=device) * 2 - 1 for _ in range(2))
    mask_p = (torch.rand(half, 1, *shape, device=device) > 0.9).float()

    def step():
        model.zero_grad(set_to_none=True)
        generator_step(model, x_p, x_a, mask_p)

    step()  # warm-up
    results = []
    for policy in policies:
        if policy and not set(policy) >= set(results[-1]["policy"] if results else []):
            raise ValueError(f"policies are applied cumulatively: {policy} must include the previous one")
        apply_activation_checkpointing(model, policy)
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        peak = measure_peak_memory(step, device)
        results.append(
            {
                "size": size,
                "shape": list(shape),
                "batch": 2 * half,
                "policy": policy,
                "peak": peak,
                "time": time.perf_counter() - t0,
                "params": count_parameters(model),
            }
        )
    return results


def run_isolated(args: list[str]) -> list[dict]:
    """Run the measurements of one (size, shape) in a fresh interpreter (fresh allocator, crash isolation)."""
    out = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"measurement {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def extrapolate(small: dict, large: dict, batch: int) -> dict:
    """mem(V) = a + act_per_voxel * V from two measured sizes; predicted at batch x TARGET_SHAPE."""
    v1, v2 = (m["batch"] * math.prod(m["shape"]) for m in (small, large))
    slope = (large["peak"] - small["peak"]) / (v2 - v1)
    intercept = small["peak"] - slope * v1
    target_v = batch * math.prod(TARGET_SHAPE)
    state = STATE_BYTES_PER_PARAM * small["params"]
    return {
        "act_per_voxel": slope,
        "intercept": intercept,
        "state": state,
        "target_voxels": target_v,
        "total": state + intercept + slope * target_v,
    }


def report(results: list[dict], shapes: list[tuple], batch: int, gpu_gib: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    table = Table(title="GenSeg generator step: activation checkpointing")
    for col in ("size", "params", "input/sample", "policy", "peak act. GiB", "step s", "mem ratio", "time ratio"):
        table.add_column(col, justify="right")
    base = {(r["size"], tuple(r["shape"])): r for r in results if not r["policy"]}
    for r in results:
        b = base[(r["size"], tuple(r["shape"]))]
        table.add_row(
            r["size"],
            f"{r['params'] / 1e6:.1f} M",
            "x".join(map(str, r["shape"])),
            ",".join(r["policy"]) or "none",
            f"{r['peak'] / GIB:.3f}",
            f"{r['time']:.2f}",
            f"{b['peak'] / r['peak']:.2f}x",
            f"{r['time'] / b['time']:.2f}x",
        )
    console.print(table)
    proj = Table(
        title=f"Extrapolated to batch {batch} x {'x'.join(map(str, TARGET_SHAPE))} (fp32) vs a {gpu_gib:.0f} GB GPU"
    )
    for col in ("size", "policy", "act B/voxel", "state GiB", "activations GiB", "total GiB", f"fits {gpu_gib:.0f} GB"):
        proj.add_column(col, justify="right")
    for r in results:
        if tuple(r["shape"]) != shapes[0]:
            continue
        large = next(
            q
            for q in results
            if q["size"] == r["size"] and q["policy"] == r["policy"] and tuple(q["shape"]) == shapes[-1]
        )
        e = extrapolate(r, large, batch)
        act = e["intercept"] + e["act_per_voxel"] * e["target_voxels"]
        proj.add_row(
            r["size"],
            ",".join(r["policy"]) or "none",
            f"{e['act_per_voxel']:.0f}",
            f"{e['state'] / GIB:.2f}",
            f"{act / GIB:.1f}",
            f"{e['total'] / GIB:.1f}",
            "yes" if e["total"] < gpu_gib * 1e9 else "NO",
        )
    console.print(proj)
    console.print(
        "mem(V) = 16 B x params (weights + AMSGrad state) + intercept + act_per_voxel x V, "
        "act_per_voxel = (peak(V2) - peak(V1)) / (V2 - V1), V = batch x X x Y x Z"
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["semi8m", "full"])
    p.add_argument(
        "--shapes",
        nargs="+",
        default=["32,32,16", "32,32,32"],
        help="per-sample X,Y,Z; the first and last fit the projection (CPU default kept small)",
    )
    p.add_argument("--batch", type=int, default=2, help="P + A samples per step")
    p.add_argument(
        "--policies",
        nargs="+",
        default=["none", "bmdh,conv"],
        help="comma-separated kinds applied cumulatively in order; 'none' = off, must come first",
    )
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--gpu-gib", type=float, default=40.0)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> None:
    a = parse_args(argv)
    policies = [[] if p == "none" else p.split(",") for p in a.policies]
    if a.one:
        shape = tuple(int(v) for v in a.shapes[0].split(","))
        print(json.dumps(measure(a.sizes[0], shape, a.batch, policies, a.device)))
        return
    shapes = [tuple(int(v) for v in s.split(",")) for s in a.shapes]
    results = []
    for size in a.sizes:
        for shape in shapes:
            measured = run_isolated(
                [
                    "--sizes",
                    size,
                    "--shapes",
                    ",".join(map(str, shape)),
                    "--batch",
                    str(a.batch),
                    "--device",
                    a.device,
                    "--policies",
                    *a.policies,
                ]
            )
            for r in measured:
                print(
                    f"measured {size} {shape} {r['policy']}: {r['peak'] / GIB:.3f} GiB, {r['time']:.2f} s",
                    file=sys.stderr,
                )
            results.extend(measured)
    report(results, shapes, a.batch, a.gpu_gib)


if __name__ == "__main__":
    main()
