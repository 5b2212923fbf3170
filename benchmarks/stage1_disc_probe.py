"""Can the stage-1 target discriminator tell real target slices from a fake, trained ALONE?

    .venv/bin/python benchmarks/stage1_disc_probe.py --demo demo_out     # a finished `hpc-modatts demo`

Trains a fresh target discriminator (the demo's 2D architecture: channels 16-32-64, 2 scales,
hinge loss, AMSGrad lr 2e-3) for 200 steps on real T2 slices of the target training cases against
(a) the untranslated T1 slices and (b) the final pseudo-T2 of stage 1 (``translate/synth.zarr``),
and reports on held-out slices (validation cases for T1; the last 4 annotated source cases for the
pseudo-T2) the accuracy at the hinge boundary (mean logit > 0 = "real", as in the training
metric ``val/disc_accuracy``) and the threshold-free AUC. The point of comparison: in the joint
training the same discriminator stays at 0.50 (docs/results.md, issue 8).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hpc_modatts.data.slices import brain_slices
from hpc_modatts.data.store import Store
from hpc_modatts.losses import hinge_d_loss
from hpc_modatts.train.translate import build_discriminators


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="demo_out", help="output folder of `hpc-modatts demo`")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    demo = Path(args.demo)
    torch.manual_seed(0)
    split = json.loads((demo / "split.json").read_text())
    store = Store.open(demo / "phantom.zarr")
    synth = Store.open(demo / "runs" / "demo_cpu" / "translate" / "synth.zarr")

    def slices(src: Store, cases: list[str], modality: str) -> np.ndarray:
        return np.concatenate(
            [brain_slices(src.read_image(c, modality), store.read_brain(c), (48, 56)) for c in cases]
        ).astype(np.float32)  # (N, H, W)

    real_train, real_val = slices(store, split["target_train"], "t2"), slices(store, split["val"], "t2")
    annotated = split["source_labeled"]
    fakes = {
        "T1 (untranslated)": (slices(store, annotated[:8], "t1"), slices(store, split["val"], "t1")),
        "final pseudo-T2": (slices(synth, annotated[:8], "t2"), slices(synth, annotated[8:], "t2")),
    }

    def mean_logits(d: torch.nn.Module, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.stack([m.flatten(1).mean(1) for m in d(torch.from_numpy(x)[:, None])]).mean(0).numpy()

    for name, (fake_train, fake_val) in fakes.items():
        d = build_discriminators(["source", "target"], 2, [16, 32, 64], 2).nets["target"]
        opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.999), amsgrad=True)
        rng = np.random.default_rng(0)
        for step in range(1, args.steps + 1):
            r = torch.from_numpy(real_train[rng.integers(0, len(real_train), 8)])[:, None]
            f = torch.from_numpy(fake_train[rng.integers(0, len(fake_train), 8)])[:, None]
            loss = hinge_d_loss(d(r), d(f))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in (1, 25, 50, 100, args.steps):
                sr, sf = mean_logits(d, real_val), mean_logits(d, fake_val)
                acc = 0.5 * ((sr > 0).mean() + (sf <= 0).mean())
                auc = float((sr[:, None] > sf[None, :]).mean())
                print(f"{name:18s} step {step:4d}  loss {loss.item():.2f}  accuracy {acc:.2f}  AUC {auc:.2f}")


if __name__ == "__main__":
    main()
