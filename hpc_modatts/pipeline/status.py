"""``hpc-modatts status RUN_DIR``: the nodes of a submitted pipeline and their states.

State of a node, first that applies: ``DONE`` (its marker exists); the SLURM state from
``sacct`` (slurm jobs); the submitit result pickle (``COMPLETED``/``FAILED``, local/debug
jobs); ``RUNNING`` (a local job's process is alive); ``NOT SUBMITTED`` / ``UNKNOWN``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

from rich.console import Console
from rich.table import Table
from submitit.core.utils import JobPaths

from hpc_modatts.data.errors import DataError
from hpc_modatts.runs import is_done


def load_record(run_dir: str | os.PathLike) -> dict:
    """The ``pipeline.json`` of an experiment folder (DataError if missing/unreadable)."""
    path = Path(run_dir) / "pipeline.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: not a pipeline run folder") from None
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e})") from None


def sacct_state(job_id: str) -> str | None:
    """The SLURM state of a job (allocation line), or None when sacct is unavailable/silent."""
    if shutil.which("sacct") is None:
        return None
    try:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[-1].split()[0] if lines else None


def local_state(folder: str, job_id: str) -> str:
    """State of a local/debug submitit job from its result pickle or its process."""
    result = JobPaths(folder, job_id=job_id, task_id=0).result_pickle
    if result.is_file():
        try:
            outcome = pickle.loads(result.read_bytes())[0]
        except Exception:  # noqa: BLE001 - a half-written/unpicklable result is still "there"
            return "UNKNOWN"
        return "COMPLETED" if outcome == "success" else "FAILED"
    if job_id.isdigit() and Path(f"/proc/{job_id}").exists():
        return "RUNNING"
    return "UNKNOWN"


def pipeline_status(run_dir: str | os.PathLike) -> list[dict]:
    """One row per node: name, job id, state, run folder."""
    rec = load_record(run_dir)
    last_job: dict[str, dict] = {}
    for j in rec.get("jobs", []):
        last_job[j["node"]] = j  # the latest submission of a node wins
    rows = []
    for n in rec.get("nodes", []):
        job = last_job.get(n["name"])
        if is_done(n["run_dir"], n.get("marker", "DONE")):
            state = "DONE"
        elif job is None:
            state = "NOT SUBMITTED"
        elif job["executor"] == "slurm":
            state = sacct_state(job["job_id"]) or "UNKNOWN"
        else:
            state = local_state(job["folder"], job["job_id"])
        rows.append({"node": n["name"], "job_id": job["job_id"] if job else "", "state": state,
                     "run_dir": n["run_dir"]})
    return rows


STYLE = {"DONE": "green", "COMPLETED": "green", "RUNNING": "cyan", "PENDING": "yellow",
         "FAILED": "red", "CANCELLED": "red", "TIMEOUT": "red", "OUT_OF_MEMORY": "red"}


def print_status(run_dir: str | os.PathLike, console: Console | None = None) -> list[dict]:
    """Print the rich table of ``pipeline_status`` and return its rows."""
    rows = pipeline_status(run_dir)
    table = Table(title=f"pipeline {Path(run_dir).name}")
    for col in ("stage", "job id", "state", "run folder"):
        table.add_column(col)
    for r in rows:
        style = STYLE.get(r["state"].split()[0], "")
        table.add_row(r["node"], r["job_id"], f"[{style}]{r['state']}[/]" if style else r["state"], r["run_dir"])
    (console or Console()).print(table)
    return rows
