"""Resume under damaged, missing and hostile checkpoint files (issue 10: causes 3, 7, 8 and the
missing-RNG warning), with the real Trainer, a real DeepSpeed engine and the toy task.

One killed run is shared (copied per test): checkpoints at steps 1, 2 (validated: ``best``) and
3 (``latest``), killed during step 4 of 8. A resume from a fallback must still end bit-exact
with an uninterrupted run, and log every step once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from hpc_modatts.config import config_from_dict
from hpc_modatts.data.errors import DataError
from hpc_modatts.train.checkpoint import read_pointer
from hpc_modatts.train.trainer import Trainer
from tests.toy_task import ToyTask

pytestmark = pytest.mark.reliability

STEP2, STEP3 = "step_00000002", "step_00000003"


class Exploit:
    """Pickles as a call of ``os.system``: loading it with a full unpickler runs a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def make_cfg(run: Path):
    return config_from_dict(
        {
            "name": run.name,
            "run_root": str(run.parent),
            "optim": {"lr": 1e-2},
            "train": {"epochs": 2, "batch_size": 2, "val_every": 2, "checkpoint_every": 1, "log_every": 1, "seed": 3},
        }
    )


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.engines["gen"].module.state_dict().items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    full = Trainer(make_cfg(root / "full"), ToyTask(), root / "full")
    full.fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_cfg(root / "killed"), ToyTask(fail_at_step=3), root / "killed").fit()
    assert read_pointer(root / "killed", "latest") == STEP3 and read_pointer(root / "killed", "best") == STEP2
    return {"full": weights(full), "killed": root / "killed"}


@pytest.fixture
def killed(runs, tmp_path) -> Path:
    run = tmp_path / "killed"
    shutil.copytree(runs["killed"], run)
    return run


def ckpt(run: Path, tag: str) -> Path:
    return run / "checkpoints" / tag


def resume(run: Path) -> Trainer:
    trainer = Trainer(make_cfg(run), ToyTask(), run)
    trainer.fit()
    return trainer


def train_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln)["step"] for ln in lines if "train/dice" in ln]  # every line parses


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def add_exploit(path: Path, marker: Path) -> None:
    obj = torch.load(path, weights_only=False)
    obj["x"] = Exploit(marker)
    torch.save(obj, path)


def edit_trainer_json(run: Path, **values) -> None:
    path = ckpt(run, STEP3) / "trainer.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


MODEL_STATES = Path("gen") / "mp_rank_00_model_states.pt"
DAMAGE = {  # name: (damage(run, marker), tag resumed from)
    "model states truncated": (lambda r, m: truncate(ckpt(r, STEP3) / MODEL_STATES), STEP2),
    "model states zeroed": (
        lambda r, m: (ckpt(r, STEP3) / MODEL_STATES).write_bytes(bytes((ckpt(r, STEP3) / MODEL_STATES).stat().st_size)),
        STEP2,
    ),
    "model states garbage": (lambda r, m: (ckpt(r, STEP3) / MODEL_STATES).write_bytes(os.urandom(5000)), STEP2),
    "rng file truncated": (lambda r, m: truncate(ckpt(r, STEP3) / "rng_rank0.pt"), STEP2),
    "trainer.json not JSON": (lambda r, m: (ckpt(r, STEP3) / "trainer.json").write_text('{"step": 3,'), STEP2),
    "trainer.json missing": (lambda r, m: (ckpt(r, STEP3) / "trainer.json").unlink(), STEP2),
    "trainer.json best_metrics not numbers": (lambda r, m: edit_trainer_json(r, best_metrics={"dice": "1"}), STEP2),
    "latest names a missing step": (lambda r, m: (r / "checkpoints" / "latest").write_text("step_00000009\n"), STEP3),
    "code pickled in the rng file": (lambda r, m: torch.save(Exploit(m), ckpt(r, STEP3) / "rng_rank0.pt"), STEP2),
    "code pickled in DeepSpeed's model states": (lambda r, m: add_exploit(ckpt(r, STEP3) / MODEL_STATES, m), STEP2),
    "half-written last metrics line": (
        lambda r, m: open(r / "metrics.jsonl", "a").write('{"step": 4, "train/di'),
        STEP3,
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_falls_back_to_the_newest_loadable_checkpoint(killed, runs, tmp_path, caplog, damage):
    marker = tmp_path / "code-ran"
    fn, expected = DAMAGE[damage]
    fn(killed, marker)
    with caplog.at_level(logging.WARNING):
        trainer = resume(killed)
    assert not marker.exists(), "a checkpoint file ran code"
    resumed = [json.loads(ln) for ln in (killed / "metrics.jsonl").read_text().splitlines() if '"resume"' in ln]
    assert [r["tag"] for r in resumed] == [expected]
    if expected != STEP3:  # said so, and the damaged checkpoint was kept aside, not deleted
        assert any("falling back to " + expected in r.getMessage() for r in caplog.records)
        assert [p.name.split("-")[1] for p in (killed / "checkpoints").glob("damaged-*")] == [STEP3]
    assert trainer.step == 8 and train_steps(killed) == list(range(1, 9))
    for k, v in runs["full"].items():  # bit-exact with the uninterrupted run
        assert torch.equal(v, weights(trainer)[k]), k


def test_resume_refuses_when_no_checkpoint_loads_and_deletes_nothing(killed):
    for tag in (STEP2, STEP3):
        truncate(ckpt(killed, tag) / MODEL_STATES)
    before = sorted(p.name for p in (killed / "checkpoints").iterdir())
    metrics = (killed / "metrics.jsonl").read_text()
    with pytest.raises(DataError, match="no checkpoint of .* loads") as err:
        resume(killed)
    assert "\n" not in str(err.value) and "latest" in str(err.value)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == before
    assert (killed / "metrics.jsonl").read_text() == metrics


def test_resume_without_the_rng_file_warns_that_it_is_not_exact(killed, caplog):
    (ckpt(killed, STEP3) / "rng_rank0.pt").unlink()
    with caplog.at_level(logging.WARNING):
        trainer = resume(killed)
    assert trainer.step == 8 and train_steps(killed) == list(range(1, 9))
    assert any(
        "rng_rank0.pt is missing" in r.getMessage() and "NOT bit-exact" in r.getMessage() for r in caplog.records
    )
