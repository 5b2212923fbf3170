"""Watching a pipeline: per node its state, elapsed time, latest logged metric and log file.

Two renderings of the same rows (``hpc_modatts.pipeline.status.pipeline_status``):
- on a terminal, a rich ``Live`` table redrawn in place;
- elsewhere (a SLURM log, CI, ``| tee``), one line per state change, so a log file reads as a
  timeline instead of repeated tables.
Used by the local/debug executors while they run (``run_pipeline``) and by
``hpc-modatts status RUN --watch`` for any executor (SLURM jobs included).

The latest metric is read from the node's ``metrics.jsonl`` (the Trainer's log): the tail of
the file only, parsed as JSON, never executed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from hpc_modatts.console import log_console

METRICS_TAIL_BYTES = 8192
"""Bytes read from the end of a ``metrics.jsonl`` (a line is ~300 bytes): constant cost per poll."""
TERMINAL_STATES = (
    "DONE",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "SKIPPED",
)
"""States after which a node changes no more (SLURM's final states included)."""
STYLE = {
    "DONE": "green",
    "COMPLETED": "green",
    "RUNNING": "cyan",
    "PENDING": "yellow",
    "FAILED": "red",
    "CANCELLED": "red",
    "TIMEOUT": "red",
    "OUT_OF_MEMORY": "red",
    "SKIPPED": "red",
}
SHOWN_KEYS = ("val/score", "val/dice", "train/loss", "train/seg", "train/gen")
"""Which logged value summarises a node, first present wins (validation before training)."""


def latest_metric(run_dir: str | os.PathLike) -> str:
    """``"val/dice 0.834 @150"`` (value at step 150): the newest summarising value of
    ``run_dir/metrics.jsonl``, or ""."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - METRICS_TAIL_BYTES))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a partial first line of the tail, or a line being written
        if not isinstance(row, dict):
            continue
        for key in SHOWN_KEYS:
            value = row.get(key)
            if isinstance(value, (int, float)):
                return f"{key} {value:.3f} @{row.get('step', '?')}"
    return ""


def is_final(state: str) -> bool:
    return state.split()[0] in TERMINAL_STATES if state else False


def format_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


def short_path(path: str, root: str | os.PathLike | None) -> str:
    """``path`` relative to ``root`` when inside it (a table cell), else unchanged."""
    if not path or root is None:
        return path
    try:
        return str(Path(path).relative_to(Path(root).resolve()))
    except ValueError:
        return path


def status_table(rows: list[dict], title: str, root: str | os.PathLike | None = None) -> Table:
    """The table of ``pipeline_status`` rows (stage, state, elapsed, latest metric, log file
    relative to ``root``, or the job id when there is no log)."""
    table = Table(title=title, box=box.SIMPLE_HEAD)  # light borders: 120 columns hold every cell
    for col in ("stage", "state", "elapsed", "latest", "log (job id)"):
        table.add_column(col, no_wrap=True, overflow="fold" if col.startswith("log") else "ellipsis")
    for r in rows:
        style = STYLE.get(r["state"].split()[0], "") if r["state"] else ""
        state = f"[{style}]{r['state']}[/]" if style else r["state"]
        table.add_row(
            r["node"],
            state,
            format_elapsed(r.get("elapsed_s")),
            r.get("metric", ""),
            short_path(r.get("log", ""), root) or r["job_id"],
        )
    return table


class PipelineWatcher:
    """Shows the nodes of a running pipeline; ``update()`` as often as convenient (throttled).

    ``rows`` returns the current rows (``pipeline_status`` of the run folder). On a terminal
    the table is redrawn in place; otherwise each state change is printed as one line
    (``12:03:41  translate  RUNNING -> DONE  3:12  val/score 0.798 @300``).
    """

    def __init__(
        self,
        rows: Callable[[], list[dict]],
        title: str,
        console: Console | None = None,
        live: bool | None = None,
        every_s: float = 1.0,
        root: str | os.PathLike | None = None,
    ) -> None:
        self.rows, self.title, self.every_s, self.root = rows, title, every_s, root
        self.console = log_console(console)
        self.live_mode = self.console.is_terminal if live is None else live
        self.states: dict[str, str] = {}
        self.last = -float("inf")
        self._live: Live | None = None

    def __enter__(self) -> PipelineWatcher:
        if self.live_mode:
            self._live = Live(console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        self.update(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.update(force=True)
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, force: bool = False) -> list[dict]:
        """Refresh the view (at most once per ``every_s`` unless ``force``); returns the rows used."""
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return []
        self.last = now
        rows = self.rows()
        if self._live is not None:
            self._live.update(status_table(rows, self.title, self.root))
        else:
            self._print_changes(rows)
        return rows

    def _print_changes(self, rows: list[dict]) -> None:
        for r in rows:
            before = self.states.get(r["node"])
            if before == r["state"]:
                continue
            self.states[r["node"]] = r["state"]
            if before is None and r["state"] in ("NOT SUBMITTED", ""):
                continue  # the initial pending set is not news
            change = f"{before} -> {r['state']}" if before else r["state"]
            extras = [format_elapsed(r.get("elapsed_s")), r.get("metric", "")]
            if r["state"].startswith("FAILED") and r.get("log"):
                extras.append(f"log: {r['log']}")
            line = "  ".join([time.strftime("%H:%M:%S"), r["node"], change, *[e for e in extras if e]])
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)


def watch(
    rows: Callable[[], list[dict]],
    title: str,
    interval_s: float = 5.0,
    console: Console | None = None,
    live: bool | None = None,
    max_polls: int | None = None,
    root: str | os.PathLike | None = None,
) -> list[dict]:
    """Poll ``rows`` until every node is in a final state (or ``max_polls``); returns the last rows."""
    polls = 0
    with PipelineWatcher(rows, title, console, live, every_s=0.0, root=root) as watcher:
        while True:
            current = watcher.update(force=True)
            polls += 1
            if all(is_final(r["state"]) for r in current) or (max_polls and polls >= max_polls):
                return current
            time.sleep(interval_s)
