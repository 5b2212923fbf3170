"""Real DeepSpeed on 2 CPU ranks (gloo): ZeRO-2/3 match 1 rank; ZeRO-3 partitions; Trainer."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpc_modatts.distributed.env import free_port
from tests.toy_task import toy_net

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("_zero_worker.py")
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("SUBMITIT_")}
    # the worker imports tests.toy_task (the repository root) and submitit's task process _zero_worker
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent), str(WORKER.parents[2]), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _launch(tmp: Path, ranks: int, *args: str) -> dict:
    out = tmp / f"out_{ranks}_{'_'.join(a.strip('-/').replace('/', '_') for a in args)[:60]}.json"
    if ranks == 1:
        cmd = [sys.executable, str(WORKER), str(out), *args]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [
            torchrun,
            "--nproc_per_node",
            str(ranks),
            "--master_port",
            str(free_port()),
            str(WORKER),
            str(out),
            *args,
        ]
    res = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> dict:
    return _launch(tmp_path_factory.mktemp("one"), 1, "--stage", "0", "--steps", "3")


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_on_two_ranks_matches_one_rank(stage, one_rank, tmp_path):
    two = _launch(tmp_path, 2, "--stage", str(stage), "--steps", "3")
    assert two["world_size"] == 2 and one_rank["world_size"] == 1
    assert two["launcher"] == "env" and two["backend"] == "gloo"
    assert torch.allclose(torch.tensor(two["losses"]), torch.tensor(one_rank["losses"]), atol=1e-5, rtol=0)
    assert one_rank["losses"][0] != one_rank["losses"][-1]  # the steps really trained
    # gathered fp32 state dict: every parameter, full size, same values as one rank
    assert two["state_keys"] == one_rank["state_keys"]
    assert two["state_numel"] == two["full_numel"]
    assert two["state_sum"] == pytest.approx(one_rank["state_sum"], abs=1e-4)
    if stage == 3:  # parameters really partitioned: each rank holds about half
        n_params = len(two["state_keys"])
        assert abs(two["local_numel"] - two["full_numel"] / 2) <= n_params
    else:
        assert two["local_numel"] == two["full_numel"]


def test_trainer_on_two_ranks_with_zero3_and_resume(tmp_path):
    run = tmp_path / "run"
    first = _launch(tmp_path, 2, "--stage", "3", "--fit", str(run), "--epochs", "1")
    assert first["world_size"] == 2 and first["step"] == 4  # 8 items, global batch 2 -> 4 steps
    payload = torch.load(run / "best_model.pt", weights_only=False)
    ref = toy_net().state_dict()
    assert {k: v.shape for k, v in payload["models"]["gen"].items()} == {k: v.shape for k, v in ref.items()}
    assert (run / "DONE").is_file()
    second = _launch(tmp_path, 2, "--stage", "3", "--fit", str(run), "--epochs", "2")
    assert second["step"] == 2 * first["step"]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resume" and r["step"] == first["step"] for r in records)


def test_submitit_local_executor_two_tasks_ignore_the_rendezvous_their_submitter_had(tmp_path, monkeypatch):
    """A process that ran a single-rank job in-process keeps RANK=0 / WORLD_SIZE=1 / its port in its
    environment, and the local executor (like sbatch --export=ALL) hands them to the job's tasks:
    they must still be ranks 0 and 1 of 2, on a port of their own."""
    import submitit

    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = str(held.getsockname()[1])
    leaked = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    for key, value in {**leaked, "MASTER_PORT": port}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", _clean_env()["PYTHONPATH"])  # the task process imports _zero_worker
    sys.path.insert(0, str(WORKER.parent))
    from _zero_worker import submitit_probe

    ex = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="local")
    ex.update_parameters(tasks_per_node=2, nodes=1, timeout_min=5, cpus_per_task=1)
    with held:
        results = sorted(ex.submit(submitit_probe).results(), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world"] == 2 and r["launcher"] == "submitit" for r in results)
    assert all(r["mean_rank"] == pytest.approx(0.5) for r in results)
    assert results[0]["port"] == results[1]["port"] != port
