"""The plan of a sweep: its points, their splits, the run folders (units) and the one DAG.

A point is one (source fraction, target fraction, seed); its split comes from the split tool
(``make_split(seed=seed)``: for one seed the annotated sets are nested). ``plan_units`` groups
the points' runs into units, the folders under the sweep, so that every shared stage is a
single node of ``sweep_dag``. ``sweep.json`` records the plan (``load_sweep``); ``print_plan``
shows it (``--dry-run``).

What is shared, and why it is valid (``SHARED_READS``, compared on the split files before
anything is submitted; a difference is an error, never a silent share):

* the converted store, by every point: a split is a view of it, nothing is reconverted;
* stage 1 (translate) and synthesis, by the points with the same source fraction AND seed:
  they read the modality names, ``source_train``, ``source_labeled``, ``target_train``
  (unannotated images) and ``val``, never ``target_labeled``. The split tool draws val/test,
  the source/target sides and the source annotations from their own random streams of the
  seed, so these lists are the same for every target fraction; every point runs the sweep's
  one config with ``train.seed`` = its seed, so the stage-1 inputs are identical;
* the source-supervised bound, by the same group (annotated source volumes; ``val``/``test``/
  ``folds`` depend on the seed only);
* the target-supervised bound, by every point of a seed: it trains on EVERY ``target_train``
  mask, not on ``target_labeled``.

Not shared: the MoDATTS variants (their Dice on annotated target volumes follows the target
fraction; lambda_seg^pT and the pseudo-targets follow the source fraction).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hpc_modatts.config import VARIANTS, ConfigError, ExperimentConfig, apply_overrides
from hpc_modatts.console import log_console
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.splits import Split, make_split
from hpc_modatts.data.store import Store
from hpc_modatts.pipeline.dag import MODATTS_VARIANTS, Dag, Node, build_dag
from hpc_modatts.runs import read_json, stage_dir

SWEEP_FILE = "sweep.json"
SHARED_READS: dict[str, tuple[str, ...]] = {
    "translator": ("source", "target", "source_train", "source_labeled", "target_train", "val"),
    "source-supervised": ("source", "target", "source_labeled", "val", "test", "folds"),
    "target-supervised": ("source", "target", "target_train", "val", "test", "folds"),
}
"""Split fields each shared stage reads (translate+synthesize, the two bounds' whole chains).
A stage that starts reading another field must be listed here, or sharing becomes invalid."""


@dataclass
class SweepSpec:
    """What varies across the points of a sweep."""

    source_labeled: list[float] = field(default_factory=lambda: [1.0])
    """Annotated fractions of the source training cases (nested for one seed)."""
    target_labeled: list[float] = field(default_factory=lambda: [0.0])
    """Annotated fractions of the target training cases (nested for one seed)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Per seed: the split's random streams (val/test, sides, annotated subsets) and train.seed."""
    variants: list[str] = field(default_factory=list)
    """Stage-2 variants of every point ([] = the config's pipeline.variants)."""
    val: float = 0.1
    """Validation fraction of every split."""
    test: float = 0.1
    """Test fraction of every split."""
    resplit: bool = True
    """False: every point uses the config's data.split as is and only train.seed varies."""

    def __post_init__(self) -> None:
        for key, values, low in (
            ("source_labeled", self.source_labeled, 0.01),
            ("target_labeled", self.target_labeled, 0.0),
        ):
            values = [float(v) for v in values]
            if not values or len(set(values)) != len(values) or not all(low <= v <= 1.0 for v in values):
                raise ConfigError(f"--{key.replace('_', '-')} {values}: give distinct fractions in [{low}, 1]")
            setattr(self, key, values)
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"--seeds {self.seeds}: give distinct integers >= 0")
        for v in self.variants:
            if v not in VARIANTS:
                raise ConfigError(f"--variants: {v!r} is not one of {list(VARIANTS)}")
        for key in ("val", "test"):
            if not 0.0 <= getattr(self, key) <= 0.9:
                raise ConfigError(f"--{key} {getattr(self, key)} must be in [0, 0.9]")


@dataclass
class Point:
    """One (source fraction, target fraction, seed) of the sweep."""

    id: str
    source_fraction: float
    target_fraction: float
    seed: int
    split: str
    counts: dict[str, int]
    """Cases per split list (source_train, source_labeled, target_train, target_labeled, test)."""
    units: dict[str, str] = field(default_factory=dict)
    """Variant -> id of the unit (folder under the sweep) holding its runs."""


@dataclass
class Unit:
    """A folder of runs under the sweep: one point's MoDATTS variants, or a shared group."""

    id: str
    """Folder relative to the sweep: points/<point>, shared/src<f>_seed<s>, shared/seed<s>."""
    split: str
    seed: int
    variants: list[str] = field(default_factory=list)
    translator: bool = False
    """Trains stage 1 + synthesis in this folder (shared by the points of its group)."""
    translator_from: str = ""
    """Id of the unit whose translator this unit's MoDATTS variants use."""
    shared_by: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    """Extra dotted config overrides of every node of the unit (benchmarks)."""


def fraction_label(f: float) -> str:
    return f"{f:g}"


def point_id(source: float, target: float, seed: int) -> str:
    return f"src{fraction_label(source)}_tgt{fraction_label(target)}_seed{seed}"


# ----------------------------------------------------------------------------- splits
def _counts(split: Split) -> dict[str, int]:
    return {
        k: len(getattr(split, k))
        for k in ("source_train", "source_labeled", "target_train", "target_labeled", "val", "test")
    }


def _split_fractions(split: Split) -> tuple[float, float]:
    meta = split.meta or {}
    src = meta.get("source_labeled", len(split.source_labeled) / max(1, len(split.source_train)))
    tgt = meta.get("target_labeled", len(split.target_labeled) / max(1, len(split.target_train)))
    return float(src), float(tgt)


def _comparable(split_json: dict) -> dict:
    return {k: v for k, v in split_json.items() if k not in ("meta", "format")}


def make_points(
    cfg: ExperimentConfig, spec: SweepSpec, sweep_dir: Path, write: bool = True
) -> tuple[list[Point], dict[str, Split]]:
    """The points and their splits; writes ``splits/<point>.json`` (an existing file must match)."""
    if not spec.resplit:
        if not cfg.data.split:
            raise ConfigError("data.split is empty: `pipeline --seeds` runs every seed on the config's split")
        split = Split.load(cfg.data.split)
        path = str(Path(cfg.data.split).resolve())
        src, tgt = _split_fractions(split)
        points = [Point(point_id(src, tgt, s), src, tgt, s, path, _counts(split)) for s in spec.seeds]
        return points, {p.id: split for p in points}
    store = Store.open(cfg.data.store)
    points, splits = [], {}
    for seed in spec.seeds:
        for src in spec.source_labeled:
            for tgt in spec.target_labeled:
                split = make_split(
                    store,
                    cfg.data.source,
                    cfg.data.target,
                    source_labeled=src,
                    target_labeled=tgt,
                    val=spec.val,
                    test=spec.test,
                    folds=cfg.pipeline.folds,
                    seed=seed,
                )
                pid = point_id(src, tgt, seed)
                split_path = sweep_dir / "splits" / f"{pid}.json"
                if split_path.is_file():
                    old = read_json(split_path, "does not exist")
                    new = json.loads(json.dumps(dataclasses.asdict(split)))
                    if _comparable(old) != _comparable(new):
                        raise DataError(
                            f"{split_path}: differs from the split this sweep makes now (store, "
                            f"--val/--test or pipeline.folds changed); use another sweep name"
                        )
                elif write:
                    split.save(split_path)
                points.append(Point(pid, src, tgt, seed, str(split_path), _counts(split)))
                splits[pid] = split
    return points, splits


# ----------------------------------------------------------------------------- units
def plan_units(points: list[Point], variants: list[str]) -> list[Unit]:
    """Group the points' runs into units (see the module docstring); fills ``Point.units``."""
    units: dict[str, Unit] = {}

    def unit(uid: str, p: Point) -> Unit:
        u = units.setdefault(uid, Unit(uid, p.split, p.seed))
        if p.id not in u.shared_by:
            u.shared_by.append(p.id)
        return u

    for p in points:
        group = f"shared/src{fraction_label(p.source_fraction)}_seed{p.seed}"
        for v in variants:
            if v == "source-supervised":
                u = unit(group, p)
            elif v == "target-supervised":
                u = unit(f"shared/seed{p.seed}", p)
            else:
                u = unit(f"points/{p.id}", p)
                if v in MODATTS_VARIANTS:  # M-GenSeg trains end to end: no stage 1
                    translator = unit(group, p)
                    translator.translator = True
                    u.translator_from = translator.id
            if v not in u.variants:
                u.variants.append(v)
            p.units[v] = u.id
    return list(units.values())


def check_sharing(units: list[Unit], splits: dict[str, Split]) -> None:
    """Every unit shared by several points sees equal split fields for what it runs; DataError if not."""
    for u in units:
        roles = (["translator"] if u.translator else []) + [v for v in u.variants if v in SHARED_READS]
        fields = sorted({f for r in roles for f in SHARED_READS[r]})
        first = u.shared_by[0]
        for other in u.shared_by[1:]:
            for f in fields:
                if getattr(splits[first], f) != getattr(splits[other], f):
                    raise DataError(
                        f"sweep unit {u.id}: the splits of {first} and {other} differ in {f!r}, "
                        f"so {roles} cannot be shared between them"
                    )


# ----------------------------------------------------------------------------- DAG
def unit_overrides(u: Unit, sweep_dir: Path) -> dict[str, Any]:
    """Dotted overrides turning the sweep's config into this unit's experiment config."""
    d = sweep_dir / u.id
    out: dict[str, Any] = {
        "run_root": str(d.parent),
        "name": d.name,
        "data.split": u.split,
        "train.seed": u.seed,
        "pipeline.variants": list(u.variants),
    }
    if u.translator_from:
        translator = stage_dir(sweep_dir / u.translator_from, "translate")
        out["train.translator_run"] = str(translator)
        out["train.pseudo_target_store"] = str(translator / "synth.zarr")
    return {**out, **u.overrides}


def unit_nodes(base: ExperimentConfig, u: Unit, sweep_dir: Path) -> list[Node]:
    """The unit's part of the experiment DAG (``build_dag``), names prefixed with the unit id."""
    over = unit_overrides(u, sweep_dir)
    build_variants = list(u.variants)
    if u.translator and not any(v in MODATTS_VARIANTS for v in build_variants):
        build_variants.append(MODATTS_VARIANTS[0])  # makes build_dag emit translate + synthesize; dropped below
    items = {**over, "pipeline.variants": build_variants}.items()
    cfg = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in items])
    shared_synth = f"{u.translator_from}/synthesize"
    nodes = []
    for n in build_dag(cfg).topological():
        if n.name in ("translate", "synthesize"):
            if not u.translator:  # this unit's MoDATTS variants use the shared group's translator
                expected = stage_dir(sweep_dir / u.translator_from, "translate")
                assert n.run_dir == expected, f"{u.id}: synthesis in {n.run_dir}, expected {expected}"
                continue
        elif n.overrides.get("train.variant") not in u.variants:
            continue
        deps = tuple(shared_synth if d == "synthesize" and not u.translator else f"{u.id}/{d}" for d in n.deps)
        nodes.append(dataclasses.replace(n, name=f"{u.id}/{n.name}", overrides={**over, **n.overrides}, deps=deps))
    return nodes


def sweep_dag(base: ExperimentConfig, units: list[Unit], sweep_dir: Path) -> Dag:
    return Dag([n for u in units for n in unit_nodes(base, u, sweep_dir)])


# ----------------------------------------------------------------------------- record, dry run
def load_sweep(sweep_dir: str | os.PathLike) -> dict:
    """``sweep.json`` of a sweep folder (DataError if missing or unreadable)."""
    return read_json(Path(sweep_dir) / SWEEP_FILE, "does not exist: not a sweep folder (run `hpc-modatts sweep`)")


def print_plan(points: list[Point], units: list[Unit], dag: Dag, console: Console | None = None) -> None:
    """``sweep --dry-run``: every run folder, its variants, its stage 1 and who shares it."""
    table = Table(
        title=f"sweep plan: {len(points)} points, {len(units)} run folders, {len(dag)} jobs "
        f"({len(dag.pending())} to run)"
    )
    for col in ("run folder", "variants", "stage 1", "shared by", "jobs"):
        table.add_column(col)
    for u in units:
        jobs = sum(1 for n in dag.nodes if n.startswith(f"{u.id}/"))
        stage1 = "trains it" if u.translator else (f"from {u.translator_from}" if u.translator_from else "-")
        table.add_row(u.id, ", ".join(u.variants) or "-", stage1, ", ".join(u.shared_by), str(jobs))
    log_console(console).print(table)
