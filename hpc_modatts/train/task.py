"""The Task protocol: what one training stage supplies to THE shared ``Trainer``.

A stage (translate, segment, self-train, ...) is a Task: models, a dataset, the losses and
the optimiser step of ONE batch, and a validation metric. It never owns a loop; the
``hpc_modatts.train.trainer.Trainer`` does the epochs, sampling, validation schedule,
checkpoints, resume, NaN guard, logging and the DONE marker for every stage.

Required members::

    name: str                                         # for logs and the progress bar
    build(env) -> dict[str, nn.Module]                # e.g. {"gen": G, "disc": D}
    train_dataset() -> torch.utils.data.Dataset       # items are dicts (see docs/interfaces.md)
    train_step(batch, engines, step) -> dict[str, float | Tensor]
    validate(engines, env) -> dict[str, float] | None # must contain the task's ``select_on``
                                                      # metric ("dice" by default); None = no validation

``train_step`` receives the batch already moved to ``env.device`` and the dict of engines
(a DeepSpeed engine per optimised model, the plain module for frozen ones). It computes its
losses, calls ``engine.backward(loss)`` and ``engine.step()`` itself (so a GAN step can update
the discriminator engine and the generator engine in turn) and returns the loss terms it
wants logged; the trainer stops the run with ``TrainingDiverged`` when any is NaN/Inf.
Loss weights are normalised by the task with ``hpc_modatts.losses.normalise_weights``.

The best checkpoint is the validation with the highest ``select_on`` metric among those that
do not report ``"plausible": 0`` (``hpc_modatts.train.guards``: a model whose masks are
implausible is never selected, whatever its Dice).

``validate`` runs on EVERY rank inside ``torch.no_grad()`` with every model in eval mode
(ZeRO-3 needs all ranks for a forward). The trainer keeps rank 0's result (broadcast), so
the best-checkpoint decision is the same on every rank; a task that shards its validation
cases over ranks reduces them itself (``hpc_modatts.distributed.all_reduce_mean``).

Optional members (defaults in ``TaskDefaults``; a task need not inherit from it)::

    select_on: str                       # the validation metric the best checkpoint maximises
    frozen: set[str]                     # models built but not optimised (no engine), eval mode
    collate(samples) -> batch            # DataLoader collate_fn (default: torch's)
    batch_ids(batch) -> list[str]        # case names for the NaN message (default: data.batches.case_ids)
    model_factory(name) -> (str, dict) | None
        # "package.module:function" and kwargs that rebuild model ``name`` for inference;
        # stored in best_model.pt so ``load_best_model(run_dir, name)`` needs no build_fn.
    on_epoch_start(epoch) -> None        # e.g. to re-draw pseudo-target pairs
    wants_more_steps(best) -> bool       # with train.extend_fraction: is the best validation so far
                                         # (its metrics, {} when none) not good enough yet?
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from hpc_modatts.data.batches import case_ids


@runtime_checkable
class Task(Protocol):
    """One training stage: models, data, a step and a metric; the Trainer owns the loop."""

    @property
    def name(self) -> str:
        """The stage's name in logs, the progress bar, checkpoints and the DONE marker."""
        ...

    def build(self, env: Any) -> dict[str, nn.Module]:
        """Build the models (on CPU; the trainer moves them and wraps them in engines)."""
        ...

    def train_dataset(self) -> torch.utils.data.Dataset:
        """The training dataset; the trainer samples it with a deterministic RankSampler."""
        ...

    def train_step(self, batch: Any, engines: dict[str, Any], step: int) -> dict[str, Any]:
        """Losses, ``engine.backward`` and ``engine.step`` for one batch; return the loss terms."""
        ...

    def validate(self, engines: dict[str, Any], env: Any) -> dict[str, float] | None:
        """Validation metrics containing the ``select_on`` metric (higher is better), or None."""
        ...


class TaskDefaults:
    """Defaults of the optional Task members; inherit to get them (not required)."""

    select_on: str = "dice"
    frozen: set[str] = set()

    collate = None

    def batch_ids(self, batch: Any) -> list[str]:
        return case_ids(batch)

    def model_factory(self, name: str) -> tuple[str, dict] | None:
        return None

    def on_epoch_start(self, epoch: int) -> None:
        return None

    def wants_more_steps(self, best: dict[str, float]) -> bool:
        return False


def task_batch_ids(task: Any, batch: Any) -> list[str]:
    fn = getattr(task, "batch_ids", None)
    return list(fn(batch)) if callable(fn) else case_ids(batch)


def task_frozen(task: Any) -> set[str]:
    return set(getattr(task, "frozen", None) or ())


def task_wants_more_steps(task: Any, best: dict[str, float]) -> bool:
    fn = getattr(task, "wants_more_steps", None)
    return bool(fn(best)) if callable(fn) else False


def task_collate(task: Any):
    return getattr(task, "collate", None)


def task_model_factory(task: Any, name: str) -> tuple[str, dict] | None:
    fn = getattr(task, "model_factory", None)
    return fn(name) if callable(fn) else None


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``; other values are kept."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def loss_value(value: Any) -> float:
    """A logged loss term as a Python float (tensors are detached)."""
    if torch.is_tensor(value):
        return float(value.detach().float().item())
    return float(value)
