"""Golden test of the sbatch scripts the pipeline generates (submitit's own template).

Regenerate after an intended change: ``UPDATE_GOLDEN=1 pytest tests/unit/test_sbatch_golden.py``
and review the diff of tests/unit/golden/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import submitit

from hpc_modatts.config import config_from_dict
from hpc_modatts.pipeline.dag import build_dag
from hpc_modatts.pipeline.submit import apply_preset, load_preset, node_parameters, sbatch_script

GOLDEN = Path(__file__).parent / "golden"


def sbatch_text(tmp_path: Path, preset_name: str, node_name: str, deps: list[str]) -> str:
    cfg = config_from_dict({"name": "exp", "run_root": str(tmp_path / "runs"),
                            "pipeline": {"self_training_rounds": 1, "cluster": preset_name}})
    preset = load_preset(preset_name)
    cfg = apply_preset(cfg, preset)
    node = build_dag(cfg)[node_name]
    folder = tmp_path / "submitit"
    text = sbatch_script(node_parameters(node, cfg, preset, deps), folder, "python -u -m submitit.core._submit FOLDER")
    return text.replace(str(folder), "<FOLDER>")  # the only volatile part


CASES = [
    ("example_a100", "segment/self-supervised/fold_0/round_1", ["1001"], "sbatch_a100_self_train.txt"),
    ("example_a100", "evaluate/self-supervised", ["1002", "1003"], "sbatch_a100_evaluate.txt"),
    ("local_test", "translate", [], "sbatch_local_test_translate.txt"),
]


@pytest.mark.parametrize("preset,node,deps,golden", CASES)
def test_sbatch_matches_golden(tmp_path, preset, node, deps, golden):
    text = sbatch_text(tmp_path, preset, node, deps)
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"sbatch script changed; see {path}"


def test_training_node_asks_one_task_per_gpu_and_requeue(tmp_path):
    text = sbatch_text(tmp_path, "example_a100", "segment/self-supervised/fold_0", ["7"])
    for line in ("#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4", "#SBATCH --dependency=afterok:7",
                 "#SBATCH --requeue", "#SBATCH --partition=gpu", "#SBATCH --account=my-project",
                 "#SBATCH --constraint=a100", "#SBATCH --time=1440", "module load cuda/12.4"):
        assert line in text, line
    assert submitit.__version__
