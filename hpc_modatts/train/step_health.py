"""Is training still healthy? A non-finite loss stops the run on every rank with one line that names
the term and the cases; optimiser steps DeepSpeed skipped on non-finite gradients are counted and
warned about (the losses can stay finite while a step is skipped, so this is the only trace of it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from hpc_modatts.distributed.env import all_gather_object

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A loss term became NaN/Inf: ``step N: loss term 'X' is nan (cases: a, b)``."""


def raise_diverged(step: int, local: Mapping[str, float], batch_ids: Callable[[], list[str]]) -> NoReturn:
    """Raise the same one-line TrainingDiverged on every rank (collective: every rank calls it),
    naming the first non-finite term and the cases of the ranks that saw one."""
    bad = sorted(k for k, v in local.items() if not math.isfinite(v))
    report = all_gather_object((bad, [local[k] for k in bad], batch_ids() if bad else []))
    terms = [(t, v) for b, vals, _ in report for t, v in zip(b, vals)]
    term, value = terms[0] if terms else ("?", float("nan"))
    cases = [c for b, _, ids in report if b for c in ids]
    raise TrainingDiverged(
        f"step {step}: loss term '{term}' is {value} (cases: {', '.join(dict.fromkeys(cases)) or 'unknown'})"
    )


class SkippedSteps:
    """Running count of the optimiser steps DeepSpeed skipped, all engines (``train/skipped_steps``)."""

    def __init__(self) -> None:
        self.total = 0

    @staticmethod
    def count(engines: Mapping[str, Any]) -> int:
        return sum(int(getattr(e, "skipped_steps", 0)) for e in engines.values())

    def reset(self, engines: Mapping[str, Any]) -> None:
        """Start from the engines' own counters (restored with a checkpoint): no warning for those."""
        self.total = self.count(engines)

    def check(self, engines: Mapping[str, Any], step: int) -> None:
        """Warn when the engines skipped steps since the last check."""
        total = self.count(engines)
        if total > self.total:
            log.warning(
                "step %d: DeepSpeed skipped %d optimiser step(s) on non-finite gradients (%d in total)",
                step,
                total - self.total,
                total,
            )
        self.total = total
