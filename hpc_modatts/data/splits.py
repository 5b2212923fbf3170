"""Experiment splits: which case plays source or target, which are annotated, val/test, folds.

A split is a small JSON *view* of one store (convert once, experiment many times):
the 12 BraTS ordered contrast pairs and every annotation fraction reuse the same store.

Semantics (thesis 5.5.1 "Datasets", 5.5.4):
- val/test cases are evaluated on the TARGET modality with their masks (37/37 of 369 BraTS cases
  with the default 0.1/0.1);
- the remaining training cases are UNPAIRED: each contributes exactly one modality, source or
  target (a seeded half/half assignment of the cases holding both; a case holding only one of the
  two, as in CrossMoDA, goes to that side);
- annotated subsets are nested across fractions: the first ceil(f * n) cases of one fixed seeded
  permutation (at least one case when f > 0), so the 10 % set contains the 1 % set;
- folds: K folds over the training cases for the segmentation stage (thesis 5.5.1: 5-fold
  cross-validation for CrossMoDA); with K = 1 the fold's val is the split's val.

Every random choice uses its own numpy stream derived from ``seed``, so e.g. changing the
annotated fractions never changes the val/test cases or the source/target assignment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpc_modatts.config import ConfigError
from hpc_modatts.data.aliases import canonical, resolve
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.store import Store
from hpc_modatts.runs import atomic_write_json

SPLIT_FORMAT = 1
# independent random streams (np.random.default_rng([seed, stream]))
_STREAM_HOLDOUT, _STREAM_SIDES, _STREAM_SOURCE_LABELS, _STREAM_TARGET_LABELS, _STREAM_FOLDS = range(5)
_LIST_FIELDS = ("source_train", "source_labeled", "target_train", "target_labeled", "val", "test")


@dataclass
class Split:
    """One experiment's view of a store (see docs/interfaces.md "Split")."""

    source: str
    target: str
    source_train: list[str]
    """Cases contributing their SOURCE modality only."""
    source_labeled: list[str]
    """Subset of ``source_train`` whose masks are used (nested across fractions)."""
    target_train: list[str]
    """Cases contributing their TARGET modality only (disjoint from ``source_train``)."""
    target_labeled: list[str]
    """Subset of ``target_train`` whose masks are used."""
    val: list[str]
    """Validation cases, evaluated on the target modality with masks."""
    test: list[str]
    """Test cases, evaluated on the target modality with masks."""
    folds: list[dict] = field(default_factory=list)
    """Per fold: {"source_train": [...], "target_train": [...], "val": [...]}."""
    meta: dict = field(default_factory=dict)
    """How the split was made: store path, seed, fractions (provenance only)."""

    # ------------------------------------------------------------------ views
    def fold(self, k: int) -> "Split":
        """The split seen by fold ``k``: that fold's train/val lists, labeled subsets restricted to them."""
        if not 0 <= k < len(self.folds):
            raise ConfigError(f"data.fold={k} is out of range: the split has {len(self.folds)} fold(s)")
        f = self.folds[k]
        src, tgt = list(f["source_train"]), list(f["target_train"])
        return dataclasses.replace(
            self,
            source_train=src,
            target_train=tgt,
            val=list(f["val"]),
            source_labeled=[c for c in self.source_labeled if c in set(src)],
            target_labeled=[c for c in self.target_labeled if c in set(tgt)],
            folds=[f],
            meta={**self.meta, "fold": k},
        )

    def all_cases(self) -> list[str]:
        return sorted(set().union(*(getattr(self, n) for n in _LIST_FIELDS)))

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the split as JSON, atomically (temp name then rename)."""
        return atomic_write_json(path, {"format": SPLIT_FORMAT, **dataclasses.asdict(self)})

    @classmethod
    def load(cls, path: str | os.PathLike, store: Store | str | os.PathLike | None = None) -> "Split":
        """Read a split JSON; DataError if missing, corrupt, inconsistent, naming unknown cases,
        or made for another store.

        Cases are checked against ``store`` when given, else against the store recorded in the
        file when that path exists; so is the store's identity (``store_id``, minted when the
        store was created): a split of another store with the same case ids is refused.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: split file not found")
        try:
            raw = json.loads(path.read_text())
            split = cls(**{k: v for k, v in raw.items() if k != "format"})
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a valid split file ({type(e).__name__}: {e})") from None
        split._check_consistent(str(path))
        if store is None and split.meta.get("store") and Path(split.meta["store"]).exists():
            store = split.meta["store"]
        if store is not None:
            store = store if isinstance(store, Store) else Store.open(store)
            made_for, this = split.meta.get("store_id"), store.root_attrs.get("store_id")
            if made_for and this and made_for != this:
                raise DataError(
                    f"{path}: made for store {split.meta.get('store')} (id {made_for}), not for "
                    f"{store.path} (id {this}); make a split of this store with `hpc-modatts split`"
                )
            unknown = sorted(set(split.all_cases()) - set(store.case_ids))
            if unknown:
                raise DataError(f"{path}: {len(unknown)} case(s) not in store {store.path}: {unknown[:5]}")
        return split

    def _check_consistent(self, where: str) -> None:
        for name in _LIST_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
                raise DataError(f"{where}: {name} must be a list of case ids")
        problems = {
            "source_labeled is not a subset of source_train": set(self.source_labeled) - set(self.source_train),
            "target_labeled is not a subset of target_train": set(self.target_labeled) - set(self.target_train),
            "source_train and target_train overlap": set(self.source_train) & set(self.target_train),
            "training and val/test cases overlap": (set(self.source_train) | set(self.target_train))
            & (set(self.val) | set(self.test)),
            "val and test overlap": set(self.val) & set(self.test),
        }
        for what, bad in problems.items():
            if bad:
                raise DataError(f"{where}: {what}: {sorted(bad)[:5]}")
        for k, f in enumerate(self.folds):
            if not isinstance(f, dict) or set(f) != {"source_train", "target_train", "val"}:
                raise DataError(f"{where}: fold {k} must have exactly source_train, target_train, val")


# ---------------------------------------------------------------------------- building
def _check_fraction(key: str, value: float, low: float, high: float = 1.0) -> float:
    value = float(value)
    if not low <= value <= high:
        raise ConfigError(f"{key}={value} must be in [{low}, {high}]")
    return value


def _first_fraction(cases: list[str], fraction: float) -> list[str]:
    """The first ceil(fraction * n) cases (at least one when fraction > 0), in the given order."""
    if fraction <= 0 or not cases:
        return []
    return cases[: max(1, math.ceil(fraction * len(cases) - 1e-9))]


def _permuted(cases: list[str], seed: int, stream: int) -> list[str]:
    rng = np.random.default_rng([seed, stream])
    return [cases[i] for i in rng.permutation(len(cases))]


def _case_info(store: Store, source: str, target: str) -> dict[str, dict[str, Any]]:
    """Per case: which of the two modalities it holds and whether it has a mask."""
    info = {}
    for case in store.case_ids:
        mods = set(store.modalities(case))
        if source not in mods and target not in mods:
            raise DataError(
                f"{store.path}: case {case!r} has neither modality {source!r} nor {target!r} (has {sorted(mods)})"
            )
        info[case] = {
            "source": source in mods,
            "target": target in mods,
            "mask": bool(store.attrs(case).get("has_mask", False)),
        }
    return info


def _holdout(info: dict, val: float, test: float, seed: int, where: str) -> tuple[list[str], list[str]]:
    """Val/test cases: drawn from cases holding the target modality and a mask."""
    n_total = len(info)
    n_val = max(1, round(val * n_total)) if val > 0 else 0
    n_test = max(1, round(test * n_total)) if test > 0 else 0
    eligible = _permuted(sorted(c for c, i in info.items() if i["target"] and i["mask"]), seed, _STREAM_HOLDOUT)
    if n_val + n_test > len(eligible):
        raise DataError(
            f"{where}: val={val} and test={test} need {n_val + n_test} cases with the target "
            f"modality and a mask, only {len(eligible)} exist"
        )
    return sorted(eligible[:n_val]), sorted(eligible[n_val : n_val + n_test])


def _assign_sides(info: dict, train: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Unpaired: each training case gives ONE modality; cases holding both are split half/half."""
    both = _permuted(sorted(c for c in train if info[c]["source"] and info[c]["target"]), seed, _STREAM_SIDES)
    half = math.ceil(len(both) / 2)
    source_train = sorted(both[:half] + [c for c in train if info[c]["source"] and not info[c]["target"]])
    target_train = sorted(both[half:] + [c for c in train if info[c]["target"] and not info[c]["source"]])
    return source_train, target_train


def _labeled(info: dict, train: list[str], fraction: float, seed: int, stream: int, side: str, where: str) -> list[str]:
    """Nested annotated subset: first ceil(f * n) of a seeded permutation of the masked cases."""
    with_mask = [c for c in train if info[c]["mask"]]
    if fraction > 0 and not with_mask:
        raise DataError(f"{where}: {side}_labeled={fraction} but no {side} training case has a mask")
    return sorted(_first_fraction(_permuted(with_mask, seed, stream), fraction))


def _make_folds(
    info: dict, source_train: list[str], target_train: list[str], val: list[str], folds: int, seed: int, where: str
) -> list[dict]:
    """K folds over the training cases; a fold's val cases need the target modality and a mask."""
    if folds == 1:
        return [{"source_train": list(source_train), "target_train": list(target_train), "val": list(val)}]
    train = sorted(source_train + target_train)
    eligible = _permuted([c for c in train if info[c]["target"] and info[c]["mask"]], seed, _STREAM_FOLDS)
    if len(eligible) < folds:
        raise DataError(
            f"{where}: {folds} folds need >= {folds} training cases with the target modality "
            f"and a mask, only {len(eligible)} exist"
        )
    groups = np.array_split(np.arange(len(eligible)), folds)
    out = []
    for g in groups:
        fold_val = {eligible[i] for i in g}
        out.append(
            {
                "source_train": [c for c in source_train if c not in fold_val],
                "target_train": [c for c in target_train if c not in fold_val],
                "val": sorted(fold_val),
            }
        )
    return out


def make_split(
    store: Store | str | os.PathLike,
    source: str,
    target: str,
    source_labeled: float = 1.0,
    target_labeled: float = 0.0,
    val: float = 0.1,
    test: float = 0.1,
    folds: int = 1,
    seed: int = 0,
) -> Split:
    """Build the unpaired split of one source/target pair (see the module docstring).

    ``source``/``target`` may use any alias of a stored name (``t1c`` for ``t1ce``, see
    ``hpc_modatts.data.aliases``); the split records the stored names.
    """
    store = store if isinstance(store, Store) else Store.open(store)
    stored = store.root_attrs.get("modalities") or sorted({m for c in store.case_ids for m in store.modalities(c)})
    if source and target and canonical(source) != canonical(target):
        source = resolve(source, stored, f"{store.path} (--source)")
        target = resolve(target, stored, f"{store.path} (--target)")
    where = f"{store.path} ({source}->{target})"
    if not source or not target or source == target:
        raise ConfigError(f"source={source!r} and target={target!r} must be two different modality names")
    source_labeled = _check_fraction("source_labeled", source_labeled, 0.01)
    target_labeled = _check_fraction("target_labeled", target_labeled, 0.0)
    val, test = _check_fraction("val", val, 0.0, 0.9), _check_fraction("test", test, 0.0, 0.9)
    if not isinstance(folds, int) or folds < 1:
        raise ConfigError(f"folds={folds!r} must be an integer >= 1")
    info = _case_info(store, source, target)
    if not any(i["source"] for i in info.values()) or not any(i["target"] for i in info.values()):
        raise DataError(f"{where}: the store needs cases with modality {source!r} and with {target!r}")
    val_cases, test_cases = _holdout(info, val, test, seed, where)
    held = set(val_cases) | set(test_cases)
    source_train, target_train = _assign_sides(info, [c for c in sorted(info) if c not in held], seed)
    if not source_train or not target_train:
        raise DataError(
            f"{where}: too few cases ({len(info)}): after val/test, {len(source_train)} source and "
            f"{len(target_train)} target training cases remain; need >= 1 of each"
        )
    split = Split(
        source=source,
        target=target,
        source_train=source_train,
        source_labeled=_labeled(info, source_train, source_labeled, seed, _STREAM_SOURCE_LABELS, "source", where),
        target_train=target_train,
        target_labeled=_labeled(info, target_train, target_labeled, seed, _STREAM_TARGET_LABELS, "target", where),
        val=val_cases,
        test=test_cases,
        folds=_make_folds(info, source_train, target_train, val_cases, folds, seed, where),
        meta={
            "store": str(store.path),
            "store_id": store.root_attrs.get("store_id"),
            "seed": seed,
            "source_labeled": source_labeled,
            "target_labeled": target_labeled,
            "val": val,
            "test": test,
            "n_folds": folds,
        },
    )
    split._check_consistent(where)
    return split
