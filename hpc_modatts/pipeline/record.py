"""``pipeline.json``: the record of a submitted pipeline, written here and read back checked.

It holds the DAG's nodes (name, run folder, marker, dependencies) and every job submitted for
them (node, job id, executor, submitit folder, submission time); ``Recorder`` rewrites it
atomically after each submission, ``load_record`` reads it for ``status`` and reruns. The file
is read as data only, and its shape is checked before anything relies on it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hpc_modatts.config import ExperimentConfig
from hpc_modatts.data.errors import DataError
from hpc_modatts.pipeline.dag import Dag, Node
from hpc_modatts.runs import atomic_write_json, read_json

RECORD_FILE = "pipeline.json"
NODE_KEYS = {"name": str, "run_dir": str}
JOB_KEYS = {"node": str, "job_id": str, "executor": str, "folder": str}


class Recorder:
    """``pipeline.json``: the DAG's nodes and every submitted job, rewritten atomically."""

    def __init__(self, path: Path, cfg: ExperimentConfig, executor: str, dag: Dag):
        self.path = path
        try:  # a rerun keeps the jobs of earlier submissions; an unreadable record starts afresh
            old = read_json(path, "does not exist")
        except DataError:
            old = {}
        self.data = {
            "name": cfg.name,
            "executor": executor,
            "cluster": cfg.pipeline.cluster,
            "nodes": [
                {"name": n.name, "run_dir": str(n.run_dir), "marker": n.marker, "deps": list(n.deps)}
                for n in dag.topological()
            ],
            "jobs": old.get("jobs", []) if isinstance(old, dict) else [],
        }
        self.save()

    def add(self, node: Node, job: Any, folder: Path, executor: str) -> None:
        self.data["jobs"].append(
            {
                "node": node.name,
                "job_id": str(job.job_id),
                "executor": executor,
                "folder": str(folder),
                "run_dir": str(node.run_dir),
                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        )
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def load_record(run_dir: str | os.PathLike) -> dict:
    """The ``pipeline.json`` of an experiment folder (DataError if missing, unreadable or malformed)."""
    path = Path(run_dir) / RECORD_FILE
    rec = read_json(path, "does not exist: not a pipeline run folder")
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
                    raise DataError(f"{path}: {section}[{i}].{key} must be a {tp.__name__}, got {item.get(key)!r}")
            if section == "nodes" and not isinstance(item.get("marker", "DONE"), str):
                raise DataError(f"{path}: nodes[{i}].marker must be a string")
