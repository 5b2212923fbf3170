"""Files are data, never code (issue 10, cause 3): a best_model.pt, an init_from run, a translator
checkpoint or a submitit result named in pipeline.json that would run a command when unpickled
or imported is refused with one line, and the command never runs."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from hpc_modatts.config import ExperimentConfig, config_to_dict
from hpc_modatts.data.errors import DataError
from hpc_modatts.pipeline.status import pipeline_status
from hpc_modatts.runs import mark_done
from hpc_modatts.train.best_model import load_best_model

pytestmark = pytest.mark.reliability


class Exploit:
    """Pickles as a call of ``os.system``: a full unpickler runs the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def best_model(run: Path, models, factories=None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "models": models,
            "factories": factories or {},
            "config": config_to_dict(ExperimentConfig()),
            "step": 1,
            "dice": 0.5,
            "task": "segment",
        },
        run / "best_model.pt",
    )
    mark_done(run)
    return run


def test_factory_outside_the_allow_list_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    run = best_model(tmp_path / "run", {"gen": {}}, {"gen": ("os:system", {"command": f"touch {marker}"})})
    with pytest.raises(DataError, match="model factory 'os:system' is not allowed"):
        load_best_model(run, "gen")
    assert not marker.exists()


def test_best_model_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    run = best_model(
        tmp_path / "run", {"gen": Exploit(marker)}, {"gen": ("hpc_modatts.models:build_segmenter", {"size": "tiny"})}
    )
    with pytest.raises(DataError, match="best_model.pt: not a loadable weights file"):
        load_best_model(run, "gen")
    assert not marker.exists()


def test_init_from_run_with_pickled_code_is_refused(tmp_path):
    from hpc_modatts.train.segment_task import load_initial_weights

    marker = tmp_path / "code-ran"
    run = best_model(tmp_path / "run", {"gen": Exploit(marker)})
    with pytest.raises(DataError, match="not a loadable weights file"):
        load_initial_weights(run, {"gen": torch.nn.Linear(1, 1)})
    assert not marker.exists()


def test_translator_checkpoint_with_pickled_code_is_refused(tmp_path):
    from hpc_modatts.train.synthesize import load_translator  # what synthesis and evaluate load

    marker = tmp_path / "code-ran"
    run = best_model(
        tmp_path / "translate",
        {"gen": Exploit(marker)},
        {"gen": ("hpc_modatts.train.translate:build_cycle_translators", {"size": "tiny"})},
    )
    with pytest.raises(DataError, match="best_model.pt: not a loadable weights file"):
        load_translator(run)
    assert not marker.exists()


def test_status_never_unpickles_submitit_results(tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "submitit").mkdir()
    (tmp_path / "submitit" / "4242_0_result.pkl").write_bytes(pickle.dumps(Exploit(marker)))
    (tmp_path / "pipeline.json").write_text(
        json.dumps(
            {
                "nodes": [{"name": "translate", "run_dir": str(tmp_path / "translate")}],
                "jobs": [
                    {"node": "translate", "job_id": "4242", "executor": "local", "folder": str(tmp_path / "submitit")}
                ],
            }
        )
    )
    rows = pipeline_status(tmp_path)
    assert [r["state"] for r in rows] == ["FAILED"]  # ended (result file exists) without its DONE marker
    assert not marker.exists()
