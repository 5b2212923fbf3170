"""NIfTI -> zarr conversion: dask-parallel over cases, resumable, atomic per case.

Each case is one dask task that hashes its sources, skips itself when the store already holds it
complete with the same source checksums AND intact arrays (``Store.array_problems``), otherwise
preprocesses it, checks the normalised arrays are finite and writes it atomically. A whole run
holds the store's exclusive lock (``store_lock``: a second run is refused with one line) and
records the expected case list in the root attributes (for ``verify``). Tasks
return a status instead of raising, so one bad case surfaces as its own one-line DataError (not a
dask traceback) after every other case has finished (completed cases stay valid and are skipped
by the next run).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from hpc_modatts.data.errors import DataError
from hpc_modatts.data.layouts import LABEL_SCHEMES, CaseSpec, find_cases
from hpc_modatts.data.integrity import store_lock
from hpc_modatts.data.store import DATASET_DTYPE, SHARDED, Store

log = logging.getLogger(__name__)

TASK_PREFIX = "convert-case-"
LOCAL_SCHEDULERS = ("sync", "threads", "processes")
SCHEDULER_ADDRESS = re.compile(r"(tcp|tls|inproc|ucx|ws|wss)://\S+|[A-Za-z0-9_.-]+:[0-9]+")
"""What ``--scheduler`` accepts besides LOCAL_SCHEDULERS: a dask.distributed scheduler address."""


def sha256(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def source_checksums(spec: CaseSpec) -> dict[str, dict[str, str]]:
    """{modality | "mask": {"path", "sha256"}} of a case's files."""
    files = dict(spec.images)
    if spec.mask is not None:
        files["mask"] = spec.mask
    out = {}
    for key, path in files.items():
        try:
            out[key] = {"path": str(Path(path).resolve()), "sha256": sha256(path)}
        except OSError as e:
            raise DataError(f"{path}: cannot read {key} of case {spec.case_id} ({e.strerror or e})") from None
    return out


def _same_sources(old: dict, new: dict) -> bool:
    return set(old) == set(new) and all(old[k].get("sha256") == new[k]["sha256"] for k in new)


def convert_one(spec: CaseSpec, store_path: str, layout: str, spacing, crop, crop_margin: int) -> dict[str, str]:
    """Convert one case (a dask task). Returns {"case", "status": converted|skipped|error, "error"}."""
    from hpc_modatts.data.preprocess import preprocess_case

    try:
        store = Store.open(store_path)
        sources = source_checksums(spec)
        if _intact(store, spec.case_id, sources):
            return {"case": spec.case_id, "status": "skipped", "error": ""}
        prepared = preprocess_case(spec, LABEL_SCHEMES[layout], spacing=spacing, crop=crop, crop_margin=crop_margin)
        _check_finite(spec, prepared.images)
        attrs = {**prepared.attrs, "sources": sources}
        store.write_case(spec.case_id, prepared.images, mask=prepared.mask, labels=prepared.labels,
                         brain=prepared.brain, attrs=attrs)
        return {"case": spec.case_id, "status": "converted", "error": ""}
    except DataError as e:
        return {"case": spec.case_id, "status": "error", "error": str(e)}
    except Exception as e:  # a bug or an OS error: still one line naming the case
        return {"case": spec.case_id, "status": "error",
                "error": f"case {spec.case_id}: {type(e).__name__}: {e}".replace("\n", " ")}


def _intact(store: Store, case: str, sources: dict) -> bool:
    """The store holds ``case`` complete, from the same source files, with every array intact."""
    if not store.is_complete(case) or not _same_sources(store.attrs(case).get("sources", {}), sources):
        return False
    problems = store.array_problems(case)
    if problems:
        log.warning("%s: case %s is damaged (%s); converting it again", store.path, case, problems[0])
    return not problems


def _check_finite(spec: CaseSpec, images: dict) -> None:
    """Normalised images must be finite: huge finite voxels (1e300 in float64) overflow the
    brain statistics and would put NaN into the store."""
    for mod, img in images.items():
        bad = int(np.count_nonzero(~np.isfinite(img)))
        if bad:
            raise DataError(f"{spec.images[mod]}: {mod} image of case {spec.case_id} normalises to {bad} NaN/Inf "
                            "voxels (values too large for float32 statistics?)")


def check_scheduler(scheduler: str | None) -> None:
    """``--scheduler``: None, sync|threads|processes, or a scheduler address; DataError otherwise."""
    if scheduler is None or scheduler in LOCAL_SCHEDULERS or SCHEDULER_ADDRESS.fullmatch(scheduler):
        return
    raise DataError(f"--scheduler {scheduler!r}: give one of {', '.join(LOCAL_SCHEDULERS)} or the address "
                    "of a running dask.distributed scheduler (tcp://host:8786)")


def _normalise_options(spacing, crop) -> tuple[list[float] | None, list[int] | str | None]:
    if spacing is not None:
        spacing = [float(s) for s in spacing]
        if len(spacing) != 3 or min(spacing) <= 0:
            raise DataError(f"--spacing {spacing} must be three positive numbers (mm)")
    if crop is not None and not isinstance(crop, str):
        crop = [int(c) for c in crop]
        if len(crop) != 3 or min(crop) < 1:
            raise DataError(f"--crop {crop} must be three positive sizes X Y Z (or 'brain')")
    return spacing, crop


def _open_store(store_path: Path, dtype: str | None, sharded: bool | None,
                preprocessing: dict) -> tuple[Store, bool]:
    """Create the store, or reopen ours when its preprocessing matches. Returns (store, created).

    ``dtype`` / ``sharded`` None: the defaults (DATASET_DTYPE, SHARDED) for a new store, the
    existing store's own layout when resuming.
    """
    created = not store_path.exists() or (store_path.is_dir() and not any(store_path.iterdir()))
    store = Store.create(store_path, kind="dataset", dtype=dtype or DATASET_DTYPE,
                         sharded=SHARDED if sharded is None else sharded, preprocessing=preprocessing)
    if not created:
        have = store.root_attrs.get("preprocessing")
        if have != preprocessing:
            raise DataError(f"{store_path}: store was converted with {have}, not {preprocessing}; use a new store path")
        if dtype is not None and store.root_attrs["layout"]["image_dtype"] != dtype:
            raise DataError(f"{store_path}: store holds {store.root_attrs['layout']['image_dtype']} images, not {dtype}")
    return store, created


def _run_tasks(tasks: list, scheduler: str, workers: int, progress: bool) -> list[dict]:
    """Compute the per-case delayed tasks locally or on a dask.distributed cluster, with a progress bar."""
    import dask
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("converting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=not progress)
    with bar:
        task_id = bar.add_task("convert", total=len(tasks))
        if scheduler not in LOCAL_SCHEDULERS:
            return _run_distributed(tasks, scheduler, bar, task_id)
        from dask.callbacks import Callback

        class _Advance(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):  # noqa: D401 - dask hook
                if str(key).startswith(TASK_PREFIX):
                    bar.advance(task_id)

        with _Advance():
            return list(dask.compute(*tasks, scheduler=scheduler, num_workers=max(1, workers)))


def _run_distributed(tasks: list, address: str, bar, task_id) -> list[dict]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise DataError("--scheduler ADDRESS needs the 'distributed' package (pip install distributed)") from None
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError, ValueError) as e:
        raise DataError(f"--scheduler {address}: cannot connect to the dask scheduler ({e})") from None
    with client:
        futures = client.compute(tasks)
        results = []
        for fut in as_completed(futures):
            results.append(fut.result())
            bar.advance(task_id)
    return results


def convert(src: str | Path, store: str | Path, layout: str = "brats", spacing: Sequence[float] | None = None,
            crop: Sequence[int] | str | None = None, missing: str = "fail", workers: int = 1,
            scheduler: str | None = None, dtype: str | None = None, modalities: Sequence[str] | None = None,
            crop_margin: int = 2, sharded: bool | None = None, progress: bool = True) -> Path:
    """Convert a NIfTI dataset (``layout`` brats|crossmoda|manifest) into one zarr store; returns its path.

    ``dtype`` ("float16" | "float32") and ``sharded``: the image dtype and zarr v3 sharding of a
    new store; None = float16 images and sharding on (store.py's layout block gives the measured
    round-off and sizes); a store being resumed keeps its own layout.

    ``scheduler``: None (threads when ``workers`` > 1, else in-process), "sync", "threads",
    "processes", or the address of a running dask.distributed scheduler ("tcp://host:8786").
    Resumable: cases already complete with unchanged source checksums are skipped.
    """
    import dask

    store_path = Path(store)
    spacing, crop = _normalise_options(spacing, crop)
    check_scheduler(scheduler)
    specs = find_cases(src, layout, missing=missing, modalities=modalities)  # errors before touching the store
    preprocessing = {"layout": layout, "spacing": spacing, "crop": crop, "crop_margin": crop_margin}
    with store_lock(store_path):
        st, created = _open_store(store_path, dtype, sharded, preprocessing)
        try:
            expected = sorted(set(st.root_attrs.get("expected_cases") or []) | {s.case_id for s in specs})
            st.update_root_attrs(source=str(Path(src).resolve()), modalities=sorted({m for s in specs for m in s.images}),
                                 expected_cases=expected)
            scheduler = scheduler or ("threads" if workers > 1 else "sync")
            tasks = [dask.delayed(convert_one, pure=False)(spec, str(store_path), layout, spacing, crop, crop_margin,
                                                           dask_key_name=f"{TASK_PREFIX}{i}")
                     for i, spec in enumerate(specs)]
            results = _run_tasks(tasks, scheduler, workers, progress)
        except BaseException:  # no scheduler, Ctrl-C: a store this run created and left empty goes
            if created and not st.case_ids:
                shutil.rmtree(store_path, ignore_errors=True)
            raise
        return _report(results, st, created, store_path)


def _report(results: list[dict], store: Store, created: bool, store_path: Path) -> Path:
    counts = {k: sum(r["status"] == k for r in results) for k in ("converted", "skipped", "error")}
    log.info("%s: %d converted, %d already complete, %d failed", store_path, counts["converted"],
             counts["skipped"], counts["error"])
    errors = sorted((r for r in results if r["status"] == "error"), key=lambda r: r["case"])
    if errors:
        if created and not store.case_ids:
            shutil.rmtree(store_path, ignore_errors=True)  # nothing valid was written: leave nothing behind
        more = f" (and {len(errors) - 1} more failing case(s); completed cases are kept)" if len(errors) > 1 else ""
        raise DataError(errors[0]["error"] + more)
    return store_path

