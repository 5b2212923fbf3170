"""Stores and conversion under concurrency, damage and hostile NIfTI files (issue 10: causes 1,
2, 5, 6, 11 and the split made for another store). Tiny 4 mm phantoms from tests/fixtures.py."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import zarr

import hpc_modatts.data.convert as convert_module
from hpc_modatts.cli import main
from hpc_modatts.config import config_from_dict
from hpc_modatts.data.convert import convert
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.splits import make_split
from hpc_modatts.data.store import Store
from hpc_modatts.data.verify import verify
from tests.fixtures import make_phantom_nifti, make_phantom_store

pytestmark = pytest.mark.reliability

CASE = "phantom_001"
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())  # as temp folder names spell it


def errors(store) -> list:
    return [p for p in verify(store, check_sources=False) if p.severity == "error"]


def cli_convert(capsys, src, store, *extra) -> tuple[int, list[str]]:
    rc = main(["convert", str(src), str(store), "--no-progress", *extra])
    return rc, capsys.readouterr().err.strip().splitlines()


# ----------------------------------------------------------------------------- cause 1: concurrency
def test_second_convert_is_refused_while_the_first_holds_the_store(tmp_path, monkeypatch):
    src = make_phantom_nifti(tmp_path, cases=2)
    store, lock = tmp_path / "s.zarr", tmp_path / ".s.zarr.lock"
    gate, real = threading.Event(), convert_module.convert_one

    def held_open(*args, **kwargs):  # the first run's cases wait until the second one was tried
        gate.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_module, "convert_one", held_open)
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(path=convert(src, store, progress=False)))
    worker.start()
    try:
        deadline = time.time() + 20
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.01)
        assert lock.exists(), "the first convert never took the store lock"
        with pytest.raises(DataError, match="another convert run is writing this store"):
            convert(src, store, progress=False)
    finally:
        gate.set()
        worker.join()
    assert first["path"] == store and Store.open(store).case_ids == ["phantom_000", CASE]
    assert not errors(store) and not lock.exists()


def test_start_up_cleanup_removes_only_temp_folders_of_dead_writers(tmp_path):
    _, store = make_phantom_store(tmp_path, cases=2)
    cases = store / "cases"
    gone = subprocess.Popen(["true"])
    gone.wait()
    live = cases / f".tmp-{CASE}~{HOST}~{os.getpid()}~aaaaaa"  # a writer still at work
    dead = cases / f".tmp-{CASE}~{HOST}~{gone.pid}~bbbbbb"  # a killed writer's leftover
    for d in (live, dead):
        shutil.copytree(cases / CASE, d)
    Store.create(store)  # what a second writer does at start-up
    assert live.is_dir() and not dead.exists()
    warnings = [p.message for p in verify(store, check_sources=False) if p.severity == "warning"]
    assert any(live.name in w and "still running" in w for w in warnings), warnings


def test_case_is_not_published_when_its_temp_folder_lost_its_arrays(tmp_path, monkeypatch):
    """The race of the issue: another run's clean-up deletes our temp folder while we write."""
    st = Store.create(tmp_path / "s.zarr")
    real = Store._create_array

    def write_then_lose_everything(self, group, name, data, image):
        real(self, group, name, data, image)
        if name == "brain":  # the last array: another process removes the temp folder now
            for d in (tmp_path / "s.zarr" / "cases").glob(".tmp-*"):
                shutil.rmtree(d)

    monkeypatch.setattr(Store, "_create_array", write_then_lose_everything)
    vol = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(DataError, match="case 'c1'"):
        st.write_case("c1", {"t1": vol}, brain=np.ones((8, 8, 8), np.uint8))
    assert Store.open(tmp_path / "s.zarr").case_ids == []


# ----------------------------------------------------------------------------- cause 2: damage
def _shard(store, case: str, array: str):
    files = [p for p in (store / "cases" / case / array).rglob("*") if p.is_file() and p.name != "zarr.json"]
    return max(files, key=lambda p: p.stat().st_size)


DAMAGE = {
    "image shard deleted": lambda s: _shard(s, CASE, "image_t1").unlink(),
    "mask shard deleted (tumour case looks healthy)": lambda s: _shard(s, CASE, "mask").unlink(),
    "brain array deleted": lambda s: shutil.rmtree(s / "cases" / CASE / "brain"),
    "labels array deleted": lambda s: shutil.rmtree(s / "cases" / CASE / "labels"),
    "image zarr.json deleted": lambda s: (s / "cases" / CASE / "image_t2" / "zarr.json").unlink(),
    "case group zarr.json deleted": lambda s: (s / "cases" / CASE / "zarr.json").unlink(),
    "case folder deleted": lambda s: shutil.rmtree(s / "cases" / CASE),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_verify_reports_damage_and_convert_repairs_it(tmp_path, damage):
    nifti, store = make_phantom_store(tmp_path, cases=2)
    assert not errors(store)
    DAMAGE[damage](store)
    found = errors(store)
    assert found and all(p.case == CASE for p in found), found
    convert(nifti, store, progress=False)  # trusts no `complete` flag: re-does the damaged case
    assert not errors(store)
    assert Store.open(store).case_ids == ["phantom_000", CASE]


def test_single_flipped_bytes_in_a_shard_are_caught_or_harmless(tmp_path):
    _, store = make_phantom_store(tmp_path, cases=2)
    shard = _shard(store, CASE, "image_t1")
    array = str(store / "cases" / CASE / "image_t1")
    original, clean = shard.read_bytes(), np.asarray(zarr.open_array(array, mode="r")[...])
    missed = []
    for pos in np.linspace(0, len(original) - 1, 19).astype(int):
        damaged = bytearray(original)
        damaged[pos] ^= 0xFF
        shard.write_bytes(bytes(damaged))
        if not errors(store):  # unnoticed is fine only when no value changed
            try:
                harmless = np.array_equal(np.asarray(zarr.open_array(array, mode="r")[...]), clean)
            except Exception:  # noqa: BLE001 - unreadable and unnoticed is a miss
                harmless = False
            if not harmless:
                missed.append(int(pos))
    shard.write_bytes(original)
    assert not missed, f"flipped bytes at {missed} of {len(original)} went unnoticed"
    assert not errors(store)


# ----------------------------------------------------------------------------- causes 5, 6, 11: hostile input
def forged_nifti(path, shape, nifti2: bool = False) -> None:
    """A tiny .nii.gz (or plain .nii) whose header claims ``shape`` uint8 voxels (the data is absent)."""
    hdr = (nib.Nifti2Header if nifti2 else nib.Nifti1Header)()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = len(hdr.binaryblock) + 4
    with (gzip.open if path.name.endswith(".gz") else open)(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)


@pytest.mark.parametrize(
    "shape,nifti2,suffix",
    [
        ((2048, 1024, 1024), False, ".nii.gz"),
        ((2048, 1024, 1024), False, ".nii"),
        ((100000, 100000, 100000), True, ".nii.gz"),
    ],
    ids=["2GiB-claimed-by-a-tiny-file", "2GiB-claimed-by-a-tiny-plain-nii", "nifti2-100000-cubed"],
)
def test_forged_header_is_refused_before_allocating(tmp_path, capsys, shape, nifti2, suffix):
    src = make_phantom_nifti(tmp_path, cases=2)
    (src / CASE / f"{CASE}_t1.nii.gz").unlink()
    f = src / CASE / f"{CASE}_t1{suffix}"
    forged_nifti(f, shape, nifti2)
    assert f.stat().st_size < 600
    rc, err = cli_convert(capsys, src, tmp_path / "s.zarr", "--workers", "2")
    assert rc == 2 and len(err) == 1, err
    assert str(f) in err[0] and "header claims" in err[0]
    assert Store.open(tmp_path / "s.zarr").case_ids == ["phantom_000"]


def test_forged_mask_header_is_refused_by_the_label_scan(tmp_path, capsys):
    """``--labels auto`` reads every mask before any case is converted: the same size check first."""
    src = make_phantom_nifti(tmp_path, cases=2)
    f = src / CASE / f"{CASE}_seg.nii.gz"
    forged_nifti(f, (2048, 1024, 1024))
    rc, err = cli_convert(capsys, src, tmp_path / "s.zarr", "--workers", "2")
    assert rc == 2 and len(err) == 1 and str(f) in err[0] and "header claims" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nifti"]  # no store, no lock file


def test_forged_reference_header_is_refused_by_evaluate(tmp_path):
    """``evaluate --region core`` reads every reference's label values to pick their scheme."""
    from hpc_modatts.infer.evaluate import evaluate

    for side in ("pred", "ref"):
        (tmp_path / side).mkdir()
        forged_nifti(tmp_path / side / "a.nii.gz", (2048, 1024, 1024))
    with pytest.raises(DataError, match="header claims") as err:
        evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", panels=False, region="core")
    assert str(tmp_path / "ref" / "a.nii.gz") in str(err.value) and not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy overflow warnings would print more lines
def test_huge_finite_voxel_is_refused_and_no_nan_reaches_the_store(tmp_path, capsys):
    src = make_phantom_nifti(tmp_path, cases=2)
    f = src / CASE / f"{CASE}_t1.nii.gz"
    img = nib.load(f)
    data = np.asarray(img.dataobj).astype(np.float64)
    data[np.unravel_index(np.argmax(data), data.shape)] = 1e300  # finite, inside the brain
    nib.save(nib.Nifti1Image(data, img.affine), f)
    rc, err = cli_convert(capsys, src, tmp_path / "s.zarr")
    assert rc == 2 and len(err) == 1 and str(f) in err[0] and "NaN/Inf" in err[0], err
    st = Store.open(tmp_path / "s.zarr")
    assert st.case_ids == ["phantom_000"]
    assert all(np.isfinite(st.read_image("phantom_000", m)).all() for m in st.modalities("phantom_000"))


def test_a_run_that_converts_no_case_leaves_no_store_behind(tmp_path, capsys):
    src = make_phantom_nifti(tmp_path, cases=2)
    shutil.rmtree(src / "phantom_000")
    f = src / CASE / f"{CASE}_t1.nii.gz"
    f.write_bytes(f.read_bytes()[:100])  # the only case cannot be read
    rc, err = cli_convert(capsys, src, tmp_path / "s.zarr")
    assert rc == 2 and len(err) == 1 and str(f) in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nifti"]  # no store, no lock file


def test_bogus_scheduler_leaves_no_store_behind(tmp_path, capsys):
    src = make_phantom_nifti(tmp_path, cases=2)
    rc, err = cli_convert(capsys, src, tmp_path / "s.zarr", "--scheduler", "bogus")
    assert rc == 2 and len(err) == 1 and "--scheduler 'bogus'" in err[0], err
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / ".s.zarr.lock").exists()


# ----------------------------------------------------------------------------- a split made for another store
def test_split_of_another_store_with_the_same_case_ids_is_refused(tmp_path):
    from hpc_modatts.data.inputs import load_split

    nifti, a = make_phantom_store(tmp_path / "a", cases=4)
    b = tmp_path / "b.zarr"
    convert(nifti, b, progress=False)  # the same case ids, another store
    make_split(a, "t1", "t2", val=0.25, test=0.25).save(tmp_path / "split.json")

    def cfg(store):
        return config_from_dict({"data": {"store": str(store), "split": str(tmp_path / "split.json")}})

    with pytest.raises(DataError, match="made for store"):
        load_split(cfg(b))
    assert load_split(cfg(a)).test
