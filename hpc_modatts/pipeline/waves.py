"""The ``local`` and ``debug`` executors: the DAG run in waves, ``afterok`` emulated here.

submitit's ``local`` (real subprocesses) and ``debug`` (in-process) executors ignore
``slurm_*`` options and have no dependencies (docs/architecture.md, "Measured facts"), so a
node is submitted once its parents have finished, and a failed node fails its descendants
only, as ``afterok`` does on SLURM.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

from hpc_modatts.config import ExperimentConfig
from hpc_modatts.host import local_cores
from hpc_modatts.pipeline.dag import Node, node_config
from hpc_modatts.pipeline.jobs import StageJob, make_executor, node_parameters
from hpc_modatts.pipeline.record import Recorder

log = logging.getLogger(__name__)

LOCAL_JOB_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
"""Environment every ``local`` job starts with unless the submitting process sets the variable
itself: glibc keeps freed tensor memory instead of handing it back to the OS and page-faulting
it in again at the next step (docs/architecture.md, "Measured facts": a GenSeg step 1.62 -> 1.38
s on 2 threads; ``make demo`` 10:39 -> 9:11 with the same table). glibc reads it at process start,
so it has to be in the job's environment, not set from inside it."""


@contextmanager
def local_job_environment() -> Iterator[None]:
    """``LOCAL_JOB_ENV`` in ``os.environ`` while a local job is spawned (submitit copies the
    submitter's environment); variables the user set are left alone, the others removed after."""
    added = {k: v for k, v in LOCAL_JOB_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class StagesFailed(RuntimeError):
    """Local/debug pipeline: some stages failed (their descendants never ran, the rest did)."""

    def __init__(self, failed: dict[str, str], skipped: list[str]):
        self.failed, self.skipped = failed, skipped
        lines = [f"{name}: {err}" for name, err in failed.items()]
        super().__init__(
            f"{len(failed)} stage(s) failed, {len(skipped)} dependent stage(s) not run: " + "; ".join(lines)
        )


def run_in_waves(
    pending: list[Node],
    cfg: ExperimentConfig,
    executor: str,
    folder: Path,
    rec: Recorder,
    poll_s: float = 0.5,
    max_parallel: int | None = None,
    tick: Callable[[], object] = lambda: None,
) -> None:
    """Emulate afterok: submit every node whose parents finished; as soon as ANY running job
    ends, submit what it unblocked (no barrier between waves, so a short branch of the graph
    never waits for a long sibling). A failed stage fails its descendants only, as on SLURM:
    independent branches still run, then ``StagesFailed`` names every failure. ``debug`` jobs
    run in-process inside ``results()``, one at a time in submission order. ``max_parallel``
    caps the jobs alive at once (a sweep's graph can have dozens of ready nodes; each local
    job is a whole training process; ``default_parallel``: one per core); when more nodes are
    ready than may start, those with the most work still below them start first (``chain_work``).
    ``tick`` is called at every poll (the watcher)."""
    chain = chain_work(pending, cfg)  # ready nodes start heaviest chain first (the critical path)
    finished: set[str] = set()
    failed: dict[str, str] = {}
    skipped: list[str] = []
    running: dict[str, tuple[Node, Any]] = {}
    left = list(pending)
    try:
        while left or running:
            for node in [n for n in left if any(d in failed or d in skipped for d in n.deps)]:
                skipped.append(node.name)  # topological order: a skipped parent is seen first
                left.remove(node)
            ready = sorted((n for n in left if all(d in finished for d in n.deps)), key=lambda n: -chain[n.name])
            if max_parallel:
                ready = ready[: max(0, max_parallel - len(running))]
            alive = len(running) + len(ready)
            for node in ready:
                left.remove(node)
                if executor == "local" and cfg.distributed.threads_per_rank == 0:
                    node = with_threads(node, alive)
                with local_job_environment() if executor == "local" else nullcontext():
                    ex = make_executor(folder, executor, node_parameters(node, cfg, None, []))
                    job = ex.submit(StageJob(node, cfg))
                rec.add(node, job, folder, executor)
                running[node.name] = (node, job)
            if not running:
                continue
            name = _first_done(running, executor, poll_s, tick)
            node, job = running.pop(name)
            try:
                job.results()  # raises the stage's error (all tasks of a multi-task job)
            except Exception as e:  # noqa: BLE001 - any stage error fails that branch only
                failed[name] = _last_line(e)
                log.error("FAILED %s: %s (log: %s)", name, failed[name], job.paths.stderr)
                continue
            finished.add(name)
            log.debug("finished %s", name)  # the watcher shows it
    except BaseException:  # Ctrl-C or an executor error: leave no job running behind us
        for _, job in running.values():
            job.cancel(check=False)
        raise
    if failed:
        raise StagesFailed(failed, skipped)


STEP_COST: dict[str, float] = {
    "translate": 0.55,  # a stage-1 step: 2D translator + discriminators, 8 slices
    "semi-supervised": 3.5,  # GenSeg: encoder/decoders several times, 3D discriminators
    "self-supervised-2d": 0.35,
    "semi-supervised-2d": 1.2,
    "m-genseg": 1.75,
}
"""Relative cost of one optimiser step (a 3D Dice step of the bounds / self-supervised = 1), from
1-thread step times of the demo configuration (docs/results.md): semi-supervised 2.3 s, a Dice step
0.65 s, translate 0.37 s. Only the order of the local executor's ready jobs depends on it."""
LIGHT_STAGE_WORK = 10.0
"""Work of a stage without optimiser steps (synthesize, predict, evaluate, convert), in Dice steps."""


def node_work(node: Node, cfg: ExperimentConfig) -> float:
    """Expected compute of ``node`` in Dice-step units: optimiser steps x ``STEP_COST``."""
    stage = node.overrides.get("train.stage")
    if stage not in ("translate", "segment", "self-train"):
        return LIGHT_STAGE_WORK
    train = node_config(cfg, node).train
    steps = train.max_steps or train.epochs  # epochs alone: the steps per epoch are not known here
    return steps * STEP_COST.get("translate" if stage == "translate" else train.variant, 1.0) + LIGHT_STAGE_WORK


def chain_work(pending: list[Node], cfg: ExperimentConfig) -> dict[str, float]:
    """Per node, the work on the heaviest chain from it to the end of ``pending`` (itself
    included). The critical path runs through the heaviest chains: in the demo, translate ->
    synthesize -> semi-supervised -> its round -> predict -> evaluate must start before a bound
    or the self-supervised branch, or they slow it down for their whole life."""
    children: dict[str, list[str]] = {n.name: [] for n in pending}
    for n in pending:
        for d in n.deps:
            if d in children:
                children[d].append(n.name)
    work: dict[str, float] = {}
    for n in reversed(pending):  # topological order: children come after their parents
        work[n.name] = node_work(n, cfg) + max((work[c] for c in children[n.name]), default=0.0)
    return work


def default_parallel(cfg: ExperimentConfig) -> int:
    """Local jobs at once: the cores divided by each job's torch threads (0 threads: one job per
    core at most; the local executor then gives each job cores // jobs alive, see ``with_threads``).
    More jobs than cores only time-slice the cores, and slow the critical path with them."""
    threads = cfg.distributed.threads_per_rank or 1
    return max(1, local_cores() // threads)


def with_threads(node: Node, alive: int) -> Node:
    """``node`` with ``distributed.threads_per_rank`` = cores // (jobs alive x its ranks), at least 1.

    The local executor's share of the machine for ``threads_per_rank=0``: jobs started side by
    side get one share each, because an oversubscribed core stalls every OpenMP team on it
    (docs/results.md), and a job started alone, e.g. the last self-training round, gets every
    core. A job keeps its share for its whole life: it cannot know when its neighbours end.
    """
    threads = max(1, local_cores() // max(1, alive * node.resources.tasks_per_node))
    return dataclasses.replace(node, overrides={**node.overrides, "distributed.threads_per_rank": threads})


def _last_line(e: BaseException) -> str:
    """The stage's own error line (submitit wraps it in a multi-line FailedJobError)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith(("-", " "))]
    errors = [ln for ln in lines if "Error:" in ln or "Exception:" in ln]
    return (errors or lines or [type(e).__name__])[-1][:500]


def _first_done(running: dict[str, tuple[Node, Any]], executor: str, poll_s: float, tick: Callable[[], object]) -> str:
    """Name of a running job that has ended (the oldest one for ``debug``, which runs on demand)."""
    if executor == "debug":
        return next(iter(running))
    while True:
        for name, (_, job) in running.items():
            if job.done():
                return name
        tick()
        time.sleep(poll_s)
