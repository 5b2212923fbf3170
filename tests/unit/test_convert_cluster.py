"""``convert --scheduler slurm`` without a cluster: the sbatch script dask-jobqueue would submit
for a preset, and the one-line refusals (the real-SLURM run: tests/integration/test_convert_slurm.py)."""

from __future__ import annotations

import sys

import pytest
import yaml
from dask_jobqueue import SLURMCluster

from hpc_modatts.config import ConfigError
from hpc_modatts.data.cluster import slurm_cluster_options
from hpc_modatts.data.convert import convert
from hpc_modatts.data.errors import DataError
from hpc_modatts.pipeline.submit import load_preset
from tests.fixtures import make_phantom_nifti


def test_preset_becomes_the_worker_job_script(tmp_path):
    opts = slurm_cluster_options(load_preset("example_a100"), tmp_path / "logs")
    with SLURMCluster(**opts) as cluster:
        script = cluster.job_script()
    for line in (
        "#SBATCH -p gpu",
        "#SBATCH -A my-project",
        "#SBATCH --qos=normal",
        "#SBATCH --constraint=a100",
        "#SBATCH --mail-type=FAIL",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=200G",
        "#SBATCH -t 24:00:00",
        "module load cuda/12.4",
        f"{sys.executable} -m distributed.cli.dask_worker",
        f"-e {tmp_path / 'logs'}/",
    ):
        assert line in script, line
    assert "gpu" not in script.replace("-p gpu", "")  # conversion is CPU work: no GPU requested


def test_newline_in_a_preset_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"partition": "debug\nrm -rf /", "cpus_per_task": 1}))
    with pytest.raises(ConfigError, match="must be one line"):
        slurm_cluster_options(load_preset(str(bad)), tmp_path)


def test_slurm_needs_a_preset_and_leaves_nothing_behind(tmp_path):
    src = make_phantom_nifti(tmp_path, cases=2)
    with pytest.raises(DataError, match="--scheduler slurm needs --cluster PRESET"):
        convert(src, tmp_path / "s.zarr", scheduler="slurm", progress=False)
    with pytest.raises(ConfigError, match="no such preset"):
        convert(src, tmp_path / "s.zarr", scheduler="slurm", cluster="nope", progress=False)
    assert not (tmp_path / "s.zarr").exists()
