"""The shared Trainer with a real DeepSpeed engine (world of 1, gloo, CPU) and a toy Task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpc_modatts.config import ConfigError, ExperimentConfig, config_from_dict
from hpc_modatts.data.errors import DataError
from hpc_modatts.train.best_model import load_best_model
from hpc_modatts.train.checkpoint import read_pointer
from hpc_modatts.train.step_health import TrainingDiverged
from hpc_modatts.train.task import Task
from hpc_modatts.train.trainer import Trainer
from tests.toy_task import ToyTask, toy_net


def make_cfg(run_dir: Path, decay: str = "constant", **train) -> ExperimentConfig:
    base = {"epochs": 2, "batch_size": 2, "val_every": 3, "log_every": 1, "seed": 3}
    optim = {"lr": 1e-2, "decay": decay}
    return config_from_dict(
        {"name": run_dir.name, "run_root": str(run_dir.parent), "optim": optim, "train": {**base, **train}}
    )


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.engines["gen"].module.state_dict().items()}


def test_toy_task_satisfies_protocol():
    assert isinstance(ToyTask(), Task)


def test_fit_writes_checkpoints_metrics_best_model_and_done(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(make_cfg(run), ToyTask(), run)
    assert trainer.fit() == run
    assert trainer.step == 8  # 8 items / batch 2 = 4 steps per epoch, 2 epochs
    assert (run / "config.yaml").is_file()
    latest, best = read_pointer(run, "latest"), read_pointer(run, "best")
    assert latest == "step_00000008" and best is not None
    assert (run / "checkpoints" / latest / "gen").is_dir()
    assert (run / "checkpoints" / latest / "config.yaml").is_file()
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert kept == sorted({latest, best})  # older tags were pruned
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/dice" in r] == list(range(1, 9))
    val = [r for r in records if "val/dice" in r]
    assert [r["step"] for r in val] == [3, 6, 8]
    done = json.loads((run / "DONE").read_text())
    assert done["best_score"] == pytest.approx(max(r["val/dice"] for r in val))
    model, cfg = load_best_model(run, "gen")  # through the factory the task recorded
    assert cfg.train.seed == 3
    payload = torch.load(run / "best_model.pt", weights_only=False)
    assert payload["step"] == done["best_step"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, payload["models"]["gen"][k])
    model2, _ = load_best_model(run, build_fn=lambda c: toy_net())
    assert not model2.training


def test_load_best_model_without_finished_run_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no best_model.pt"):
        load_best_model(tmp_path, "gen", build_fn=lambda c: toy_net())


def test_kill_and_resume_is_bit_exact(tmp_path):
    full = Trainer(make_cfg(tmp_path / "full"), ToyTask(), tmp_path / "full")
    full.fit()
    run = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):  # killed during step 5; latest = step 3 (mid-epoch 0)
        Trainer(make_cfg(run), ToyTask(fail_at_step=5), run).fit()
    assert read_pointer(run, "latest") == "step_00000003"
    assert not (run / "DONE").exists()
    resumed = Trainer(make_cfg(run), ToyTask(), run)
    resumed.fit()
    assert resumed.step == 8
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics of the killed attempt after step 3 were dropped, then re-logged once
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if "train/dice" in x]
    assert steps == list(range(1, 9))


def test_poly_decay_sets_each_steps_lr_and_a_killed_run_resumes_bit_exact(tmp_path):
    full = Trainer(make_cfg(tmp_path / "full", decay="poly"), ToyTask(), tmp_path / "full")
    full.fit()
    records = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["train/lr"] for r in records if "train/lr" in r]
    assert lrs == pytest.approx([1e-2 * (1 - s / 8) ** 0.9 for s in range(8)])  # step s of 8 (0-based)
    assert full.engines["gen"].optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * (1 / 8) ** 0.9)
    constant = Trainer(make_cfg(tmp_path / "constant"), ToyTask(), tmp_path / "constant")
    constant.fit()
    assert any(not torch.equal(a, b) for a, b in zip(weights(full).values(), weights(constant).values()))
    run = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):  # killed during step 5; latest = step 3
        Trainer(make_cfg(run, decay="poly"), ToyTask(fail_at_step=5), run).fit()
    resumed = Trainer(make_cfg(run, decay="poly"), ToyTask(), run)
    resumed.fit()
    a, b = weights(full), weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_max_steps_continues_the_schedule(tmp_path):
    full = Trainer(make_cfg(tmp_path / "full", val_every=0), ToyTask(), tmp_path / "full")
    full.fit()
    run = tmp_path / "short"
    Trainer(make_cfg(run, val_every=0, max_steps=2), ToyTask(), run).fit()
    resumed = Trainer(make_cfg(run, val_every=0), ToyTask(), run)
    resumed.fit()
    a, b = weights(full), weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_loss_stops_with_step_term_and_cases(tmp_path):
    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged) as err:
        Trainer(make_cfg(run, val_every=0), ToyTask(nan_case="case05"), run).fit()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("step ") and "loss term 'dice' is nan" in msg
    assert "case05" in msg and msg.endswith(")")
    step = int(msg.split()[1].rstrip(":"))
    assert 0 <= step < 4  # case05 is drawn once in the first epoch
    assert not (run / "DONE").exists()


def test_task_without_validation_saves_final_model(tmp_path):
    run = tmp_path / "noval"
    Trainer(make_cfg(run, epochs=1), ToyTask(validation=False), run).fit()
    done = json.loads((run / "DONE").read_text())
    assert done["best_score"] is None and done["best_step"] == 4
    model, _ = load_best_model(run, None, build_fn=lambda c: toy_net())
    assert sum(p.numel() for p in model.parameters()) > 0


def test_no_plausible_validation_keeps_the_last_model_and_says_so(tmp_path, caplog):
    """Every validation rejected by the guards: no checkpoint is selected, the final model is the
    last step's and DONE records ``plausible: false`` (the evaluate table marks the row)."""
    run = tmp_path / "implausible"
    with caplog.at_level("WARNING", logger="hpc_modatts.train.trainer"):
        Trainer(make_cfg(run), ToyTask(implausible=True), run).fit()
    done = json.loads((run / "DONE").read_text())
    assert done["plausible"] is False and done["best_score"] is None and done["best_step"] == 8
    assert read_pointer(run, "best") is None
    assert torch.load(run / "best_model.pt", weights_only=False)["step"] == 8
    assert any("all 3 validation(s) implausible" in r.getMessage() for r in caplog.records)
    ok = tmp_path / "ok"
    Trainer(make_cfg(ok), ToyTask(), ok).fit()
    assert json.loads((ok / "DONE").read_text())["plausible"] is True


def test_deepspeed_config_always_sets_clipping_and_follows_the_typed_config():
    from types import SimpleNamespace

    from hpc_modatts.config import DistributedConfig, OptimConfig
    from hpc_modatts.distributed.engine import deepspeed_config

    cpu = SimpleNamespace(device=torch.device("cpu"), world_size=2)
    cfg = deepspeed_config(OptimConfig(), DistributedConfig(zero_stage=3, offload_optimizer=True), cpu, 2)
    assert cfg["gradient_clipping"] == 0.0  # DeepSpeed's default would be 1.0
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["train_batch_size"] == 4 and cfg["train_micro_batch_size_per_gpu"] == 2
    assert "torch_autocast" not in cfg  # auto precision = fp32 on CPU
    cuda = SimpleNamespace(device=torch.device("cuda", 0), world_size=1)
    cfg = deepspeed_config(OptimConfig(grad_clip=2.5), DistributedConfig(), cuda, 1)
    assert cfg["gradient_clipping"] == 2.5 and cfg["torch_autocast"]["dtype"] == "bfloat16"
    assert "offload_optimizer" not in cfg["zero_optimization"]


def test_bf16_autocast_trains_with_fp32_master_weights(tmp_path):
    run = tmp_path / "bf16"
    cfg = make_cfg(run, epochs=1, val_every=0)
    cfg.distributed.precision = "bf16"
    trainer = Trainer(cfg, ToyTask(), run)
    torch.manual_seed(3)  # the trainer seeds with train.seed=3 before building: same initial weights
    before = {k: v.clone() for k, v in toy_net().state_dict().items()}
    trainer.fit()
    engine = trainer.engines["gen"]
    assert engine.torch_autocast_enabled()
    after = engine.module.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_every_bounds_lost_work_and_resume_stays_exact(tmp_path):
    """A preempted job resumes from the last checkpoint_every step, not the last validation."""
    full = Trainer(make_cfg(tmp_path / "full", val_every=0), ToyTask(), tmp_path / "full")
    full.fit()
    run = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):  # killed during step 3; no validation yet (per epoch of 4)
        Trainer(make_cfg(run, val_every=0, checkpoint_every=2), ToyTask(fail_at_step=3), run).fit()
    assert read_pointer(run, "latest") == "step_00000002" and read_pointer(run, "best") is None
    resumed = Trainer(make_cfg(run, val_every=0, checkpoint_every=2), ToyTask(), run)
    resumed.fit()
    assert resumed.step == 8 and read_pointer(run, "best") is not None
    a, b = weights(full), weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    done_resumed, done_full = (json.loads((d / "DONE").read_text()) for d in (run, tmp_path / "full"))
    assert done_resumed["best_score"] == done_full["best_score"]


class PickyTask(ToyTask):
    """Wants more steps while the best validation Dice is below ``until``; records what it was shown."""

    def __init__(self, until: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.until, self.seen = until, []

    def wants_more_steps(self, best: dict) -> bool:
        self.seen.append(dict(best))
        return best.get("dice", 0.0) < self.until


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_extend_fraction_trains_on_while_the_task_wants_more_exactly_like_a_longer_run(tmp_path):
    longer = Trainer(make_cfg(tmp_path / "longer", val_every=2, max_steps=8), ToyTask(), tmp_path / "longer")
    longer.fit()
    val = {r["step"]: r["val/dice"] for r in records(tmp_path / "longer") if "val/dice" in r}
    run, task = tmp_path / "extended", PickyTask(until=1.1)  # never good enough: the whole budget
    extended = Trainer(make_cfg(run, val_every=2, max_steps=4, extend_fraction=1.0), task, run)
    extended.fit()
    assert extended.step == 8
    # asked at the end of the schedule and of each extension, with the best validation so far
    assert [s["dice"] for s in task.seen] == [max(val[2], val[4]), max(val[2], val[4], val[6])]
    assert [(r["step"], r["total_steps"]) for r in records(run) if r.get("event") == "extend"] == [(4, 6), (6, 8)]
    assert {r["step"]: r["val/dice"] for r in records(run) if "val/dice" in r} == val
    a, b = weights(longer), weights(extended)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((run / "DONE").read_text())["steps"] == 8
    content = PickyTask(until=0.0)  # good enough at once: the planned schedule
    run = tmp_path / "content"
    assert Trainer(make_cfg(run, val_every=2, max_steps=4, extend_fraction=1.0), content, run).fit()
    assert json.loads((run / "DONE").read_text())["steps"] == 4 and len(content.seen) == 1


def test_a_killed_extended_run_resumes_to_the_extended_schedule_bit_exact(tmp_path):
    longer = Trainer(make_cfg(tmp_path / "longer", val_every=2, max_steps=8), ToyTask(), tmp_path / "longer")
    longer.fit()
    val = {r["step"]: r["val/dice"] for r in records(tmp_path / "longer") if "val/dice" in r}
    cfg = {"val_every": 2, "max_steps": 4, "extend_fraction": 1.0, "checkpoint_every": 1}
    inside = tmp_path / "inside"  # killed during step 8, inside the extension 6 -> 8; latest = step 7
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_cfg(inside, **cfg), PickyTask(1.1, fail_at_step=7), inside).fit()
    assert read_pointer(inside, "latest") == "step_00000007"
    # the checkpoint holds the extended schedule: a task content at once still trains to step 8
    resumed = Trainer(make_cfg(inside, **cfg), PickyTask(until=0.0), inside)
    resumed.fit()
    boundary = tmp_path / "boundary"  # killed during step 7: latest = step 6, saved before extending
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_cfg(boundary, **cfg), PickyTask(1.1, fail_at_step=6), boundary).fit()
    assert read_pointer(boundary, "latest") == "step_00000006"
    task = PickyTask(1.1)  # the decision is made again, from the best validation the checkpoint kept
    again = Trainer(make_cfg(boundary, **cfg), task, boundary)
    again.fit()
    assert task.seen[0]["dice"] == max(val[2], val[4], val[6])
    for run in (resumed, again):
        assert run.step == 8
        a, b = weights(longer), weights(run)
        for k in a:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("train, decay", [({"val_every": 0}, "constant"), ({"val_every": 2}, "poly")])
def test_extend_fraction_needs_validations_and_a_constant_lr(tmp_path, train, decay):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="extend_fraction"):
        Trainer(make_cfg(run, decay=decay, max_steps=4, extend_fraction=1.0, **train), PickyTask(1.1), run).fit()
