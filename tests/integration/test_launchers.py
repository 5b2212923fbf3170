"""The one-node launchers of launchers/: the same `hpc-modatts train` entry point under the
`deepspeed` launcher (which appends --local_rank=N) and under torchrun, 2 CPU ranks over gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_modatts.demo import prepare_data

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("launch")
    store, split = prepare_data(out, cases=8, seed=0, spacing=4, source="t1", target="t2", val=0.15, test=0.25)
    return out, store, split


@pytest.mark.parametrize("script, zero", [("deepspeed_one_node.sh", 2), ("torchrun_one_node.sh", 3)])
def test_one_node_launcher_trains_on_two_ranks(data, script, zero):
    out, store, split = data
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    name = script.split("_")[0]
    cmd = [
        str(ROOT / "launchers" / script),
        "2",
        "segment",
        str(ROOT / "hpc_modatts" / "configs" / "demo_cpu.yaml"),
        f"data.store={store}",
        f"data.split={split}",
        f"run_root={out}",
        f"name={name}",
        "train.variant=source-supervised",
        "train.max_steps=3",
        "train.val_every=3",
        f"distributed.zero_stage={zero}",
    ]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    run = out / name / "segment-source-supervised" / "fold_0"
    assert json.loads((run / "DONE").read_text())["steps"] == 3
    pointer = (run / "checkpoints" / "latest").read_text().strip()
    state = json.loads((run / "checkpoints" / pointer / "trainer.json").read_text())
    assert state["world_size"] == 2
