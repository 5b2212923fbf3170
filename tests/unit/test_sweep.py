"""Sweeps: nested splits per seed, the merged DAG's shape and what it shares, folders the stages
agree with, idempotent reruns (light stage functions on the debug executor), refused changes,
``pipeline --seeds``, and the local executor's cap on jobs alive at once."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from hpc_modatts.config import ConfigError, load_config
from hpc_modatts.data.errors import DataError
from hpc_modatts.experiments import sweep as sw
from hpc_modatts.pipeline import dag as dagmod
from hpc_modatts.pipeline.dag import Dag, Node, node_config
from hpc_modatts.pipeline.submit import run_pipeline
from hpc_modatts.runs import atomic_write_json, mark_done, stage_dir
from tests.fixtures import make_phantom_store

DEMO = Path(__file__).resolve().parents[2] / "hpc_modatts" / "configs" / "demo_cpu.yaml"
VARIANTS = ["source-supervised", "self-supervised", "target-supervised"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_phantom_store(tmp_path_factory.mktemp("sweep"), cases=8, seed=0, size="small")[1]


def sweep_cfg(tmp_path: Path, store: Path, *extra: str):
    return load_config(
        DEMO,
        [
            f"data.store={store}",
            f"run_root={tmp_path}",
            "name=sw",
            "pipeline.self_training_rounds=1",
            "pipeline.folds=1",
            *extra,
        ],
    )


SPEC = sw.SweepSpec(
    source_labeled=[1.0, 0.5], target_labeled=[0.0, 0.5], seeds=[0, 1], variants=VARIANTS, val=0.15, test=0.25
)


def plan(tmp_path, store, spec=SPEC):
    cfg = sweep_cfg(tmp_path, store)
    sweep_dir = cfg.run_dir.resolve()
    points, splits = sw.make_points(cfg, spec, sweep_dir)
    units = sw.plan_units(points, list(spec.variants))
    sw.check_sharing(units, splits)
    return cfg, sweep_dir, points, splits, units, sw.sweep_dag(cfg, units, sweep_dir)


# ----------------------------------------------------------------------------- shape
def test_splits_are_nested_per_seed_and_differ_between_seeds(tmp_path, store):
    _, sweep_dir, points, splits, _, _ = plan(tmp_path, store)
    assert len(points) == 8 and len({p.id for p in points}) == 8
    for seed in (0, 1):
        s = {(p.source_fraction, p.target_fraction): splits[p.id] for p in points if p.seed == seed}
        assert set(s[(0.5, 0.0)].source_labeled) < set(s[(1.0, 0.0)].source_labeled)
        assert set(s[(1.0, 0.0)].target_labeled) == set() < set(s[(1.0, 0.5)].target_labeled)
        assert all(Path(p.split) == sweep_dir / "splits" / f"{p.id}.json" for p in points)
    a, b = splits["src1_tgt0_seed0"], splits["src1_tgt0_seed1"]
    assert (a.test, a.source_train) != (b.test, b.source_train)  # a seed redraws the whole split


def test_dag_shares_stage1_per_source_fraction_and_seed_and_the_bounds(tmp_path, store):
    _, sweep_dir, points, _, units, dag = plan(tmp_path, store)
    names = list(dag.nodes)
    translates = [n for n in names if n.endswith("/translate")]
    assert sorted(translates) == sorted(f"shared/src{f}_seed{s}/translate" for f in ("1", "0.5") for s in (0, 1))
    assert len([n for n in names if n.endswith("/synthesize")]) == 4
    assert len([n for n in names if "/segment/target-supervised/" in n]) == 2  # one per seed
    assert len([n for n in names if "/segment/source-supervised/" in n]) == 4  # per source fraction and seed
    assert len([n for n in names if "/segment/self-supervised/fold_0" in n and "round" not in n]) == 8
    # 4 x (translate, synthesize, source-sup segment/predict/evaluate) + 2 x target-sup (3) + 8 x (4)
    assert len(dag) == 4 * 5 + 2 * 3 + 8 * 4
    for p in points:
        seg = dag[f"points/{p.id}/segment/self-supervised/fold_0"]
        group = f"shared/src{sw.fraction_label(p.source_fraction)}_seed{p.seed}"
        assert seg.deps == (f"{group}/synthesize",)
        assert dag[f"{group}/synthesize"].deps == (f"{group}/translate",)
        assert p.units == {
            "source-supervised": group,
            "self-supervised": f"points/{p.id}",
            "target-supervised": f"shared/seed{p.seed}",
        }
    shared = {u.id: u for u in units}
    assert sorted(shared["shared/seed0"].shared_by) == sorted(p.id for p in points if p.seed == 0)
    assert shared["shared/src0.5_seed1"].shared_by == ["src0.5_tgt0_seed1", "src0.5_tgt0.5_seed1"]


def test_m_genseg_points_train_no_translator(tmp_path, store):
    """M-GenSeg trains end to end: its points' segment nodes wait on nothing, and a sweep of it
    alone has no stage 1 at all."""
    spec = sw.SweepSpec(
        source_labeled=[1.0], target_labeled=[0.0], seeds=[0], variants=["m-genseg"], val=0.15, test=0.25
    )
    _, _, points, _, units, dag = plan(tmp_path, store, spec)
    assert not any(n.endswith(("/translate", "/synthesize")) for n in dag.nodes)
    assert [u.translator_from for u in units] == [""]
    assert dag[f"points/{points[0].id}/segment/m-genseg/fold_0"].deps == ()


def test_every_node_config_points_the_stage_at_the_node_folder(tmp_path, store):
    """What each stage computes from its node's config is the folder the DAG waits on."""
    cfg, sweep_dir, _, _, units, dag = plan(tmp_path, store)
    seen = 0
    for u in units:
        for node in (n for name, n in dag.nodes.items() if name.startswith(f"{u.id}/")):
            c = node_config(cfg, node)
            assert (c.run_dir, c.train.seed, c.data.split) == (sweep_dir / u.id, u.seed, u.split), node.name
            v, fold = c.train.variant, c.data.fold
            expected = {
                "translate": stage_dir(c.run_dir, "translate"),
                "synthesize": Path(c.train.translator_run or stage_dir(c.run_dir, "translate")),
                "segment": stage_dir(c.run_dir, "segment", v, fold),
                "self_training": stage_dir(c.run_dir, "self-train", v, fold, c.train.round),
                "predict": stage_dir(c.run_dir, "predict", v),
                "evaluate_node": stage_dir(c.run_dir, "evaluate", v),
            }
            assert node.run_dir == expected[node.fn.split(":")[0].rsplit(".", 1)[-1]], node.name
            if v == "self-supervised" and u.translator_from:  # MoDATTS points read their group's stage 1
                assert c.train.translator_run == str(sweep_dir / u.translator_from / "translate"), node.name
            seen += 1
    assert seen == len(dag)


def test_sharing_is_refused_when_the_splits_disagree(tmp_path, store):
    cfg = sweep_cfg(tmp_path, store)
    points, splits = sw.make_points(cfg, SPEC, cfg.run_dir.resolve())
    units = sw.plan_units(points, VARIANTS)
    p = "src1_tgt0.5_seed0"
    splits[p] = dataclasses.replace(splits[p], val=splits[p].val + ["phantom_999"])
    with pytest.raises(DataError, match="shared/src1_seed0.*differ in 'val'"):
        sw.check_sharing(units, splits)


# ----------------------------------------------------------------------------- running (light stages)
def _done(path: Path, marker: str = "DONE") -> Path:
    with open(os.environ["SWEEP_TEST_LOG"], "a") as f:  # env, not a global: the job may import this module anew
        f.write(f"{path}\n")
    mark_done(path, marker)
    return path


def light_translate(cfg):
    return _done(stage_dir(cfg.run_dir, "translate"))


def light_synthesize(cfg):
    return _done(Path(cfg.train.translator_run), dagmod.SYNTH_MARKER)


def light_segment(cfg):
    return _done(stage_dir(cfg.run_dir, "segment", cfg.train.variant, cfg.data.fold))


def light_self_train(cfg):
    return _done(stage_dir(cfg.run_dir, "self-train", cfg.train.variant, cfg.data.fold, cfg.train.round))


def light_predict(cfg):
    return _done(stage_dir(cfg.run_dir, "predict", cfg.train.variant))


def light_evaluate(cfg):
    out = stage_dir(cfg.run_dir, "evaluate", cfg.train.variant)
    atomic_write_json(
        out / "metrics.json",
        {"cases": [{"case": "c", "dice": 0.5, "hd95": 1.0, "assd": 1.0}], "summary": {"dice": {"mean": 0.5}}},
    )
    return _done(out)


@pytest.fixture
def light_stages(monkeypatch, tmp_path):
    monkeypatch.setenv("SWEEP_TEST_LOG", str(tmp_path / "ran.log"))
    for stage, fn in (
        ("translate", "light_translate"),
        ("synthesize", "light_synthesize"),
        ("segment", "light_segment"),
        ("self-train", "light_self_train"),
        ("predict", "light_predict"),
        ("evaluate", "light_evaluate"),
    ):
        monkeypatch.setitem(dagmod.STAGE_FN, stage, f"tests.unit.test_sweep:{fn}")
    return tmp_path / "ran.log"


def _ran(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.is_file() else []


def test_sweep_runs_every_node_once_and_a_rerun_runs_nothing(tmp_path, store, light_stages):
    cfg = sweep_cfg(tmp_path, store)
    spec = sw.SweepSpec(
        source_labeled=[1.0], target_labeled=[0.0, 0.5], seeds=[0], variants=VARIANTS, val=0.15, test=0.25
    )
    sweep_dir = sw.run_sweep(cfg, spec, executor="debug")
    record = json.loads((sweep_dir / "pipeline.json").read_text())
    assert len(record["jobs"]) == len(record["nodes"]) == 5 + 3 + 2 * 4
    assert len(_ran(light_stages)) == 16 and len(set(_ran(light_stages))) == 15  # translate dir: DONE + synth marker
    saved = json.loads((sweep_dir / "sweep.json").read_text())
    assert [p["id"] for p in saved["points"]] == ["src1_tgt0_seed0", "src1_tgt0.5_seed0"]

    sw.run_sweep(cfg, spec, executor="debug")  # idempotent: nothing runs, nothing is recorded
    assert len(_ran(light_stages)) == 16
    assert json.loads((sweep_dir / "pipeline.json").read_text())["jobs"] == record["jobs"]

    (sweep_dir / "points" / "src1_tgt0.5_seed0" / "evaluate-self-supervised" / "DONE").unlink()
    sw.run_sweep(cfg, spec, executor="debug")  # only the missing node runs again
    assert _ran(light_stages)[16:] == [str(sweep_dir / "points" / "src1_tgt0.5_seed0" / "evaluate-self-supervised")]

    with pytest.raises(ConfigError, match=r"train.max_steps=\d+, now 7"):
        sw.run_sweep(sweep_cfg(tmp_path, store, "train.max_steps=7"), spec, executor="debug")
    with pytest.raises(DataError, match="differs from the split this sweep makes now"):
        sw.run_sweep(cfg, dataclasses.replace(spec, val=0.3), executor="debug")


def test_pipeline_seeds_keep_the_config_split_and_vary_train_seed(tmp_path, store, light_stages):
    from hpc_modatts.data.splits import make_split

    make_split(store, "t1", "t2", 1.0, 0.0, val=0.15, test=0.25, seed=3).save(tmp_path / "split.json")
    cfg = sweep_cfg(tmp_path, store, f"data.split={tmp_path / 'split.json'}", "pipeline.variants=[target-supervised]")
    sweep_dir = sw.run_sweep(
        cfg, sw.SweepSpec(seeds=[0, 1], variants=["target-supervised"], resplit=False), executor="debug"
    )
    saved = json.loads((sweep_dir / "sweep.json").read_text())
    assert [p["id"] for p in saved["points"]] == ["src1_tgt0_seed0", "src1_tgt0_seed1"]
    split = str((tmp_path / "split.json").resolve())
    assert {p["split"] for p in saved["points"]} == {split} and not (sweep_dir / "splits").exists()
    dag = sw.sweep_dag(cfg, [sw.Unit(**u) for u in saved["units"]], sweep_dir)
    assert sorted(n for n in dag.nodes if "/segment/" in n) == [
        "shared/seed0/segment/target-supervised/fold_0",
        "shared/seed1/segment/target-supervised/fold_0",
    ]
    assert {(node_config(cfg, n).train.seed, node_config(cfg, n).data.split) for n in dag.nodes.values()} == {
        (0, split),
        (1, split),
    }
    assert len(_ran(light_stages)) == 6


# ----------------------------------------------------------------------------- local cap
def slow_stage(cfg):
    out = Path(cfg.train.pseudo_labels)
    start = time.time()
    time.sleep(1.0)
    atomic_write_json(out / "span.json", {"start": start, "end": time.time()})
    mark_done(out)
    return out


def test_local_executor_runs_at_most_max_parallel_jobs(tmp_path):
    from hpc_modatts.config import config_from_dict

    cfg = config_from_dict({"name": "cap", "run_root": str(tmp_path)})
    nodes = [
        Node(
            f"n{i}",
            "tests.unit.test_sweep:slow_stage",
            {"train.pseudo_labels": str(tmp_path / f"n{i}")},
            tmp_path / f"n{i}",
        )
        for i in range(2)
    ]  # both ready at once: uncapped, they would overlap
    run_pipeline(cfg, executor="local", dag=Dag(nodes), check=False, max_parallel=1)
    first, second = sorted(
        (json.loads((tmp_path / f"n{i}" / "span.json").read_text()) for i in range(2)), key=lambda s: s["start"]
    )
    assert first["end"] <= second["start"]  # never two at once


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, store, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # rich would shorten the cells to 80 columns
    cfg = sweep_cfg(tmp_path, store)
    sweep_dir = sw.run_sweep(cfg, SPEC, executor="debug", dry_run=True)
    shown = capsys.readouterr().out
    assert "8 points, 14 run folders, 58 jobs (58 to run)" in " ".join(shown.split())
    assert "from shared/src0.5_seed1" in shown and not sweep_dir.exists()  # a point's stage 1 is its group's


def test_spec_checks_name_the_option():
    with pytest.raises(ConfigError, match="--source-labeled"):
        sw.SweepSpec(source_labeled=[0.0])
    with pytest.raises(ConfigError, match="--seeds"):
        sw.SweepSpec(seeds=[1, 1])
    with pytest.raises(ConfigError, match="--variants"):
        sw.SweepSpec(variants=["fully-supervised"])
