"""``hpc-modatts status RUN_DIR``: the nodes of a submitted pipeline and their states.

State of a node, first that applies: ``DONE`` (its marker exists); the SLURM state from
``sacct`` (slurm jobs); ``FAILED`` (a local/debug job whose submitit result file exists, so the
job ended, but whose stage wrote no DONE marker); ``RUNNING`` (a local job's process is alive);
``NOT SUBMITTED`` / ``UNKNOWN``. ``slurm_in_flight`` names the nodes whose SLURM jobs are still
queued or running (``squeue``), which a rerun must not submit again.

``pipeline.json`` and the submitit folder are read as data only: the result pickles are never
unpickled (a pickle can run code), job ids are checked before they reach ``sacct``.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from rich.console import Console
from submitit.core.utils import JobPaths

from hpc_modatts.console import log_console
from hpc_modatts.data.errors import DataError
from hpc_modatts.pipeline.record import RECORD_FILE, load_record
from hpc_modatts.pipeline.watch import latest_metric, status_table, watch
from hpc_modatts.runs import is_done

SLURM_JOB_ID = re.compile(r"[0-9]+(_[0-9]+)?")
"""A SLURM job id as submitit records it (``123`` or array ``123_4``)."""
SLURM_ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
}
"""squeue states of a job that will still run: a rerun must not submit its node again."""


def sacct_state(job_id: str) -> str | None:
    """The SLURM state of a job (allocation line), or None when sacct is unavailable/silent."""
    if not SLURM_JOB_ID.fullmatch(job_id) or shutil.which("sacct") is None:
        return None
    try:
        out = subprocess.run(
            ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[-1].split()[0] if lines else None


def slurm_in_flight(run_dir: str | os.PathLike) -> dict[str, str]:
    """Node -> job id of the run's SLURM jobs still queued or running (``squeue``)."""
    if not (Path(run_dir) / RECORD_FILE).is_file():  # first submission
        return {}
    rec = load_record(run_dir)  # a damaged record is an error, not "nothing in flight" (duplicate jobs)
    last = {j["node"]: j["job_id"] for j in rec.get("jobs", []) if j.get("executor") == "slurm"}
    if not last or shutil.which("squeue") is None:
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T"], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise DataError(f"squeue failed ({out.stderr.strip()}): cannot tell which jobs of {run_dir} are in flight")
    states = dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)
    return {node: jid for node, jid in last.items() if states.get(jid) in SLURM_ACTIVE}


def local_state(folder: str, job_id: str) -> str:
    """State of a local/debug submitit job whose node has no DONE marker (checked first).

    The result file's existence says the job ended; its content is not read (unpickling it
    could run code), and a stage that succeeds always writes its marker, so an ended job
    without one failed. The log files beside it hold the error.
    """
    if JobPaths(folder, job_id=job_id, task_id=0).result_pickle.is_file():
        return "FAILED"
    if job_id.isdigit() and Path(f"/proc/{job_id}").exists():  # local job ids are process ids
        return "RUNNING"
    return "UNKNOWN"


def pipeline_status(run_dir: str | os.PathLike) -> list[dict]:
    """One row per node: name, job id, state, run folder, elapsed seconds (submission to its
    marker, or to now while it runs), latest logged metric and the job's log file."""
    rec = load_record(run_dir)
    last_job: dict[str, dict] = {}
    for j in rec.get("jobs", []):
        last_job[j["node"]] = j  # the latest submission of a node wins
    rows = []
    shown: set[str] = set()  # synthesize shares translate's folder: its metrics are translate's
    for n in rec.get("nodes", []):
        job = last_job.get(n["name"])
        marker = Path(n["run_dir"]) / n.get("marker", "DONE")
        if is_done(n["run_dir"], n.get("marker", "DONE")):
            state = "DONE"
        elif job is None:
            state = "NOT SUBMITTED"
        elif job["executor"] == "slurm":
            state = sacct_state(job["job_id"]) or "UNKNOWN"
        else:
            state = local_state(job["folder"], job["job_id"])
        rows.append(
            {
                "node": n["name"],
                "job_id": job["job_id"] if job else "",
                "state": state,
                "run_dir": n["run_dir"],
                "elapsed_s": _elapsed(job, marker if state == "DONE" else None),
                "metric": latest_metric(n["run_dir"]) if job and n["run_dir"] not in shown else "",
                "log": _log_path(job),
            }
        )
        shown.add(n["run_dir"])
    return rows


def _elapsed(job: dict | None, marker: Path | None) -> float | None:
    """Seconds from the job's submission to its marker (done) or to now; None if never submitted
    (or submitted in an earlier run whose marker predates the record: it ran before)."""
    if job is None or not isinstance(job.get("submitted"), str):
        return None
    try:
        submitted = time.mktime(time.strptime(job["submitted"], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    end = marker.stat().st_mtime if marker is not None else time.time()
    return end - submitted if end >= submitted else None


def _log_path(job: dict | None) -> str:
    """The job's stderr file (submitit's naming), where a failing stage's traceback is."""
    if job is None:
        return ""
    job_id = job["job_id"] if SLURM_JOB_ID.fullmatch(job["job_id"]) else "unknown"
    return str(JobPaths(job["folder"], job_id=job_id, task_id=0).stderr)


def print_status(
    run_dir: str | os.PathLike, console: Console | None = None, watch_s: float | None = None
) -> list[dict]:
    """Print the table of ``pipeline_status`` and return its rows; with ``watch_s``, keep
    refreshing every ``watch_s`` seconds until every node is in a final state."""
    title = f"pipeline {Path(run_dir).name}"
    if watch_s is not None:
        return watch(lambda: pipeline_status(run_dir), title, interval_s=watch_s, console=console, root=run_dir)
    rows = pipeline_status(run_dir)
    log_console(console).print(status_table(rows, title, root=run_dir))
    return rows
