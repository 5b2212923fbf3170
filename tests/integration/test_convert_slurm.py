"""``convert --scheduler slurm``: dask-jobqueue workers on the real single-node SLURM cluster
(conftest.py) convert 24 phantom cases into a store bit-identical to a local conversion."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from hpc_modatts.cli import main
from hpc_modatts.data.convert import convert
from tests.fixtures import make_phantom_nifti

pytestmark = pytest.mark.slurm


def tree(root: Path) -> dict[str, bytes]:
    """Every file of a store: relative path -> bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_slurm_workers_write_the_same_store_as_a_local_conversion(tmp_path, capsys):
    src = make_phantom_nifti(tmp_path, cases=24, seed=0, size="small")
    t0 = time.perf_counter()
    convert(src, tmp_path / "local.zarr", workers=2, progress=False)
    local_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rc = main(
        [
            "convert",
            str(src),
            str(tmp_path / "slurm.zarr"),
            "--scheduler",
            "slurm",
            "--cluster",
            "local_test",
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    slurm_s = time.perf_counter() - t0
    assert rc == 0, capsys.readouterr().err
    local, slurm = tree(tmp_path / "local.zarr"), tree(tmp_path / "slurm.zarr")
    assert len(local) > 24 * 8 and local.keys() == slurm.keys()
    assert [k for k in local if local[k] != slurm[k]] == ["zarr.json"]  # the root: only the store's identity differs
    roots = [json.loads(t["zarr.json"]) for t in (local, slurm)]
    ids = [r["attributes"]["hpc_modatts"].pop("store_id") for r in roots]
    assert roots[0] == roots[1] and ids[0] != ids[1]  # store_id is minted per store (splits check it)
    logs = list((tmp_path / "slurm.zarr.slurm-logs").glob("hpc-modatts-convert-*.err"))
    assert logs, "the worker jobs wrote their logs beside the store"
    deadline = time.time() + 60  # the worker jobs are cancelled when convert returns
    while subprocess.run(["squeue", "-h", "-n", "hpc-modatts-convert"], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, "SLURM worker jobs still queued/running after convert returned"
        time.sleep(1)
    print(
        f"\n24 phantom cases (4 mm): local 2 threads {local_s:.1f} s, SLURM 2 worker jobs {slurm_s:.1f} s "
        f"(job start-up included); {len(local)} files identical but the store_id"
    )
