"""Splits: unpaired disjointness, nesting across fractions, determinism, folds, errors."""

import json

import numpy as np
import pytest

from hpc_modatts.config import ConfigError
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.splits import Split, make_split
from hpc_modatts.data.store import Store


def _store(tmp_path, n=30, modalities=("t1", "t2", "flair"), mask=True, name="s.zarr"):
    """A tiny real zarr store: n cases of 4x4x4 random images."""
    store = Store.create(tmp_path / name, kind="dataset")
    rng = np.random.default_rng(0)
    for i in range(n):
        imgs = {m: rng.uniform(-1, 1, (4, 4, 4)).astype(np.float32) for m in modalities}
        m = (rng.random((4, 4, 4)) > 0.8).astype(np.uint8) if mask else None
        store.write_case(f"case{i:03d}", imgs, mask=m, attrs={"hemisphere_split": 2})
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("splits"), n=40)


def test_unpaired_disjoint_and_complete(store):
    s = make_split(store, "t1", "t2", val=0.1, test=0.1)
    assert len(s.val) == 4 and len(s.test) == 4
    train = set(s.source_train) | set(s.target_train)
    assert not set(s.source_train) & set(s.target_train)
    assert not train & (set(s.val) | set(s.test)) and not set(s.val) & set(s.test)
    assert train | set(s.val) | set(s.test) == set(store.case_ids)
    assert abs(len(s.source_train) - len(s.target_train)) <= 1  # half/half
    assert s.source_labeled == s.source_train and s.target_labeled == []  # defaults 100 % / 0 %


def test_fractions_nested_and_sized(store):
    sets = {
        f: make_split(store, "t1", "t2", source_labeled=f, target_labeled=f / 2, seed=3)
        for f in (0.01, 0.1, 0.4, 0.7, 1.0)
    }
    n = len(sets[1.0].source_train)
    for f, s in sets.items():
        assert len(s.source_labeled) == max(1, int(np.ceil(f * n)))
        assert set(s.source_labeled) <= set(s.source_train)
        assert set(s.target_labeled) <= set(s.target_train)
        assert s.val == sets[1.0].val and s.source_train == sets[1.0].source_train  # fractions change nothing else
    fr = sorted(sets)
    for small, big in zip(fr, fr[1:]):
        assert set(sets[small].source_labeled) <= set(sets[big].source_labeled)
        assert set(sets[small].target_labeled) <= set(sets[big].target_labeled)


def test_deterministic_and_seed_dependent(store):
    a, b = make_split(store, "t1", "t2", seed=7), make_split(store, "t1", "t2", seed=7)
    c = make_split(store, "t1", "t2", seed=8)
    assert a == b
    assert (a.val, a.source_train) != (c.val, c.source_train)


def test_folds_partition_training_cases(store):
    s = make_split(store, "t1", "flair", folds=5, seed=1)
    train = set(s.source_train) | set(s.target_train)
    vals = [set(f["val"]) for f in s.folds]
    assert set().union(*vals) == train and sum(map(len, vals)) == len(train)  # partition
    for k in range(len(s.folds)):
        view = s.fold(k)
        assert set(view.val) == vals[k]
        assert not (set(view.source_train) | set(view.target_train)) & vals[k]
        assert set(view.source_train) | set(view.target_train) | vals[k] == train
        assert set(view.source_labeled) <= set(view.source_train)
    one = make_split(store, "t1", "flair", folds=1, seed=1)
    assert one.fold(0).val == one.val and one.fold(0).source_train == one.source_train
    with pytest.raises(ConfigError, match="fold"):
        one.fold(1)


def test_save_load_roundtrip_and_errors(store, tmp_path):
    s = make_split(store, "t2", "t1", source_labeled=0.1, folds=2)
    p = s.save(tmp_path / "split.json")
    assert Split.load(p) == s
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temp file left
    with pytest.raises(DataError, match="not found"):
        Split.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        Split.load(tmp_path / "bad.json")
    raw = json.loads(p.read_text())
    raw["val"].append("ghost_case")
    (tmp_path / "ghost.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match="ghost_case"):
        Split.load(tmp_path / "ghost.json", store=store)
    raw = json.loads(p.read_text())
    raw["target_train"].append(raw["source_train"][0])
    (tmp_path / "overlap.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match="overlap"):
        Split.load(tmp_path / "overlap.json")


def test_bad_values_and_missing_modalities(store, tmp_path):
    for kwargs in (
        {"source_labeled": 0.0},
        {"source_labeled": 1.5},
        {"target_labeled": -0.1},
        {"folds": 0},
        {"val": 1.2},
    ):
        with pytest.raises(ConfigError):
            make_split(store, "t1", "t2", **kwargs)
    with pytest.raises(ConfigError):
        make_split(store, "t1", "t1")
    with pytest.raises(DataError, match=r"no modality 't1ce'; the store has \['flair', 't1', 't2'\]"):
        make_split(store, "t1ce", "hrT2")  # named before any case is looked at
    tiny = _store(tmp_path, n=2, name="tiny.zarr")
    with pytest.raises(DataError, match="too few cases"):
        make_split(tiny, "t1", "t2", val=0.5, test=0.0)
    with pytest.raises(DataError, match="folds need"):
        make_split(store, "t1", "t2", folds=100)


def test_crossmoda_like_unpaired_store(tmp_path):
    """Cases holding only one of the two modalities go to that side."""
    store = Store.create(tmp_path / "cm.zarr", kind="dataset")
    rng = np.random.default_rng(1)
    for i in range(6):
        store.write_case(f"src{i}", {"ceT1": rng.uniform(-1, 1, (4, 4, 4))}, mask=np.zeros((4, 4, 4)))
        store.write_case(
            f"tgt{i}", {"hrT2": rng.uniform(-1, 1, (4, 4, 4))}, mask=np.zeros((4, 4, 4)) if i < 3 else None
        )
    s = make_split(store, "ceT1", "hrT2", val=0.1, test=0.0)
    assert all(c.startswith("src") for c in s.source_train)
    assert all(c.startswith("tgt") for c in s.target_train + s.val)
    assert len(s.source_train) == 6 and len(s.val) == 1
