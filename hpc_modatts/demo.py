"""`hpc-modatts demo`: the whole MoDATTS pipeline on the embedded phantom, on a CPU, in minutes.

phantom (BraTS-layout NIfTI from nilearn's MNI152 anatomy) -> convert (zarr) -> verify ->
split (source T1 fully annotated, target T2 unannotated) -> the pipeline with tiny models on
the local executor (translate -> synthesize -> segment for four variants -> self-training ->
predict -> evaluate) -> one table of target-test Dice for: source-supervised (no adaptation),
MoDATTS self-supervised, MoDATTS semi-supervised and target-supervised (upper bound), and
the PNG panels. The numbers are what the run gives; nothing is assumed.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpc_modatts.config import ConfigError, load_config
from hpc_modatts.console import log_console
from hpc_modatts.data.convert import convert
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.phantom import make_phantom
from hpc_modatts.data.splits import make_split
from hpc_modatts.data.verify import verify
from hpc_modatts.demo_defaults import CHOICES, DEMO_CASES, VARIANTS
from hpc_modatts.host import describe_host, host_facts
from hpc_modatts.pipeline.record import load_record
from hpc_modatts.pipeline.submit import run_pipeline
from hpc_modatts.pipeline.waves import StagesFailed
from hpc_modatts.runs import atomic_write_json, atomic_write_text, stage_dir

log = logging.getLogger(__name__)

LABELS = {
    "source-supervised": "no adaptation (source-sup.)",
    "self-supervised": "MoDATTS self-supervised",
    "semi-supervised": "MoDATTS semi-supervised",
    "self-supervised-2d": "MoDATTS-2D self-supervised",
    "semi-supervised-2d": "MoDATTS-2D semi-supervised",
    "m-genseg": "M-GenSeg (2D, end to end)",
    "target-supervised": "target-supervised (upper bound)",
}


def prepare_data(
    out: Path, cases: int, seed: int, spacing: int, source: str, target: str, val: float, test: float
) -> tuple[Path, Path]:
    """Phantom NIfTI -> zarr store -> verified -> split JSON (each step skipped when done)."""
    nifti, store, split_path = out / "phantom", out / "phantom.zarr", out / "split.json"
    if len(list(nifti.glob("*/*_seg.nii.gz"))) < cases:
        make_phantom(nifti, cases=cases, seed=seed, spacing=spacing)
    convert(nifti, store, layout="brats", workers=2, progress=True)
    errors = [p for p in verify(store) if p.severity == "error"]
    if errors:
        raise DataError(f"{store}: verify found {len(errors)} problem(s), first: {errors[0]}")
    if not split_path.is_file():
        make_split(
            store,
            source=source,
            target=target,
            source_labeled=1.0,
            target_labeled=0.0,
            val=val,
            test=test,
            folds=1,
            seed=seed,
        ).save(split_path)
    return store, split_path


def results_table(
    run_dir: Path, variants: tuple[str, ...] = VARIANTS, failed: frozenset[str] = frozenset()
) -> tuple[Table, dict]:
    """Read each variant's evaluate-<variant>/metrics.json into one table (and a dict);
    ``failed`` variants (a stage of theirs failed) read "failed" instead of "missing"; a variant
    whose model had no plausible validation (``model_plausible`` false) is marked "†"."""
    rows: dict[str, dict] = {}
    for v in variants:
        path = stage_dir(run_dir, "evaluate", v) / "metrics.json"
        if path.is_file():
            rows[v] = json.loads(path.read_text())["summary"]
    ts = rows.get("target-supervised", {}).get("dice", {}).get("mean")
    table = Table(title="Target-modality test set (whole tumour)")
    # fits 120 columns (logs, non-terminals) without wrapping or truncating
    for col in ("method", "Dice", "HD95 (mm)", "ASSD (mm)", "% tgt-sup", "ml pred/ref", "cases"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)

    def fmt(s: dict, digits: int = 3) -> str:
        if s["mean"] is None or math.isnan(s["mean"]):
            return "n/a"
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

    out = {}
    unselected = [v for v in variants if rows.get(v, {}).get("model_plausible") is False]
    if unselected:
        table.caption = "† no validation was plausible (volume guard): the last step's model, not a selected one"
    for v in variants:
        if v not in rows:
            table.add_row(LABELS[v], "failed" if v in failed else "missing", "", "", "", "", "")
            continue
        s = rows[v]
        pct = 100.0 * s["dice"]["mean"] / ts if ts else float("nan")
        out[v] = {**s, "percent_of_target_supervised": pct}
        vol = s.get("volume_ml", {})
        volumes = f"{vol['pred']:.0f} / {vol['ref']:.0f}" if vol.get("ref") is not None else ""
        table.add_row(
            LABELS[v] + (" †" if v in unselected else ""),
            fmt(s["dice"]),
            fmt(s["hd95"], 1),
            fmt(s["assd"], 1),
            "n/a" if math.isnan(pct) else f"{pct:.0f} %",
            volumes,
            str(s["dice"]["n"]),
        )
    return table, out


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Wall seconds of every pipeline job: submission (``pipeline.json``) to its DONE marker.

    The local executor records each job when it submits it; the stage writes its marker as its
    last act, so the difference is the job's whole life (process start, imports, DeepSpeed
    set-up, work). Jobs without a marker (failed, still running) are left out.
    """
    record = load_record(run_dir)
    markers = {n["name"]: Path(n["run_dir"]) / n["marker"] for n in record["nodes"]}
    out: dict[str, float] = {}
    for job in record["jobs"]:
        marker = markers.get(job["node"])
        if marker is not None and marker.is_file():
            submitted = time.mktime(time.strptime(job["submitted"], "%Y-%m-%dT%H:%M:%S"))
            out[job["node"]] = round(marker.stat().st_mtime - submitted, 1)
    return out


def stage_table(seconds: dict[str, float]) -> Table:
    table = Table(title="Pipeline jobs (wall seconds, submission to DONE; independent jobs overlap)")
    table.add_column("job")
    table.add_column("s", justify="right")
    for name, s in seconds.items():
        table.add_row(name, f"{s:.0f}")
    return table


def demo_data(
    data_dir: Path,
    cases: int = DEMO_CASES,
    seed: int = 0,
    spacing: int = 4,
    config: str = "demo_cpu",
    overrides: list[str] | None = None,
) -> tuple[Path, Path]:
    """The demo's dataset in ``data_dir`` (phantom, store, split; each step skipped when done).

    Separate from ``run_demo`` so that runs sharing one dataset (``benchmarks/adaptation.py``'s
    seeds side by side) prepare it once, before they start, instead of racing on it.
    """
    cfg0 = load_config(config, overrides)
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return prepare_data(data_dir, cases, seed, spacing, cfg0.data.source, cfg0.data.target, val=0.15, test=0.25)


def run_demo(
    out: str | os.PathLike = "demo_out",
    cases: int = DEMO_CASES,
    seed: int = 0,
    spacing: int = 4,
    config: str = "demo_cpu",
    executor: str = "local",
    overrides: list[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    variants: tuple[str, ...] = VARIANTS,
    prepared: tuple[Path, Path] | None = None,
) -> Path:
    """Run the demo end to end into ``out``; returns the folder with ``results.json``.

    ``seed`` makes the phantom and the split; the training seed is ``train.seed`` (an override).
    ``data_dir``: where the phantom, store and split live (default ``out``), so several runs
    (e.g. ``benchmarks/adaptation.py``'s seeds) can share one dataset. ``variants``: the rows of
    the table (default all four; without semi-supervised the demo takes about half the time).
    ``prepared``: (store, split) that ``demo_data`` made beforehand, for runs started side by side
    (the store's writer lock would refuse all but one of them).
    """
    unknown = sorted(set(variants) - set(CHOICES))
    if unknown or not variants:
        raise ConfigError(f"demo variants {unknown or list(variants)} are not among {list(CHOICES)}")
    t0 = time.time()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = log_console()  # >= 120 columns when logging to a file: tables never wrap
    store, split = prepared or demo_data(Path(data_dir) if data_dir else out, cases, seed, spacing, config, overrides)
    t_data = time.time() - t0
    cfg = load_config(
        config,
        [
            f"run_root={out / 'runs'}",
            f"data.store={store}",
            f"data.split={split}",
            f"pipeline.executor={executor}",
            f"pipeline.variants=[{','.join(variants)}]",
            *(overrides or []),
        ],
    )
    t_pipe = time.time()
    failure: StagesFailed | None = None
    try:
        run_pipeline(cfg)
    except StagesFailed as e:  # report what finished, then fail
        failure = e
    t_pipe = time.time() - t_pipe
    failed_variants = frozenset(
        v for v in variants if failure and any(v in name for name in (*failure.failed, *failure.skipped))
    )
    table, summary = results_table(cfg.run_dir, variants, failed_variants)
    jobs = stage_seconds(cfg.run_dir)
    elapsed = time.time() - t0
    console.print(stage_table(jobs))
    console.print(table)
    # the table is reproducible only on CPUs with the same kernel path (host.py): say which one made it
    machine = host_facts()
    console.print(
        f"demo finished in {elapsed / 60:.1f} min (data {t_data:.0f} s) on {describe_host(machine)}; "
        f"panels in {cfg.run_dir}/evaluate-*/panels/"
    )
    atomic_write_json(
        out / "results.json",
        {
            "variants": summary,
            "seconds": elapsed,
            "data_seconds": t_data,
            "pipeline_seconds": t_pipe,
            "job_seconds": jobs,
            "cases": cases,
            "seed": seed,
            "config": config,
            "failed": dict(failure.failed) if failure else {},
            "machine": machine,
        },
    )
    rec = Console(record=True, width=120, file=io.StringIO())
    rec.print(table)
    atomic_write_text(out / "results.txt", rec.export_text())
    if failure:
        raise failure
    return out
