"""Launcher detection of ``init_distributed``: bare python, torchrun-style env, deepspeed argv."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from hpc_modatts.config import ConfigError
from hpc_modatts.distributed import env as denv

_PROBE = """
import json, sys
from hpc_modatts.config import DistributedConfig
from hpc_modatts.distributed import init_distributed, all_reduce_mean, broadcast_object
import os, torch, torch.distributed as dist
e = init_distributed(DistributedConfig(threads_per_rank=int(sys.argv[1])))
assert init_distributed() is e  # idempotent
port = os.environ["MASTER_PORT"]
for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
    del os.environ[k]  # what submitit's debug executor does between in-process jobs
assert init_distributed() is e and os.environ["LOCAL_RANK"] == "0" and os.environ["MASTER_PORT"] == port
print(json.dumps({"rank": e.rank, "world": e.world_size, "local_rank": e.local_rank,
    "launcher": e.launcher, "backend": e.backend, "device": str(e.device), "threads": e.threads,
    "torch_threads": torch.get_num_threads(), "port": os.environ["MASTER_PORT"],
    "initialised": dist.is_initialized(), "mean": all_reduce_mean({"a": 2.0}),
    "bcast": broadcast_object({"x": 1})}))
"""

_LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OMP_NUM_THREADS",
    "SLURM_JOB_ID",
)


def _probe(extra_env: dict, threads_per_rank: int = 0) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("SUBMITIT_")}
    env.update(extra_env)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(threads_per_rank)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bare_python_is_a_world_of_one_on_a_free_port():
    info = _probe({}, threads_per_rank=1)
    assert (info["rank"], info["world"], info["local_rank"]) == (0, 0 + 1, 0)
    assert info["launcher"] == "single" and info["backend"] == "gloo" and info["device"] == "cpu"
    assert info["initialised"] and 1024 < int(info["port"]) < 65536
    assert info["mean"] == {"a": 2.0} and info["bcast"] == {"x": 1}
    assert info["threads"] == info["torch_threads"] == 1


def test_one_task_submitit_job_does_not_take_the_port_its_job_id_gives(monkeypatch):
    """The local executor's job id is a PID; a recycled PID must not inherit a port still in use."""
    import submitit

    job = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
        "SUBMITIT_LOCAL_NTASKS": "1",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": "0",
        "SUBMITIT_LOCAL_LOCALID": "0",
    }
    for key in _LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in job.items():
        monkeypatch.setenv(key, value)
    taken = submitit.helpers.TorchDistributedEnvironment().master_port  # what submitit would pick
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("", taken))
        held.listen()
        info = _probe(job, threads_per_rank=1)
    assert info["launcher"] == "submitit" and info["initialised"] and int(info["port"]) != taken


def test_torchrun_style_environment_is_used_and_threads_default_to_cores_per_rank():
    port = denv.free_port()
    info = _probe(
        {
            "RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    assert info["launcher"] == "env" and info["port"] == str(port)
    cores = len(os.sched_getaffinity(0))
    assert info["threads"] == info["torch_threads"] == cores  # OMP_NUM_THREADS unset, 1 local rank


def test_free_port_can_be_bound():
    port = denv.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_deepspeed_launcher_local_rank_argument(monkeypatch):
    assert denv.parse_local_rank_arg(["script.py", "--local_rank=3"]) == 3
    assert denv.parse_local_rank_arg(["--local_rank", "2", "--other", "x"]) == 2
    assert denv.parse_local_rank_arg(["--other"]) is None
    for k in _LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    assert denv._export_rendezvous(["--local_rank=1"]) == "env"
    assert os.environ["LOCAL_RANK"] == "1"


def test_partial_multi_rank_environment_is_a_config_error(monkeypatch):
    for k in _LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)
    for k in [k for k in os.environ if k.startswith("SUBMITIT_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 but"):
        denv._export_rendezvous([])


def test_nccl_backend_on_cpu_is_refused():
    import torch

    from hpc_modatts.config import DistributedConfig

    with pytest.raises(ConfigError, match="nccl needs CUDA"):
        denv._backend(DistributedConfig(backend="nccl"), torch.device("cpu"))
    assert denv._backend(DistributedConfig(), torch.device("cpu")) == "gloo"


def test_exit_distributed_process_keeps_the_status_and_skips_teardown():
    code = (
        "from hpc_modatts.distributed import init_distributed, exit_distributed_process\n"
        "init_distributed(); print('done', flush=True); exit_distributed_process(3)\n"
        "print('not reached')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3 and "done" in out.stdout and "not reached" not in out.stdout
    # without a process group it is a no-op (the CLI calls it after every command)
    plain = subprocess.run(
        [
            sys.executable,
            "-c",
            "from hpc_modatts.distributed import exit_distributed_process\n"
            "exit_distributed_process(3); print('still here')",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0 and "still here" in plain.stdout
