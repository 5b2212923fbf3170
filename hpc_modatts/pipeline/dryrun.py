"""``pipeline --dry-run --executor slurm``: the sbatch scripts submitit would write, per node.

The scripts come out of submitit's public submission path, not a re-implementation of its
template: a temporary folder with a stand-in ``sbatch`` (it keeps a copy of the script it is
given and answers ``Submitted batch job N`` like the real one) and ``srun`` (submitit's check
that it runs on a SLURM cluster) goes first on ``PATH``, and the pending nodes are submitted
exactly as ``run_pipeline`` submits them (``jobs.submit_slurm``: same executors, parameters,
dependency chain). Nothing is written under the run folder; the scripts show the real
submitit folder.
The stand-ins are fixed text written by this module; no user string reaches a shell.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from hpc_modatts.config import ExperimentConfig
from hpc_modatts.pipeline.dag import Dag, build_dag
from hpc_modatts.pipeline.jobs import submit_slurm
from hpc_modatts.pipeline.record import RECORD_FILE, Recorder
from hpc_modatts.presets import apply_preset, load_preset

FIRST_FAKE_ID = 1000
"""Job ids handed out by the stand-in sbatch (shown in the scripts' ``--dependency`` lines)."""

FAKE_SBATCH = """#!/bin/sh
# hpc-modatts dry run: keep the script submitit hands to sbatch, answer like sbatch
set -e
n=$(cat "$HPC_MODATTS_DRY_RUN/next_id")
echo $((n + 1)) > "$HPC_MODATTS_DRY_RUN/next_id"
for script; do :; done
cp "$script" "$HPC_MODATTS_DRY_RUN/$n.sbatch"
echo "Submitted batch job $n"
"""
FAKE_SRUN = "#!/bin/sh\nexit 0\n"


@contextlib.contextmanager
def fake_slurm() -> Iterator[Path]:
    """A temporary folder whose ``sbatch``/``srun`` stand-ins come first on PATH (restored after)."""
    tmp = Path(tempfile.mkdtemp(prefix="hpc-modatts-dry-run-"))
    try:
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        (tmp / "next_id").write_text(str(FIRST_FAKE_ID))
        # submitit runs sbatch with this process's environment; patch.dict restores it on exit
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HPC_MODATTS_DRY_RUN": str(tmp)}
        with mock.patch.dict(os.environ, env):
            yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sbatch_scripts(cfg: ExperimentConfig, dag: Dag, preset: dict[str, Any] | None) -> list[dict]:
    """One entry per pending node: ``{"node", "job_id", "after": [node names], "script"}``."""
    pending = dag.pending()
    real_folder = str(cfg.run_dir / "submitit")
    with fake_slurm() as tmp:
        folder = tmp / "submitit"
        rec = Recorder(tmp / RECORD_FILE, cfg, "slurm", dag)
        jobs = submit_slurm(pending, cfg, preset, folder, rec, {})
        out = []
        for node in pending:
            job_id = str(jobs[node.name].job_id)
            script = (tmp / f"{job_id}.sbatch").read_text().replace(str(folder), real_folder)
            out.append(
                {"node": node.name, "job_id": job_id, "after": [d for d in node.deps if d in jobs], "script": script}
            )
    return out


def dry_run_slurm(cfg: ExperimentConfig, cluster: str | None = None) -> list[dict]:
    """``sbatch_scripts`` of ``cfg``'s DAG with the cluster preset applied as ``run_pipeline`` does."""
    cluster = cluster if cluster is not None else cfg.pipeline.cluster
    preset = load_preset(cluster) if cluster else None
    if preset:
        cfg = apply_preset(cfg, preset)
    return sbatch_scripts(cfg, build_dag(cfg), preset)
