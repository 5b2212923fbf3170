"""Integration harness: a real single-node SLURM cluster for the ``@pytest.mark.slurm`` tests.

The session fixture ``slurm_cluster`` runs ``tests/integration/slurm/start_slurm.sh`` (it
apt-installs munge/slurm/mariadb when missing and needs root), exports ``SLURM_CONF`` and a
``PYTHONPATH`` that lets job processes import the test modules, and stops the cluster with
``stop_slurm.sh`` at the end. Where it cannot start (not root, no apt, install/start failure)
every slurm-marked test is skipped with the reason. Cluster folder: $HPC_MODATTS_SLURM_DIR
(default /tmp/hpc-modatts-slurm); HPC_MODATTS_SLURM_KEEP=1 leaves it running afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SLURM_DIR = Path(os.environ.get("HPC_MODATTS_SLURM_DIR", "/tmp/hpc-modatts-slurm"))


def _cannot_start() -> str | None:
    if os.geteuid() != 0:
        return "real SLURM tests need root (start_slurm.sh installs and starts munge/slurm daemons)"
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = _cannot_start()
    if reason:
        pytest.skip(reason)
    start = subprocess.run(
        ["bash", str(HERE / "slurm" / "start_slurm.sh"), str(SLURM_DIR)], capture_output=True, text=True, timeout=900
    )
    if start.returncode != 0:
        tail = (start.stderr.strip() or start.stdout.strip()).splitlines()[-1:] or ["no output"]
        pytest.skip(f"could not start the test SLURM cluster: {tail[0]}")
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PYTHONPATH")}
    os.environ["SLURM_CONF"] = str(SLURM_DIR / "etc" / "slurm.conf")
    # jobs inherit the environment (sbatch --export=ALL): let them import the test modules
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(HERE), saved["PYTHONPATH"]) if p)
    try:
        yield SLURM_DIR
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if os.environ.get("HPC_MODATTS_SLURM_KEEP") != "1":
            subprocess.run(
                ["bash", str(HERE / "slurm" / "stop_slurm.sh"), str(SLURM_DIR)],
                capture_output=True,
                text=True,
                timeout=300,
            )


@pytest.fixture(autouse=True)
def _needs_slurm(request):
    """Start (or skip) the cluster for every test marked ``slurm``."""
    if request.node.get_closest_marker("slurm"):
        request.getfixturevalue("slurm_cluster")
