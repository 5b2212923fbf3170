"""The one-node launchers of launchers/: the same `hpc-modatts train` entry point under the
`deepspeed` launcher (which appends --local_rank=N) and under torchrun, 2 CPU ranks over gloo;
and a 2-task submitit job, which takes its rendezvous from the job, not from its submitter."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import submitit

from hpc_modatts.demo import prepare_data
from hpc_modatts.distributed import env as denv

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


def rendezvous_seen() -> dict:
    """Runs in each task of a submitit job: join the group, report what this rank saw."""
    from hpc_modatts.distributed import all_gather_object, init_distributed, shutdown_distributed

    e = init_distributed()
    out = {"rank": e.rank, "world": e.world_size, "launcher": e.launcher, "port": os.environ["MASTER_PORT"]}
    out["ranks"] = all_gather_object(e.rank)
    shutdown_distributed()
    return out


def test_submitit_tasks_ignore_the_rendezvous_their_submitter_had(tmp_path, monkeypatch):
    """A process that ran a single-rank job in-process keeps RANK=0 / WORLD_SIZE=1 / its port in its
    environment; the local executor (like sbatch --export=ALL) hands them to the job's tasks."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        leaked = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        importable = os.pathsep.join((str(ROOT), str(Path(__file__).parent)))  # the job unpickles this module
        for key, value in {**leaked, "MASTER_PORT": port, "OMP_NUM_THREADS": "1", "PYTHONPATH": importable}.items():
            monkeypatch.setenv(key, value)
        ex = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="local")
        ex.update_parameters(tasks_per_node=2, timeout_min=5)
        results = sorted(ex.submit(rendezvous_seen).results(), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    assert all(r["launcher"] == "submitit" and r["ranks"] == [0, 1] for r in results)
    assert results[0]["port"] == results[1]["port"] != port
    assert not denv._started_by_submitit()  # pytest is not a task submitit started
