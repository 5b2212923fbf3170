"""THE training loop shared by every stage (see ``hpc_modatts.train.task`` for the Task side).

``Trainer(cfg, task, run_dir).fit()``:

1. ``init_distributed`` (any launcher), seed, ``task.build(env)``, one DeepSpeed engine per
   optimised model (models in ``task.frozen`` stay plain modules in eval mode).
2. Deterministic sampling: ``RankSampler(len, seed, rank, world, num_samples)`` re-drawn per
   epoch; the micro batch per rank is ``train.batch_size // world_size``.
3. Each step: ``task.train_step`` (forward, backward and step inside ``autocast_context`` when
   the engines train in bf16), loss terms averaged over ranks, NaN/Inf -> ``step_health.TrainingDiverged``,
   steps DeepSpeed skipped on non-finite gradients -> a warning and ``train/skipped_steps``,
   metrics.jsonl/TensorBoard every ``log_every`` steps, rich progress bar on rank 0.
4. Validation every ``val_every`` steps (0 = each epoch) and at the end, RNG-neutral (the RNG
   states are restored afterwards, so validation never changes training); then the ``latest``
   checkpoint, and ``best`` + ``best_model.pt`` when the score improved among plausible validations
   (a validation the guards call implausible is never a candidate).
5. Resume: when ``train.resume`` and ``checkpoints/latest`` exists, engines, optimiser, RNG
   states, counters and the position inside the epoch are restored, so the run continues
   exactly as if it had never stopped (bit-exact on CPU with ``data.num_workers: 0``; with
   workers, exact when the dataset seeds its augmentation per sample). A damaged ``latest``
   falls back to the newest checkpoint that loads (``checkpoint.choose_resume_tag``);
   metrics.jsonl keeps only the lines up to the resumed step (none on a fresh start).
6. The DONE marker (``hpc_modatts.runs.mark_done``) with the best score and ``plausible``: false when
   every validation was implausible (the final model is then the last step's, not a selected one).
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from hpc_modatts.config import ConfigError, ExperimentConfig
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.loaders import RankSampler, make_loader
from hpc_modatts.distributed.engine import autocast_context, build_engine
from hpc_modatts.distributed.engine import unwrap as unwrap_model
from hpc_modatts.distributed.env import DistEnv, all_reduce_mean, barrier, broadcast_object, init_distributed
from hpc_modatts.models.layout import to_channels_last
from hpc_modatts.runs import DONE, mark_done, prepare_run_dir
from hpc_modatts.train import checkpoint as ckpt
from hpc_modatts.train.best_model import save_best_model
from hpc_modatts.train.metrics_log import MetricsLog
from hpc_modatts.train.selection import BestValidation
from hpc_modatts.train.step_health import SkippedSteps, raise_diverged
from hpc_modatts.train.task import (
    Task,
    loss_value,
    move_to_device,
    task_batch_ids,
    task_collate,
    task_frozen,
    task_model_factory,
    task_wants_more_steps,
)

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One loop for every stage: ``Trainer(cfg, task, run_dir).fit() -> run_dir``."""

    def __init__(
        self, cfg: ExperimentConfig, task: Task, run_dir: str | Path, env: DistEnv | None = None, marker: str = DONE
    ) -> None:
        # marker: the file fit() writes at the end (another name when the stage has more to do after it)
        self.cfg, self.task, self.run_dir, self._env, self.marker = cfg, task, Path(run_dir), env, marker
        self.engines: dict[str, Any] = {}
        self.frozen_models: dict[str, torch.nn.Module] = {}
        self.step = self.epoch = self.pos = 0
        # the best checkpoint maximises task.select_on (default "dice") among plausible validations
        self.best = BestValidation(select_on=getattr(task, "select_on", "dice"))
        self.last_saved = -1
        self.last_validated = -1  # checkpoint_every saves without validating
        self.skipped = SkippedSteps()  # optimiser steps DeepSpeed skipped, all engines
        self._metrics: MetricsLog | None = None

    @property
    def env(self) -> DistEnv:
        """This process's place in the world: given to the constructor, else set when ``fit`` starts."""
        if self._env is None:
            raise RuntimeError("Trainer.env is only known once fit() has initialised the process group")
        return self._env

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        cfg = self.cfg
        if self._env is None:
            self._env = init_distributed(cfg.distributed)
        if cfg.train.batch_size % self.env.world_size:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} is not divisible by the {self.env.world_size} ranks"
            )
        self.micro = cfg.train.batch_size // self.env.world_size
        self._metrics = MetricsLog(self.run_dir, self.env.is_main)
        if self.env.is_main:
            prepare_run_dir(self.run_dir, cfg)
        barrier()
        seed_everything(cfg.train.seed)  # identical initial weights on every rank
        models = self.task.build(self.env)
        frozen = task_frozen(self.task)
        for name, model in models.items():
            if name in frozen:
                self.frozen_models[name] = model.to(self.env.device).eval().requires_grad_(False)
            else:
                self.engines[name] = build_engine(
                    model, cfg.optim.for_engine(name), cfg.distributed, self.env, self.micro, name
                )
        if not self.engines:
            raise ConfigError(f"task {self.task.name}: every model is frozen, nothing to train")
        self.all_models = {**self.frozen_models, **self.engines}
        if cfg.model.channels_last and cfg.distributed.zero_stage == 0:
            # after deepspeed.initialize (its parameter broadcast views tensors as bytes, which needs
            # contiguous ones); ZeRO 1-3 keep parameters as views of flat buffers: left as they are
            for m in self.all_models.values():
                to_channels_last(unwrap_model(m))
        self.bf16 = any(e.torch_autocast_enabled() for e in self.engines.values())
        seed_everything(cfg.train.seed + 7919 * self.env.rank)  # per-rank noise in steps
        self.dataset = self.task.train_dataset()
        n = len(self.dataset)
        spe = cfg.train.steps_per_epoch
        # deterministic per (seed, epoch, rank), resumable by position
        num_samples = spe * cfg.train.batch_size if spe else None
        self.sampler = RankSampler(n, cfg.train.seed, self.env.rank, self.env.world_size, num_samples=num_samples)
        self.steps_per_epoch = self.sampler.per_rank // self.micro
        if spe:
            self.steps_per_epoch = min(self.steps_per_epoch, spe)
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"task {self.task.name}: {n} training items give no full batch of "
                f"{self.micro} per rank on {self.env.world_size} ranks"
            )
        total = cfg.train.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
        self.extend_limit = min(total, self.total_steps + round(cfg.train.extend_fraction * self.total_steps))
        if cfg.train.extend_fraction and (not cfg.train.val_every or cfg.optim.decay != "constant"):
            # it grows the schedule val_every steps at a time; a decaying lr would need the final length
            raise ConfigError(
                f"task {self.task.name}: train.extend_fraction={cfg.train.extend_fraction} needs train.val_every > 0 "
                f"and optim.decay=constant (got {cfg.train.val_every}, {cfg.optim.decay})"
            )

    def _loader(self) -> DataLoader:
        """This epoch's loader on the rank's indices, skipping the batches already trained."""
        self.sampler.set_epoch(self.epoch)
        self.sampler.position = self.pos * self.micro  # the trainer's counters are the truth
        loader = make_loader(self.dataset, self.micro, self.sampler, self.cfg.data.num_workers, drop_last=True)
        # the loader's worker base seed comes from this generator, not from the global RNG,
        # so creating the iterator mid-epoch (resume) leaves the training RNG untouched
        loader.generator = torch.Generator().manual_seed(
            self.cfg.train.seed * 1_000_003 + self.epoch * 7919 + self.env.rank
        )
        collate = task_collate(self.task)
        if collate is not None:
            loader.collate_fn = collate
        return loader

    # ------------------------------------------------------------------ state
    def _trainer_state(self) -> dict:
        sampler_state = self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else {}
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.pos,
            **self.best.state(),
            "sampler": sampler_state,
            "task": self.task.name,
            "validated": self.last_validated == self.step,
            "total_steps": self.total_steps,
        }

    def _choose_tag(self) -> tuple[str | None, str | None]:
        """(tag to resume from, None) or (None, error line); rank 0 decides for every rank."""
        if not self.env.is_main:
            return None, None
        try:
            tag = ckpt.choose_resume_tag(self.run_dir, list(self.engines)) if self.cfg.train.resume else None
        except DataError as e:
            return None, str(e)
        ckpt.prune_checkpoints(self.run_dir)  # half-written folders of a killed save
        if tag is None:
            self.metrics.truncate(0)  # a fresh start: no line of an earlier attempt stays
        return tag, None

    def _resume(self) -> None:
        tag, error = broadcast_object(self._choose_tag())
        if error is not None:
            raise DataError(error)
        barrier()
        if tag is None:
            return
        state = ckpt.load_checkpoint(self.run_dir, tag, self.engines, self.env)
        self.step, self.epoch, self.pos = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best.load(state)
        self.last_saved = self.step
        self.last_validated = self.step if state.get("validated", True) else -1
        # a run that had extended its schedule goes on to where it had decided to (train.extend_fraction)
        self.total_steps = max(self.total_steps, min(int(state.get("total_steps") or 0), self.extend_limit))
        if state.get("sampler") and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])
        if self.env.is_main:
            self.metrics.truncate(self.step)
            self._log({"event": "resume", "step": self.step, "epoch": self.epoch, "tag": tag})

    # ------------------------------------------------------------------ logging
    @property
    def metrics(self) -> MetricsLog:
        """metrics.jsonl (rank 0 writes): set when ``fit`` starts, once the rank is known."""
        if self._metrics is None:
            raise RuntimeError("Trainer.metrics is only known once fit() has started")
        return self._metrics

    def _log(self, record: dict) -> None:
        self.metrics.write(record, self.step)

    # ------------------------------------------------------------------ one step
    def _train_step(self, batch: Any) -> dict[str, float]:
        device_batch = move_to_device(batch, self.env.device)
        for name, e in self.engines.items():
            e.train()
            # the lr is a function of the step (optim.decay): set, not stepped, so resume needs no state
            lr = self.cfg.optim.for_engine(name).lr_at(self.step, self.total_steps)
            for group in e.optimizer.param_groups:
                group["lr"] = lr
        with autocast_context(self.bf16, self.env.device):
            raw = self.task.train_step(device_batch, {**self.all_models}, self.step)
        local = {k: loss_value(v) for k, v in raw.items()}
        mean = all_reduce_mean(local)
        if not all(math.isfinite(v) for v in mean.values()):
            raise_diverged(self.step, local, lambda: task_batch_ids(self.task, batch))
        self.skipped.check(self.engines, self.step)  # the running count goes to metrics.jsonl
        return mean

    # ------------------------------------------------------------------ validation
    def _validate_and_save(self) -> None:
        """Validate (RNG-neutral), then write latest (and best) checkpoints."""
        if self.last_validated == self.step:
            return
        metrics = self._validate()
        self.last_validated = self.step
        improved = metrics is not None and self.best.consider(metrics, self.step, self.task.name)
        if self.last_saved != self.step:
            ckpt.save_checkpoint(
                self.run_dir, self.step, self.engines, self._trainer_state(), self.cfg, self.env, best=improved
            )
        elif improved:  # this step's checkpoint exists already (checkpoint_every): never rewrite it
            ckpt.point_best(self.run_dir, self.step, self.env)
        if improved:
            self._save_best_model()
        self.last_saved = self.step

    def _save_latest(self) -> None:
        """Write the latest checkpoint without validating (``train.checkpoint_every``)."""
        if self.last_saved == self.step:
            return
        ckpt.save_checkpoint(
            self.run_dir, self.step, self.engines, self._trainer_state(), self.cfg, self.env, best=False
        )
        self.last_saved = self.step

    def _validate(self) -> dict | None:
        states = ckpt.rng_state()
        for m in self.all_models.values():
            m.eval()
        with torch.no_grad(), autocast_context(self.bf16, self.env.device):
            metrics = self.task.validate({**self.all_models}, self.env)
        for e in self.engines.values():
            e.train()
        ckpt.set_rng_state(states)
        metrics = broadcast_object(metrics)
        if metrics is None:
            return None
        if self.best.select_on not in metrics:
            raise ValueError(
                f"task {self.task.name}: validate() must return its selection metric "
                f"{self.best.select_on!r}, got {sorted(metrics)}"
            )
        metrics = {k: float(v) for k, v in metrics.items()}
        self._log({"step": self.step, "epoch": self.epoch, **{f"val/{k}": v for k, v in metrics.items()}})
        return metrics

    def _save_best_model(self) -> None:
        factories = {name: task_model_factory(self.task, name) for name in self.engines}
        save_best_model(
            self.run_dir,
            self.engines,
            self.cfg,
            factories,
            self.step,
            self.best.score_or_none,
            self.task.name,
        )

    # ------------------------------------------------------------------ loop
    def _finished(self) -> bool:
        return self.step >= self.total_steps or self.epoch >= self.cfg.train.epochs

    def _extend(self) -> bool:
        """``train.extend_fraction``: at the end of the schedule, validate, then add ``val_every`` more
        steps when the task finds the best validation not good enough and the budget allows."""
        if self.step >= self.extend_limit or self.epoch >= self.cfg.train.epochs:
            return False
        self._validate_and_save()
        if not task_wants_more_steps(self.task, self.best.metrics):
            return False
        self.total_steps = min(self.step + self.cfg.train.val_every, self.extend_limit)
        log.info(
            "%s: best validation not good enough at step %d, training on to step %d",
            self.task.name,
            self.step,
            self.total_steps,
        )
        self._log({"event": "extend", "step": self.step, "total_steps": self.total_steps})
        return True

    def _run_epoch(self, progress: Any, bar: Any) -> None:
        val_every, log_every = self.cfg.train.val_every, self.cfg.train.log_every
        ckpt_every = self.cfg.train.checkpoint_every
        decays = self.cfg.optim.decay != "constant"
        if self.pos == 0 and hasattr(self.task, "on_epoch_start"):
            self.task.on_epoch_start(self.epoch)
        for batch in self._loader():
            if self.pos >= self.steps_per_epoch or self.step >= self.total_steps:
                break
            losses = self._train_step(batch)
            self.step += 1
            self.pos += 1
            progress.update(bar, completed=self.step, description=f"{self.task.name} ep {self.epoch}")
            if self.step % log_every == 0:
                self._log(
                    {
                        "step": self.step,
                        "epoch": self.epoch,
                        **{f"train/{k}": v for k, v in losses.items()},
                        **({"train/skipped_steps": self.skipped.total} if self.skipped.total else {}),
                        **({"train/lr": self.cfg.optim.lr_at(self.step - 1, self.total_steps)} if decays else {}),
                    }
                )
            if val_every and self.step % val_every == 0:
                self._validate_and_save()
            elif ckpt_every and self.step % ckpt_every == 0:
                self._save_latest()
            if self.pos >= self.steps_per_epoch or self.step >= self.total_steps:
                break
        if self.step < self.total_steps or self.pos >= self.steps_per_epoch:  # epoch consumed
            self.epoch, self.pos = self.epoch + 1, 0
            if not val_every:
                self._validate_and_save()

    def fit(self) -> Path:
        """Train (or resume) to the end of the schedule; return the run folder."""
        self._setup()
        self._resume()
        self.skipped.reset(self.engines)  # the engines' counters came back with the checkpoint
        self.metrics.open_tensorboard()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, disable=not self.env.is_main) as progress:
            bar = progress.add_task(self.task.name, total=self.total_steps, completed=self.step)
            while True:
                while not self._finished():
                    self._run_epoch(progress, bar)
                if not self._extend():
                    break
                progress.update(bar, total=self.total_steps)
        self._validate_and_save()  # the final state, when the schedule ended between validations
        # no validation (a task without one), or none plausible: the final model is the one to use;
        # in the second case the run says so (DONE "plausible": false, the evaluate table marks it)
        plausible = self.best.found or self.best.implausible == 0
        if not plausible:
            log.warning(
                "%s: all %d validation(s) implausible (guards): the final model is the last step's, not a selected one",
                self.task.name,
                self.best.implausible,
            )
        if self.best.step < 0:
            self.best.step = self.step
            self._save_best_model()
        self.metrics.close()
        if self.env.is_main:
            mark_done(
                self.run_dir,
                self.marker,
                task=self.task.name,
                steps=self.step,
                best_step=self.best.step,
                select_on=self.best.select_on,
                best_score=self.best.score_or_none,
                plausible=plausible,
            )
        barrier()
        return self.run_dir
