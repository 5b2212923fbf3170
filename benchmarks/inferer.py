"""Whole-volume inference: both hemisphere windows in one batch vs one window per forward.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inferer.py            # the demo's shapes, ~1 min
    .venv/bin/python benchmarks/inferer.py --size small --volumes 4 --device cuda

THE inferer (``hpc_modatts.infer.inferer.VolumeInferer``) runs the windows of the training patch
size (both hemispheres of a half-volume model) as one batch. This times it against the previous
behaviour, one window per forward (a predictor that splits the batch), side by side in one
process on the same model and volumes, and reports the largest output difference (convolution
algorithms differ in rounding only). On CPU a batch of one sends small 3D convolutions to
PyTorch's native kernels instead of oneDNN's (its selection heuristic is written for 2D inputs).
Shapes: the demo phantom (48x56x48 at 4 mm, split at x = 24, patch 24x56x48); the segmenter is the
GenSeg-wired MedFormer, channels-last as in training, random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hpc_modatts.infer.inferer import VolumeInferer
from hpc_modatts.models.layout import to_channels_last
from hpc_modatts.models.sizes import build_segmenter


def one_window_per_forward(predictor):
    """The previous behaviour: every window (batch row) through the model alone."""
    return lambda t: torch.cat([predictor(t[i : i + 1]) for i in range(t.shape[0])])


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    """Best wall seconds of ``repeats`` calls after a warm-up, and the last output."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", help="segmenter size (the demo's: tiny)")
    ap.add_argument("--volumes", type=int, default=6, help="volumes per timing (the demo validates 6)")
    ap.add_argument("--shape", default="48,56,48", help="volume X,Y,Z (split at X/2, patch = one half)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    shape = tuple(int(s) for s in args.shape.split(","))
    split = shape[0] // 2
    torch.manual_seed(0)
    model = to_channels_last(build_segmenter(args.size, genseg=True, separate_seg_decoder=True))
    model = model.to(args.device).eval()
    rng = np.random.default_rng(0)
    volumes = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(args.volumes)]
    brain = np.ones(shape, np.uint8)  # each hemisphere's brain box is the hemisphere: one patch
    inferer = VolumeInferer((split, *shape[1:]), hemispheres=True)

    def predictor(t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(t).float())

    def run(pred):
        return np.stack([inferer(pred, v, brain, split, args.device) for v in volumes])

    batched_s, batched = timed(lambda: run(predictor), args.repeats)
    single_s, single = timed(lambda: run(one_window_per_forward(predictor)), args.repeats)
    n = args.volumes
    threads = torch.get_num_threads()
    print(f"device {args.device}, {threads} thread(s), {args.size} GenSeg segmenter, {n} volumes {shape}")
    print(f"  one window per forward : {single_s / n * 1e3:7.1f} ms per volume")
    print(f"  hemispheres batched    : {batched_s / n * 1e3:7.1f} ms per volume")
    print(f"  speed-up {single_s / batched_s:.2f}x, largest output difference {np.abs(batched - single).max():.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
