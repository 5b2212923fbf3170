"""The ``hpc-modatts`` command: thin argparse wrappers around API functions.

Each command group lives in its own module (``data``, ``train``, ``infer``, ``pipeline``,
``experiments``, ``demo``) and exposes ``register(subparsers)``; every subcommand sets ``func``
to a wrapper that calls one API function. Errors that are the user's (bad input, bad config, a
failed pipeline stage) print one line and exit 2.

``build_parser`` imports every group module, also for ``--help``: a group module imports at
its top only what its parser needs, and each handler imports the API it calls when it runs,
so ``--help`` loads neither zarr, dask nor torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from rich.logging import RichHandler

from hpc_modatts.config import ConfigError
from hpc_modatts.console import log_console
from hpc_modatts.data.errors import DataError
from hpc_modatts.pipeline.waves import StagesFailed

GROUPS = ("data", "train", "infer", "pipeline", "experiments", "demo")


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit code 2."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ConfigError, DataError, StagesFailed)
"""Printed as one line (exit 2); a failed pipeline stage's log path is in the log above it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpc-modatts",
        description="Cross-modality tumour segmentation (MoDATTS) on SLURM GPU clusters.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in GROUPS:
        try:
            mod = importlib.import_module(f"hpc_modatts.cli.{group}")
        except ModuleNotFoundError as e:
            if e.name == f"hpc_modatts.cli.{group}":
                continue
            raise
        mod.register(sub)
    return parser


def _pop_local_rank(argv: list[str]) -> tuple[list[str], int | None]:
    """Remove ``--local_rank=N`` / ``--local-rank N`` wherever it is: the deepspeed launcher
    appends it after the subcommand's own arguments, where argparse would reject it."""
    out, rank, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        name, eq, val = a.partition("=")
        if name in ("--local_rank", "--local-rank"):
            if not eq:
                i += 1
                val = argv[i] if i < len(argv) else ""
            try:
                rank = int(val)
            except ValueError:
                raise SystemExit(f"hpc-modatts: error: {name} needs an integer, got {val!r}") from None
        else:
            out.append(a)
        i += 1
    return out, rank


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    process_entry = argv is None
    argv, local_rank = _pop_local_rank(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if local_rank is not None:
        args.local_rank = local_rank
    # `key.sub=value` overrides may come after options (`pipeline CFG --executor slurm k=v`):
    # argparse leaves those late positionals unparsed, so hand them to the command here.
    if extra:
        late = [a for a in extra if "=" in a and not a.startswith("-")]
        if len(late) != len(extra) or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a not in late) or ' '.join(extra)}")
        args.overrides = list(args.overrides or []) + late
    if args.local_rank is not None:  # the deepspeed launcher appends --local_rank=N
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=log_console(), show_path=False, rich_tracebacks=False)],
    )
    try:
        rc = int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(f"hpc-modatts {args.command}: error: {e}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print(f"hpc-modatts {args.command}: interrupted", file=sys.stderr)
        rc = 130
    # a real process (console script, launchers) leaves a process group cleanly; only one that
    # imported torch.distributed can be in a group, so `status`, `pipeline` stay torch-free
    if process_entry and "torch.distributed" in sys.modules:
        from hpc_modatts.distributed.env import exit_distributed_process  # torch: see above

        exit_distributed_process(rc, wait_for_peers=rc == 0)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
