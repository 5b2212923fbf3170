"""Which validation is the best one: the Trainer's checkpoint selection, kept apart from the loop.

The best validation maximises the task's ``select_on`` metric (default ``"dice"``) among the
PLAUSIBLE validations: a validation whose metrics carry ``plausible <= 0`` (the degenerate-model
guards of ``train.guards``) is counted and logged, never selected. The state travels in
``trainer.json`` (``state`` / ``load``) so that a resumed run selects exactly as an unbroken one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class BestValidation:
    """The best plausible validation so far, and how many validations the guards rejected."""

    select_on: str = "dice"
    """Metric maximised (``Task.select_on``)."""
    score: float = -math.inf
    """Its value at the best validation; -inf before any plausible one."""
    step: int = -1
    """Step of the best validation; -1 before any plausible one."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Every finite metric of the best validation (read by ``Task.wants_more_steps``)."""
    implausible: int = 0
    """Validations the guards called implausible (never best-checkpoint candidates)."""

    @property
    def found(self) -> bool:
        """True once some validation was plausible (and had a finite score)."""
        return math.isfinite(self.score)

    @property
    def score_or_none(self) -> float | None:
        """The score for JSON: None before any plausible validation."""
        return self.score if self.found else None

    def consider(self, metrics: dict[str, float], step: int, task_name: str) -> bool:
        """Count one validation's metrics; True when it is the new best."""
        if metrics.get("plausible", 1.0) <= 0:
            self.implausible += 1
            log.warning(
                "%s step %d: implausible model (guards), not a best-checkpoint candidate: %s",
                task_name,
                step,
                {k: round(v, 3) for k, v in metrics.items()},
            )
            return False
        if not metrics[self.select_on] > self.score:
            return False
        self.score, self.step = metrics[self.select_on], step
        self.metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        return True

    def state(self) -> dict:
        """The keys this selection keeps in ``trainer.json``."""
        return {
            "best_score": self.score_or_none,
            "select_on": self.select_on,
            "best_step": self.step,
            "implausible_validations": self.implausible,
            "best_metrics": self.metrics,
        }

    def load(self, state: dict) -> None:
        """Restore from a ``trainer.json`` (checked by ``checkpoint.read_trainer_state``)."""
        best = state.get("best_score", state.get("best_dice"))  # "best_dice": checkpoints before 0.2
        self.score = best if best is not None else -math.inf
        self.step = state["best_step"]
        self.implausible = state.get("implausible_validations", 0)
        self.metrics = dict(state.get("best_metrics") or {})
