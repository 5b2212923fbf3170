"""Golden test of the sbatch scripts the pipeline submits: submitit's own submission path with a
stand-in ``sbatch`` on PATH (``pipeline --dry-run``), not a re-rendering of its template.

Regenerate after an intended change: ``UPDATE_GOLDEN=1 pytest tests/unit/test_sbatch_golden.py``
and review the diff of tests/unit/golden/.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest
import submitit

from hpc_modatts.cli import main
from hpc_modatts.config import config_from_dict, load_config
from hpc_modatts.pipeline.dag import build_dag
from hpc_modatts.pipeline.dryrun import dry_run_slurm

GOLDEN = Path(__file__).parent / "golden"


def sbatch_text(tmp_path: Path, preset_name: str, node_name: str) -> str:
    """The script of ``node_name`` as submitit writes it (``pipeline --dry-run``: stand-in sbatch)."""
    cfg = config_from_dict(
        {
            "name": "exp",
            "run_root": str(tmp_path / "runs"),
            "pipeline": {"self_training_rounds": 1, "cluster": preset_name},
        }
    )
    scripts = {s["node"]: s for s in dry_run_slurm(cfg)}
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    text = scripts[node_name]["script"]
    folder = str(cfg.run_dir / "submitit")
    return text.replace(folder, "<FOLDER>").replace(shlex.quote(sys.executable), "<PYTHON>")  # the volatile parts


CASES = [
    ("example_a100", "segment/self-supervised/fold_0/round_1", "sbatch_a100_self_train.txt"),
    ("example_a100", "evaluate/self-supervised", "sbatch_a100_evaluate.txt"),
    ("local_test", "translate", "sbatch_local_test_translate.txt"),
]


@pytest.mark.parametrize("preset,node,golden", CASES)
def test_sbatch_matches_golden(tmp_path, preset, node, golden):
    text = sbatch_text(tmp_path, preset, node)
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"sbatch script changed; see {path}"


def test_training_node_asks_one_task_per_gpu_and_requeue(tmp_path):
    text = sbatch_text(tmp_path, "example_a100", "segment/self-supervised/fold_0")
    for line in (
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --dependency=afterok:1001",
        "#SBATCH --requeue",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=my-project",
        "#SBATCH --constraint=a100",
        "#SBATCH --time=1440",
        "module load cuda/12.4",
    ):
        assert line in text, line
    assert submitit.__version__


def test_pipeline_dry_run_prints_every_script_and_leaves_nothing_behind(tmp_path, capsys):
    path_before = os.environ["PATH"]
    assert (
        main(
            [
                "pipeline",
                "demo_cpu",
                "--executor",
                "slurm",
                "--cluster",
                "example_a100",
                "--dry-run",
                f"run_root={tmp_path / 'runs'}",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    headers = [ln for ln in out.splitlines() if ln.startswith("# ---- ")]
    assert headers[0] == "# ---- translate (job 1000, afterok: -)"
    assert "# ---- synthesize (job 1001, afterok: translate)" in headers
    assert out.count("#!/bin/bash") == len(headers) == len(build_dag(load_config("demo_cpu")))
    assert "#SBATCH --dependency=afterok:1000" in out and "#SBATCH --partition=gpu" in out
    assert os.environ["PATH"] == path_before and "HPC_MODATTS_DRY_RUN" not in os.environ
    assert not (tmp_path / "runs").exists()
