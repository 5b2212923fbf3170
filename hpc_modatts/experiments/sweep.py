"""Annotation-budget sweeps: every (source fraction, target fraction, seed) point in ONE DAG.

``hpc-modatts sweep CONFIG --source-labeled 1,0.4 --target-labeled 0,0.2 --seeds 0,1,2
[--variants ...] --executor slurm|local|debug`` makes one split per point with the split tool
(``make_split(seed=seed)``: for one seed the annotated sets are nested, the 10 % set contains
the 1 % set), one pipeline per point, merges them into one DAG in which every shared stage is
a single node, and submits it at once (SLURM: each job with ``afterok`` on its parents).
``hpc-modatts pipeline CONFIG --seeds 0,1,2`` is the same with the config's own split for every
seed (only ``train.seed`` varies).

Sweep folder (``<run_root>/<name>``)::

    sweep.json                 spec, resolved config, points, units (which points share what)
    pipeline.json, submitit/   every node and job of the sweep (``hpc-modatts status``)
    splits/<point>.json        <point> = src<f>_tgt<f>_seed<s>
    points/<point>/            the MoDATTS variants of one point: segment-*/, predict-*/, evaluate-*/
    shared/src<f>_seed<s>/     translate/ (with synth.zarr) and the source-supervised bound
    shared/seed<s>/            the target-supervised bound

The plan (points, units, what is shared and why that is valid, the DAG) is made by
``hpc_modatts.experiments.plan``; this module checks, records and submits it. Rerunning the
same command submits only what is neither DONE nor (SLURM) still queued or running; a sweep
folder refuses a changed config, naming the key, so that its points never mix two settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from hpc_modatts.config import ConfigError, ExperimentConfig, apply_overrides, config_to_dict
from hpc_modatts.data.convert import convert
from hpc_modatts.experiments.plan import (
    SWEEP_FILE,
    Point,
    SweepSpec,
    Unit,
    check_sharing,
    fraction_label,
    load_sweep,
    make_points,
    plan_units,
    print_plan,
    sweep_dag,
)
from hpc_modatts.pipeline.dag import MODATTS_VARIANTS
from hpc_modatts.pipeline.status import slurm_in_flight
from hpc_modatts.pipeline.submit import EXECUTORS, check_inputs, run_pipeline
from hpc_modatts.pipeline.waves import default_parallel
from hpc_modatts.runs import atomic_write_json

__all__ = [
    "run_sweep",
    "check_same_config",
    "default_parallel",
    # the plan, re-exported: ``sweep`` is where callers already import it from
    "SweepSpec",
    "Point",
    "Unit",
    "check_sharing",
    "fraction_label",
    "load_sweep",
    "make_points",
    "plan_units",
    "sweep_dag",
]

log = logging.getLogger(__name__)

FREE_KEYS = (
    "name",
    "run_root",
    "pipeline.executor",
    "pipeline.cluster",
    "pipeline.timeout_min",
    "pipeline.mem_gb",
    "pipeline.variants",
)
"""Config keys a rerun may change in an existing sweep folder (where/how jobs run, which variants)."""


# ----------------------------------------------------------------------------- running
def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, f"{key}.") if isinstance(v, dict) and v else {key: v})
    return out


def check_same_config(sweep_dir: Path, cfg: ExperimentConfig, resplit: bool) -> None:
    """A sweep folder keeps one config: ConfigError naming the first key that changed.

    With ``resplit`` the splits are the sweep's own (each file is checked by ``make_points``);
    without, ``data.split`` is the one split of every point and must not change."""
    if not (sweep_dir / SWEEP_FILE).is_file():
        return
    saved = load_sweep(sweep_dir)
    if bool(saved.get("spec", {}).get("resplit", True)) != resplit:
        raise ConfigError(
            f"sweep {sweep_dir} was made {'with' if not resplit else 'without'} the config's own "
            f"split (`pipeline --seeds` vs `sweep`); give this run another name"
        )
    old = _flat(saved.get("config", {}))
    new = _flat(json.loads(json.dumps(config_to_dict(cfg))))
    free = FREE_KEYS + (("data.split",) if resplit else ())
    for key in sorted(set(old) | set(new)):
        if key not in free and old.get(key) != new.get(key):
            raise ConfigError(
                f"sweep {sweep_dir} was made with {key}={old.get(key)!r}, now {new.get(key)!r}; "
                f"its runs would mix two settings: give the sweep another name"
            )


def _check_self_training(cfg: ExperimentConfig, points: list[Point], variants: list[str]) -> None:
    """Self-training pseudo-labels the unannotated target cases: a point annotating all of them fails."""
    if cfg.pipeline.self_training_rounds and any(v in MODATTS_VARIANTS for v in variants):
        for p in points:
            if p.counts["target_labeled"] >= p.counts["target_train"]:
                raise ConfigError(
                    f"point {p.id}: every target training case is annotated, so self-training "
                    f"(pipeline.self_training_rounds={cfg.pipeline.self_training_rounds}) has nothing "
                    f"to pseudo-label; lower --target-labeled or set pipeline.self_training_rounds=0"
                )


def _ensure_store(cfg: ExperimentConfig) -> None:
    """Convert ``pipeline.source_dir`` once when the store is missing (every point needs it to split)."""
    if Path(cfg.data.store).exists() or not cfg.pipeline.source_dir:
        return
    log.info("sweep: converting %s into %s once for every point", cfg.pipeline.source_dir, cfg.data.store)
    convert(cfg.pipeline.source_dir, cfg.data.store, layout=cfg.pipeline.layout, workers=cfg.pipeline.cpus_per_task)


def run_sweep(
    cfg: ExperimentConfig,
    spec: SweepSpec,
    executor: str | None = None,
    cluster: str | None = None,
    max_parallel: int | None = None,
    dry_run: bool = False,
) -> Path:
    """Plan, record and submit (slurm) or run (local/debug) a sweep; returns the sweep folder."""
    executor = executor or cfg.pipeline.executor
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r} is not one of {list(EXECUTORS)}")
    for key in ("translator_run", "pseudo_target_store", "init_from", "pseudo_labels"):
        if getattr(cfg.train, key):
            raise ConfigError(f"train.{key} is set: a sweep trains its own stages per point; unset it")
    if not cfg.data.store:
        raise ConfigError("data.store is empty: give the converted store (or pipeline.source_dir)")
    sweep_dir = cfg.run_dir.resolve()
    if not dry_run:
        _ensure_store(cfg)
    variants = spec.variants or list(cfg.pipeline.variants)
    points, splits = make_points(cfg, spec, sweep_dir, write=not dry_run)
    _check_self_training(cfg, points, variants)
    units = plan_units(points, variants)
    check_sharing(units, splits)
    base = apply_overrides(
        cfg,
        [
            f"run_root={json.dumps(str(sweep_dir.parent))}",
            f"name={json.dumps(sweep_dir.name)}",
            f"data.split={json.dumps(points[0].split)}",
            f"pipeline.executor={executor}",
        ],
    )
    dag = sweep_dag(base, units, sweep_dir)
    if dry_run:
        print_plan(points, units, dag)
        return sweep_dir
    check_inputs(base, executor)
    check_same_config(sweep_dir, base, spec.resplit)
    atomic_write_json(
        sweep_dir / SWEEP_FILE,
        {
            "format": 1,
            "name": sweep_dir.name,
            "spec": dataclasses.asdict(spec),
            "variants": variants,
            "config": config_to_dict(base),
            "points": [dataclasses.asdict(p) for p in points],
            "units": [dataclasses.asdict(u) for u in units],
        },
    )
    in_flight = slurm_in_flight(sweep_dir) if executor == "slurm" else {}
    if in_flight:
        log.info("sweep: %d node(s) still queued/running from an earlier submission; not resubmitted", len(in_flight))
    parallel = max_parallel or (default_parallel(cfg) if executor == "local" else None)
    run_pipeline(
        base, executor=executor, cluster=cluster, dag=dag, check=False, max_parallel=parallel, in_flight=in_flight
    )
    return sweep_dir
