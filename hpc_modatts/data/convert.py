"""NIfTI -> zarr conversion: dask-parallel over cases, resumable, atomic per case.

Each case is one dask task that hashes its sources, skips itself when the store already holds it
complete with the same source checksums AND intact arrays (``Store.array_problems``), otherwise
preprocesses it, checks the normalised arrays are finite and writes it atomically. A whole run
holds the store's exclusive lock (``store_lock``: a second run is refused with one line) and
records the expected case list in the root attributes (for ``verify``). Tasks
return a status instead of raising, so one bad case surfaces as its own one-line DataError (not a
dask traceback) after every other case has finished (completed cases stay valid and are skipped
by the next run).

With ``labels="auto"`` a first round of tasks reads the label values of every mask and picks the
label scheme (``hpc_modatts.data.labels``). The tasks run in this process (``sync``), on local
threads/processes, on a running dask.distributed scheduler (``tcp://host:port``), or on SLURM
worker jobs started for this conversion (``scheduler="slurm"``, ``cluster=PRESET``:
``hpc_modatts.data.cluster``); the store must be on a file system every worker sees.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator, Sequence

import dask
import numpy as np
from dask.callbacks import Callback
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hpc_modatts.data.aliases import alias_table, canonical
from hpc_modatts.data.cluster import slurm_client
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.integrity import store_lock
from hpc_modatts.data.labels import LabelScheme, detect_scheme, get_scheme, scan_label_values
from hpc_modatts.data.layouts import CaseSpec, describe, find_cases, resolve_layout
from hpc_modatts.data.preprocess import preprocess_case
from hpc_modatts.data.store import DATASET_DTYPE, SHARDED, Store

log = logging.getLogger(__name__)

TASK_PREFIX = "convert-case-"
SCAN_PREFIX = "scan-labels-"
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
    if spec.brain is not None:
        files["brain"] = spec.brain
    out = {}
    for key, path in files.items():
        try:
            out[key] = {"path": str(Path(path).resolve()), "sha256": sha256(path)}
        except OSError as e:
            raise DataError(f"{path}: cannot read {key} of case {spec.case_id} ({e.strerror or e})") from None
    return out


def _same_sources(old: dict, new: dict) -> bool:
    return set(old) == set(new) and all(old[k].get("sha256") == new[k]["sha256"] for k in new)


def convert_one(
    spec: CaseSpec, store_path: str, scheme: str, spacing, crop, crop_margin: int, resample_to: str | None = None
) -> dict:
    """Convert one case (a dask task). Returns {"case", "status": converted|skipped|error, "error",
    "warnings"} (warnings travel back to the driver: a SLURM worker's log is not the user's terminal)."""
    try:
        store = Store.open(store_path)
        sources = source_checksums(spec)
        if _intact(store, spec.case_id, sources):
            return {"case": spec.case_id, "status": "skipped", "error": "", "warnings": []}
        prepared = preprocess_case(
            spec, scheme, spacing=spacing, crop=crop, crop_margin=crop_margin, resample_to=resample_to
        )
        _check_finite(spec, prepared.images)
        attrs = {**prepared.attrs, "sources": sources}
        store.write_case(
            spec.case_id,
            prepared.images,
            mask=prepared.mask,
            labels=prepared.labels,
            brain=prepared.brain,
            extra=prepared.extra or None,
            attrs=attrs,
        )
        return {"case": spec.case_id, "status": "converted", "error": "", "warnings": prepared.warnings}
    except DataError as e:
        return {"case": spec.case_id, "status": "error", "error": str(e), "warnings": []}
    except Exception as e:  # a bug or an OS error: still one line naming the case
        return {
            "case": spec.case_id,
            "status": "error",
            "warnings": [],
            "error": f"case {spec.case_id}: {type(e).__name__}: {e}".replace("\n", " "),
        }


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
            raise DataError(
                f"{spec.images[mod]}: {mod} image of case {spec.case_id} normalises to {bad} NaN/Inf "
                "voxels (values too large for float32 statistics?)"
            )


def check_scheduler(scheduler: str | None) -> None:
    """``--scheduler``: None, sync|threads|processes|slurm, or a scheduler address; DataError otherwise."""
    if scheduler is None or scheduler in (*LOCAL_SCHEDULERS, "slurm") or SCHEDULER_ADDRESS.fullmatch(scheduler):
        return
    raise DataError(
        f"--scheduler {scheduler!r}: give one of {', '.join(LOCAL_SCHEDULERS)}, slurm (with --cluster) "
        "or the address of a running dask.distributed scheduler (tcp://host:8786)"
    )


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


def _open_store(store_path: Path, dtype: str | None, sharded: bool | None, preprocessing: dict) -> tuple[Store, bool]:
    """Create the store, or reopen ours when its preprocessing matches. Returns (store, created).

    ``dtype`` / ``sharded`` None: the defaults (DATASET_DTYPE, SHARDED) for a new store, the
    existing store's own layout when resuming.
    """
    created = not store_path.exists() or (store_path.is_dir() and not any(store_path.iterdir()))
    store = Store.create(
        store_path,
        kind="dataset",
        dtype=dtype or DATASET_DTYPE,
        sharded=SHARDED if sharded is None else sharded,
        preprocessing=preprocessing,
    )
    if not created:
        have = store.root_attrs.get("preprocessing")
        if have != preprocessing:
            raise DataError(f"{store_path}: store was converted with {have}, not {preprocessing}; use a new store path")
        if dtype is not None and store.root_attrs["layout"]["image_dtype"] != dtype:
            raise DataError(
                f"{store_path}: store holds {store.root_attrs['layout']['image_dtype']} images, not {dtype}"
            )
    return store, created


Runner = Callable[[list, list[str], str, str], list[dict]]
"""run(delayed tasks, their case ids, key prefix, bar label) -> task results in completion order."""


@contextlib.contextmanager
def task_runner(
    scheduler: str, workers: int, progress: bool, cluster: str | None = None, log_dir: str | Path | None = None
) -> Iterator[Runner]:
    """A runner for per-case delayed tasks with a rich progress bar: a local dask scheduler, a
    running dask.distributed scheduler (ADDRESS), or SLURM worker jobs (``slurm`` + ``cluster``)
    that live as long as the ``with`` block."""
    if scheduler in LOCAL_SCHEDULERS:
        yield lambda tasks, cases, prefix, label: _run_local(tasks, prefix, label, scheduler, workers, progress)
        return
    if scheduler == "slurm":
        if not cluster:
            raise DataError(
                "--scheduler slurm needs --cluster PRESET (a shipped preset name such as example_a100, or a YAML path)"
            )
        with slurm_client(cluster, workers, log_dir or "convert-slurm-logs") as client:
            yield lambda tasks, cases, prefix, label: _run_on_client(client, tasks, cases, label, progress)
        return
    try:  # heavy (dask.distributed with its servers), and only a scheduler address needs it
        from distributed import Client
    except ImportError:
        raise DataError("--scheduler ADDRESS needs the 'distributed' package (pip install distributed)") from None
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as e:
        raise DataError(f"--scheduler {scheduler}: cannot connect to the dask scheduler ({e})") from None
    with client:
        yield lambda tasks, cases, prefix, label: _run_on_client(client, tasks, cases, label, progress)


def _bar(label: str, progress: bool):
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=not progress)


def _run_local(tasks: list, prefix: str, label: str, scheduler: str, workers: int, progress: bool) -> list[dict]:
    """Compute the delayed tasks with a local dask scheduler; the bar advances per finished task."""
    with _bar(label, progress) as bar:
        task_id = bar.add_task(label, total=len(tasks))

        class _Advance(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):  # noqa: D401 - dask hook
                if str(key).startswith(prefix):
                    bar.advance(task_id)

        with _Advance():
            return list(dask.compute(*tasks, scheduler=scheduler, num_workers=max(1, workers)))


def _run_on_client(client, tasks: list, cases: list[str], label: str, progress: bool) -> list[dict]:
    """Compute the delayed tasks on a distributed client; a task lost with its worker is a case error."""
    from distributed import as_completed  # loaded already: the client came from it (see ``task_runner``)

    with _bar(label, progress) as bar:
        task_id = bar.add_task(label, total=len(tasks))
        futures = client.compute(tasks)
        case_of = {f.key: c for f, c in zip(futures, cases)}
        results = []
        for fut in as_completed(futures):
            try:
                results.append(fut.result())
            except Exception as e:  # the worker died (killed, out of memory): name the case, keep the others
                case = case_of.get(fut.key, "?")
                error = f"case {case}: dask worker failed ({type(e).__name__}: {e})".replace("\n", " ")
                results.append({"case": case, "status": "error", "values": [], "warnings": [], "error": error})
            bar.advance(task_id)
    return results


def choose_scheme(specs: list[CaseSpec], labels: str, src: str | Path, run: Runner) -> tuple[LabelScheme, str]:
    """The label scheme: ``labels`` itself, or detected from every mask's values (one task per mask)."""
    if labels != "auto":
        return get_scheme(labels), "--labels"
    masked = [s for s in specs if s.mask is not None]
    run_id = os.urandom(4).hex()  # keys unique per run: a shared dask scheduler may serve other conversions
    tasks = [
        dask.delayed(scan_label_values, pure=False)(str(s.mask), s.case_id, dask_key_name=f"{SCAN_PREFIX}{run_id}-{i}")
        for i, s in enumerate(masked)
    ]
    results = run(tasks, [s.case_id for s in masked], SCAN_PREFIX, "reading labels") if tasks else []
    bad = sorted((r for r in results if r["error"]), key=lambda r: r["case"])
    if bad:
        raise DataError(bad[0]["error"] + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    values = set().union(*(r["values"] for r in results)) if results else set()
    generation = specs[0].generation or "manifest"
    return detect_scheme(values, generation, str(src))


def convert(
    src: str | Path,
    store: str | Path,
    layout: str = "auto",
    spacing: Sequence[float] | None = None,
    crop: Sequence[int] | str | None = None,
    missing: str = "fail",
    workers: int = 1,
    scheduler: str | None = None,
    dtype: str | None = None,
    modalities: Sequence[str] | None = None,
    crop_margin: int = 2,
    sharded: bool | None = None,
    progress: bool = True,
    labels: str = "auto",
    resample_to: str | None = None,
    cluster: str | None = None,
) -> Path:
    """Convert a NIfTI dataset (``layout`` auto|brats|crossmoda|manifest) into one zarr store; returns its path.

    ``dtype`` ("float16" | "float32") and ``sharded``: the image dtype and zarr v3 sharding of a
    new store; None = float16 images and sharding on (store.py's layout block says why;
    docs/results.md has the round-off and sizes); a store being resumed keeps its own layout.

    ``labels``: a label scheme (``hpc_modatts.data.labels.LABEL_CHOICES``) or "auto".
    ``resample_to``: a modality onto whose grid other files are resampled (None: files off the
    grid are an error). ``scheduler``: None (threads when ``workers`` > 1, else in-process),
    "sync", "threads", "processes", the address of a running dask.distributed scheduler
    ("tcp://host:8786"), or "slurm" with ``cluster`` (a preset): ``workers`` SLURM worker jobs.
    Resumable: cases already complete with unchanged source checksums are skipped.
    """
    store_path = Path(store)
    scheduler = scheduler or ("threads" if workers > 1 else "sync")
    check_scheduler(scheduler)
    if scheduler not in LOCAL_SCHEDULERS:  # workers elsewhere: every path they get must be absolute
        src, store_path = Path(src).resolve(), store_path.resolve()
    spacing, crop = _normalise_options(spacing, crop)
    layout = resolve_layout(src, layout)
    specs = find_cases(src, layout, missing=missing, modalities=modalities)  # errors before touching the store
    resample_to = canonical(resample_to) if resample_to else None
    log_dir = store_path.parent / f"{store_path.name}.slurm-logs"
    with store_lock(store_path), task_runner(scheduler, workers, progress, cluster, log_dir) as run:
        scheme, how = choose_scheme(specs, labels, src, run)
        preprocessing = {
            "layout": layout,
            "spacing": spacing,
            "crop": crop,
            "crop_margin": crop_margin,
            "labels": scheme.name,
            "resample_to": resample_to,
        }
        st, created = _open_store(store_path, dtype, sharded, preprocessing)
        try:
            names = {m: n for s in specs for m, n in s.names.items()}
            expected = sorted(set(st.root_attrs.get("expected_cases") or []) | {s.case_id for s in specs})
            st.update_root_attrs(
                source=str(Path(src).resolve()),
                modalities=sorted({m for s in specs for m in s.images}),
                modality_aliases=alias_table(),
                modality_names=names,
                naming=specs[0].generation,
                labels={**scheme.record(), "chosen_by": how},
                expected_cases=expected,
            )
            log.info(
                "%s: %s; modalities %s; labels %s (%s)",
                src,
                describe(specs),
                ", ".join(m if names.get(m, m) == m else f"{m} (files: {names[m]})" for m in sorted(names)),
                scheme.name,
                how,
            )
            run_id = os.urandom(4).hex()  # keys unique per run: a shared dask scheduler may serve others
            tasks = [
                dask.delayed(convert_one, pure=False)(
                    spec,
                    str(store_path),
                    scheme.name,
                    spacing,
                    crop,
                    crop_margin,
                    resample_to,
                    dask_key_name=f"{TASK_PREFIX}{run_id}-{i}",
                )
                for i, spec in enumerate(specs)
            ]
            results = run(tasks, [s.case_id for s in specs], TASK_PREFIX, "converting")
        except BaseException:  # no scheduler, Ctrl-C: a store this run created and left empty goes
            if created and not st.case_ids:
                shutil.rmtree(store_path, ignore_errors=True)
            raise
    return _report(results, st, created, store_path)


def _report(results: list[dict], store: Store, created: bool, store_path: Path) -> Path:
    for r in sorted(results, key=lambda r: r["case"]):
        for warning in r.get("warnings") or []:
            log.warning("%s", warning)
    counts = {k: sum(r["status"] == k for r in results) for k in ("converted", "skipped", "error")}
    log.info(
        "%s: %d converted, %d already complete, %d failed",
        store_path,
        counts["converted"],
        counts["skipped"],
        counts["error"],
    )
    errors = sorted((r for r in results if r["status"] == "error"), key=lambda r: r["case"])
    if errors:
        if created and not store.case_ids:
            shutil.rmtree(store_path, ignore_errors=True)  # nothing valid was written: leave nothing behind
        more = f" (and {len(errors) - 1} more failing case(s); completed cases are kept)" if len(errors) > 1 else ""
        raise DataError(errors[0]["error"] + more)
    return store_path
