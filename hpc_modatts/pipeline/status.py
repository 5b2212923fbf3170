"""``hpc-modatts status RUN_DIR``: the nodes of a submitted pipeline and their states.

State of a node, first that applies: ``DONE`` (its marker exists); the SLURM state from
``sacct`` (slurm jobs); ``FAILED`` (a local/debug job whose submitit result file exists, so the
job ended, but whose stage wrote no DONE marker); ``RUNNING`` (a local job's process is alive);
``NOT SUBMITTED`` / ``UNKNOWN``.

``pipeline.json`` and the submitit folder are read as data only: the result pickles are never
unpickled (a pickle can run code), job ids are checked before they reach ``sacct``.
"""

from __future__ import annotations

import json
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
from hpc_modatts.pipeline.watch import latest_metric, status_table, watch
from hpc_modatts.runs import is_done

SLURM_JOB_ID = re.compile(r"[0-9]+(_[0-9]+)?")
"""A SLURM job id as submitit records it (``123`` or array ``123_4``)."""
NODE_KEYS = {"name": str, "run_dir": str}
JOB_KEYS = {"node": str, "job_id": str, "executor": str, "folder": str}


def load_record(run_dir: str | os.PathLike) -> dict:
    """The ``pipeline.json`` of an experiment folder (DataError if missing, unreadable or malformed)."""
    path = Path(run_dir) / "pipeline.json"
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: not a pipeline run folder") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not valid JSON ({e})") from None
    _check_record(rec, path)
    return rec


def _check_record(rec: object, path: Path) -> None:
    """The shape ``pipeline_status`` relies on: lists of node and job mappings with string fields."""
    if not isinstance(rec, dict):
        raise DataError(f"{path}: top level must be a JSON object, not {type(rec).__name__}")
    for section, keys in (("nodes", NODE_KEYS), ("jobs", JOB_KEYS)):
        items = rec.get(section, [])
        if not isinstance(items, list):
            raise DataError(f"{path}: {section!r} must be a list, not {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise DataError(f"{path}: {section}[{i}] must be an object, not {type(item).__name__}")
            for key, tp in keys.items():
                if not isinstance(item.get(key), tp):
                    raise DataError(f"{path}: {section}[{i}].{key} must be a {tp.__name__}, "
                                    f"got {item.get(key)!r}")
            if section == "nodes" and not isinstance(item.get("marker", "DONE"), str):
                raise DataError(f"{path}: nodes[{i}].marker must be a string")


def sacct_state(job_id: str) -> str | None:
    """The SLURM state of a job (allocation line), or None when sacct is unavailable/silent."""
    if not SLURM_JOB_ID.fullmatch(job_id) or shutil.which("sacct") is None:
        return None
    try:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[-1].split()[0] if lines else None


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
        rows.append({"node": n["name"], "job_id": job["job_id"] if job else "", "state": state,
                     "run_dir": n["run_dir"], "elapsed_s": _elapsed(job, marker if state == "DONE" else None),
                     "metric": latest_metric(n["run_dir"]) if job and n["run_dir"] not in shown else "",
                     "log": _log_path(job)})
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


def print_status(run_dir: str | os.PathLike, console: Console | None = None,
                 watch_s: float | None = None) -> list[dict]:
    """Print the table of ``pipeline_status`` and return its rows; with ``watch_s``, keep
    refreshing every ``watch_s`` seconds until every node is in a final state."""
    title = f"pipeline {Path(run_dir).name}"
    if watch_s is not None:
        return watch(lambda: pipeline_status(run_dir), title, interval_s=watch_s, console=console, root=run_dir)
    rows = pipeline_status(run_dir)
    log_console(console).print(status_table(rows, title, root=run_dir))
    return rows
