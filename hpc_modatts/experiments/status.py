"""Where a sweep stands (``hpc-modatts status SWEEP_DIR``); what it will run is ``plan.print_plan``.

The status has one row per run folder of the sweep (a point's MoDATTS variants, or a shared
group): how many of its jobs are done, running, queued, failed or waiting, which points share
it, and the test Dice of every variant already evaluated. The job states come from the
pipeline's own ``pipeline_status`` (DONE markers, ``sacct``, submitit results), so the sweep
view and the per-job view (``--nodes``) never disagree.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpc_modatts.console import log_console
from hpc_modatts.experiments.plan import load_sweep
from hpc_modatts.pipeline.status import pipeline_status, print_status

GROUPS = {
    "DONE": "done",
    "COMPLETED": "done",
    "RUNNING": "running",
    "COMPLETING": "running",
    "PENDING": "queued",
    "REQUEUED": "queued",
    "CONFIGURING": "queued",
    "SUSPENDED": "queued",
    "FAILED": "failed",
    "CANCELLED": "failed",
    "TIMEOUT": "failed",
    "OUT_OF_MEMORY": "failed",
    "NODE_FAIL": "failed",
    "PREEMPTED": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
}
"""Job state -> column of the sweep table; anything else (NOT SUBMITTED, UNKNOWN) is "waiting"."""
COLUMNS = ("done", "running", "queued", "failed", "waiting")


def sweep_status(sweep_dir: str | os.PathLike) -> list[dict]:
    """One row per run folder: job counts per state group and the evaluated variants' mean Dice."""
    info = load_sweep(sweep_dir)
    nodes = pipeline_status(sweep_dir)
    rows = []
    for u in info["units"]:
        mine = [r for r in nodes if r["node"].startswith(f"{u['id']}/")]
        counts = Counter(GROUPS.get(r["state"].split()[0] if r["state"] else "", "waiting") for r in mine)
        dice = {}
        for v in u["variants"]:
            path = Path(sweep_dir) / u["id"] / f"evaluate-{v}" / "metrics.json"
            if path.is_file():
                dice[v] = json.loads(path.read_text())["summary"]["dice"]["mean"]
        rows.append(
            {
                "unit": u["id"],
                "shared_by": list(u["shared_by"]),
                "jobs": len(mine),
                **{c: counts.get(c, 0) for c in COLUMNS},
                "dice": dice,
            }
        )
    return rows


def print_sweep_status(sweep_dir: str | os.PathLike, nodes: bool = False, console: Console | None = None) -> list[dict]:
    """Print the sweep table (and, with ``nodes``, the per-job table); returns the rows."""
    console = log_console(console)
    rows = sweep_status(sweep_dir)
    table = Table(title=f"sweep {Path(sweep_dir).resolve().name}")
    for col in ("run folder", "shared by", "jobs", *COLUMNS, "test Dice"):
        table.add_column(col, justify="right" if col in COLUMNS or col == "jobs" else "left")
    for r in rows:
        dice = ", ".join(f"{v} {d:.3f}" if d is not None else f"{v} n/a" for v, d in r["dice"].items()) or "-"
        failed = f"[red]{r['failed']}[/]" if r["failed"] else "0"
        table.add_row(
            r["unit"],
            f"{len(r['shared_by'])} point(s)",
            str(r["jobs"]),
            str(r["done"]),
            str(r["running"]),
            str(r["queued"]),
            failed,
            str(r["waiting"]),
            dice,
        )
    console.print(table)
    total = {c: sum(r[c] for r in rows) for c in ("jobs", *COLUMNS)}
    console.print(", ".join(f"{total[c]} {c}" for c in ("jobs", *COLUMNS)))
    if nodes:
        print_status(sweep_dir, console)
    return rows
