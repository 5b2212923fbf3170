"""The one rich ``Console`` factory: tables never wrap below 120 columns in logs.

A rich Console that does not write to a terminal (a SLURM log, CI, ``| tee``) assumes 80
columns and wraps every wide table into unreadable fragments; ours are ~120 wide.
"""

from __future__ import annotations

from rich.console import Console

TABLE_WIDTH = 120
"""Minimum width when the output is not a terminal."""


def log_console(console: Console | None = None) -> Console:
    """``console``, or a new stdout Console at least ``TABLE_WIDTH`` wide when not writing to a terminal."""
    if console is not None:
        return console
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(TABLE_WIDTH, console.width))
    return console
