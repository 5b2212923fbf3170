"""Shared test helpers: tiny phantom NIfTI folders and converted stores, cached per session.

Use from any test module::

    from tests.fixtures import make_phantom_store, phantom_store   # helper + session fixture

    def test_x(tmp_path):
        nifti_dir, store_path = make_phantom_store(tmp_path, cases=4, seed=0)

``size="small"`` builds 48x56x48 cases at 4 mm (fast); ``size="full"`` the demo's 96x112x96 at 2 mm.
Generation and conversion run once per (cases, seed, size, options) per test session; every call
gets its own copy under ``tmp_path`` so tests may modify it freely.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest

SIZES = {"small": 4, "full": 2}  # phantom spacing in mm
_CACHE_ROOT: Path | None = None
_CACHE: dict[tuple, tuple[Path, Path | None]] = {}


def _cache_root() -> Path:
    global _CACHE_ROOT
    if _CACHE_ROOT is None:
        _CACHE_ROOT = Path(tempfile.mkdtemp(prefix="hpc-modatts-fixtures-"))
        atexit.register(shutil.rmtree, _CACHE_ROOT, ignore_errors=True)  # one cache per session, not per run
    return _CACHE_ROOT


def _spacing(size: str) -> int:
    if size not in SIZES:
        raise ValueError(f"size={size!r} must be one of {sorted(SIZES)}")
    return SIZES[size]


def make_phantom_nifti(tmp_path: Path, cases: int = 4, seed: int = 0, size: str = "small") -> Path:
    """BraTS-layout phantom NIfTI folder (copied into ``tmp_path/nifti``); returns the folder."""
    key = ("nifti", cases, seed, size)
    if key not in _CACHE:
        from hpc_modatts.data.phantom import make_phantom

        src = _cache_root() / f"nifti-{cases}-{seed}-{size}"
        make_phantom(src, cases=cases, seed=seed, spacing=_spacing(size))
        _CACHE[key] = (src, None)
    dst = Path(tmp_path) / "nifti"
    shutil.copytree(_CACHE[key][0], dst, dirs_exist_ok=True)
    return dst


def make_phantom_store(
    tmp_path: Path, cases: int = 4, seed: int = 0, size: str = "small", **convert_kwargs
) -> tuple[Path, Path]:
    """Phantom NIfTI + converted zarr store (``hpc_modatts.data.convert.convert``, BraTS layout).

    Returns ``(nifti_dir, store_path)`` under ``tmp_path``; ``convert_kwargs`` go to ``convert``
    (e.g. ``crop=(40, 48, 40)``, ``dtype="float16"``). Store source paths point at the copies.
    """
    nifti_dir = make_phantom_nifti(tmp_path, cases=cases, seed=seed, size=size)
    key = ("store", cases, seed, size, tuple(sorted((k, repr(v)) for k, v in convert_kwargs.items())))
    if key not in _CACHE:
        from hpc_modatts.data.convert import convert

        cached_nifti = _CACHE[("nifti", cases, seed, size)][0]
        store = _cache_root() / f"store-{len(_CACHE)}.zarr"
        convert(cached_nifti, store, layout="brats", workers=1, progress=False, **convert_kwargs)
        _CACHE[key] = (cached_nifti, store)
    store_path = Path(tmp_path) / "phantom.zarr"
    shutil.copytree(_CACHE[key][1], store_path, dirs_exist_ok=True)
    _retarget_sources(store_path, _CACHE[key][0], nifti_dir)
    return nifti_dir, store_path


def _retarget_sources(store_path: Path, old_root: Path, new_root: Path) -> None:
    """Point the copied store's source paths at the copied NIfTI files (checksums are unchanged)."""
    from hpc_modatts.data.store import Store

    store = Store.open(store_path)
    for case in store.case_ids:
        import zarr

        group = zarr.open_group(str(store.path / "cases" / case), mode="r+", zarr_format=3)
        sources = dict(group.attrs.get("sources", {}))
        for entry in sources.values():
            entry["path"] = str(entry["path"]).replace(str(old_root), str(new_root))
        group.attrs["sources"] = sources


@pytest.fixture(scope="session")
def phantom_store(tmp_path_factory) -> tuple[Path, Path]:
    """Session-wide READ-ONLY 4-case small phantom: ``(nifti_dir, store_path)``. Don't modify it."""
    return make_phantom_store(tmp_path_factory.mktemp("phantom"), cases=4, seed=0, size="small")


# ----------------------------------------------------------------------------- shared harnesses
def assert_segment_resumes_bit_exactly(cfg0, tmp_path: Path, overrides: list[str]) -> None:
    """Train ``cfg0`` + ``overrides`` (4 steps, checkpoint every 2) once uninterrupted and once
    killed during step 3 then resumed: the weights of every engine must be equal, bit for bit."""
    import torch

    from hpc_modatts.config import apply_overrides
    from hpc_modatts.train import segment
    from hpc_modatts.train.checkpoint import read_pointer
    from hpc_modatts.train.trainer import Trainer

    def weights(trainer: Trainer) -> dict:
        return {
            f"{name}.{k}": v.detach().clone()
            for name, e in trainer.engines.items()
            for k, v in e.module.state_dict().items()
        }

    common = ["train.max_steps=4", "train.checkpoint_every=2", "train.val_every=0", *overrides]
    full_cfg = apply_overrides(cfg0, [*common, f"run_root={tmp_path / 'full'}"])
    full = Trainer(full_cfg, segment.make_task(full_cfg, tmp_path / "full_run"), tmp_path / "full_run")
    full.fit()
    cfg = apply_overrides(cfg0, [*common, f"run_root={tmp_path / 'killed'}"])
    run = tmp_path / "killed_run"
    task = segment.make_task(cfg, run)
    step_fn = task.train_step

    def killed(batch, engines, step):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")
        return step_fn(batch, engines, step)

    task.train_step = killed  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, task, run).fit()
    assert read_pointer(run, "latest") == "step_00000002" and not (run / "DONE").exists()
    resumed = Trainer(cfg, segment.make_task(cfg, run), run)
    resumed.fit()
    assert resumed.step == full.step == 4
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys() and any(k.startswith("disc.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def torchrun_two_ranks(*cli_args: str, timeout: int = 300) -> None:
    """``torchrun --nproc_per_node 2 -m hpc_modatts CLI_ARGS`` with one thread per rank; asserts exit 0."""
    import os
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "hpc_modatts", *cli_args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{cli_args}: {proc.stderr[-3000:]}"
