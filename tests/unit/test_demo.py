"""The demo's own pieces: the results table, the data preparation on a tiny phantom, and the
local executor overlapping independent branches of the graph (what keeps the demo short).
The whole demo (minutes) is not run here: `make demo`."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from hpc_modatts.config import config_from_dict, load_config
from hpc_modatts.demo import VARIANTS, prepare_data, results_table
from hpc_modatts.pipeline.dag import Dag, Node
from hpc_modatts.pipeline.submit import run_pipeline
from hpc_modatts.runs import atomic_write_json, mark_done, stage_dir


def write_metrics(run_dir: Path, variant: str, dices: list[float], **summary) -> None:
    """An evaluate-<variant>/metrics.json as the evaluate stage writes it (summary part)."""
    mean = sum(dices) / len(dices)
    std = math.sqrt(sum((d - mean) ** 2 for d in dices) / len(dices))
    stat = {"mean": mean, "std": std, "n": len(dices)}
    atomic_write_json(
        stage_dir(run_dir, "evaluate", variant) / "metrics.json",
        {
            "cases": [],
            "summary": {
                "dice": stat,
                "hd95": {"mean": 5.0, "std": 1.0, "n": len(dices)},
                "assd": {"mean": 1.0, "std": 0.5, "n": len(dices)},
                **summary,
            },
        },
    )


def rendered(table) -> str:
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


# ----------------------------------------------------------------------------- results table
def test_results_table_reports_each_variant_relative_to_target_supervised(tmp_path):
    write_metrics(tmp_path, "target-supervised", [0.8, 0.6])
    write_metrics(tmp_path, "source-supervised", [0.1, 0.3])
    write_metrics(tmp_path, "self-supervised", [0.5, 0.5])
    table, summary = results_table(tmp_path)
    assert set(summary) == {"target-supervised", "source-supervised", "self-supervised"}
    assert summary["target-supervised"]["percent_of_target_supervised"] == pytest.approx(100.0)
    assert summary["source-supervised"]["percent_of_target_supervised"] == pytest.approx(100 * 0.2 / 0.7)
    assert summary["self-supervised"]["dice"]["n"] == 2
    text = rendered(table)
    assert "0.700 ± 0.100" in text and "0.200 ± 0.100" in text and "71 %" in text
    assert "MoDATTS semi-supervised" in text and "missing" in text  # no metrics.json: said so, not dropped


def test_results_table_marks_a_model_without_a_plausible_validation(tmp_path):
    write_metrics(tmp_path, "m-genseg", [0.1, 0.2], model_plausible=False)
    write_metrics(tmp_path, "self-supervised", [0.7, 0.8], model_plausible=True)
    text = rendered(results_table(tmp_path, ("self-supervised", "m-genseg"))[0])
    line = next(ln for ln in text.splitlines() if "M-GenSeg" in ln)
    assert "†" in line and "0.150" in line
    assert "†" not in next(ln for ln in text.splitlines() if "self-supervised" in ln)
    assert "no validation was plausible" in text


def test_results_table_without_upper_bound_has_no_percentages(tmp_path):
    write_metrics(tmp_path, "self-supervised", [0.4])
    table, summary = results_table(tmp_path, ("self-supervised", "target-supervised"))
    assert math.isnan(summary["self-supervised"]["percent_of_target_supervised"])
    assert "n/a" in rendered(table)


def test_demo_config_matches_the_phantom_grid():
    """The demo's slices/patches fit the 4 mm phantom (48x56x48, hemispheres 24 wide) without
    padding the inputs to several times their size."""
    cfg = load_config("demo_cpu")
    assert tuple(cfg.data.slice_size) == (48, 56)
    x, y, z = cfg.data.patch_size
    assert x <= 32 and y <= 64 and z <= 48 and cfg.data.half_volumes
    assert cfg.pipeline.variants and cfg.optim.lr > 0


# ----------------------------------------------------------------------------- data
@pytest.mark.slow
def test_prepare_data_builds_store_and_split_then_skips(tmp_path):
    from hpc_modatts.data.splits import Split
    from hpc_modatts.data.store import Store

    store, split_path = prepare_data(tmp_path, cases=6, seed=3, spacing=4, source="t1", target="t2", val=0.2, test=0.2)
    s = Store.open(store)
    assert len(s.case_ids) == 6 and s.attrs(s.case_ids[0])["shape"] == [48, 56, 48]
    split = Split.load(split_path)
    assert (split.source, split.target) == ("t1", "t2")
    assert split.source_labeled == split.source_train and split.target_labeled == []
    assert not set(split.source_train) & set(split.target_train)
    assert split.val and split.test
    stamp = split_path.stat().st_mtime_ns, (tmp_path / "phantom").stat().st_mtime_ns
    prepare_data(tmp_path, cases=6, seed=3, spacing=4, source="t1", target="t2", val=0.2, test=0.2)
    assert (split_path.stat().st_mtime_ns, (tmp_path / "phantom").stat().st_mtime_ns) == stamp


# ----------------------------------------------------------------------------- local executor
def timed_stage(cfg) -> Path:
    """A light stage: sleeps ``train.max_steps`` tenths of a second, logs its start/end, DONE."""
    out = Path(cfg.train.pseudo_labels)
    start = time.time()
    time.sleep(cfg.train.max_steps / 10)
    with open(out.parent / "times.log", "a") as f:
        f.write(f"{out.name} {start:.3f} {time.time():.3f}\n")
    mark_done(out)
    return out


def test_local_executor_starts_a_node_when_its_own_parents_finish(tmp_path):
    """slow || fast -> after_fast: after_fast must not wait for the unrelated slow node."""
    root = tmp_path / "runs" / "exp"
    root.mkdir(parents=True)

    def node(name: str, tenths: int, deps: tuple[str, ...] = ()) -> Node:
        return Node(
            name,
            "tests.unit.test_demo:timed_stage",
            {"train.pseudo_labels": str(root / name), "train.max_steps": tenths},
            root / name,
            deps,
        )

    dag = Dag([node("slow", 60), node("fast", 1), node("after_fast", 1, ("fast",))])
    cfg = config_from_dict({"name": "exp", "run_root": str(tmp_path / "runs"), "pipeline": {"timeout_min": 2}})
    run_pipeline(cfg, executor="local", dag=dag, check=False)
    times = {ln.split()[0]: tuple(map(float, ln.split()[1:])) for ln in (root / "times.log").read_text().splitlines()}
    assert set(times) == {"slow", "fast", "after_fast"}
    assert times["after_fast"][1] < times["slow"][1]  # finished while slow was still sleeping
    assert times["after_fast"][0] >= times["fast"][1]  # and only after its parent
    assert json.loads((root / "pipeline.json").read_text())["jobs"][-1]["node"] == "after_fast"


def test_variants_are_the_four_compared_methods():
    assert VARIANTS == ("source-supervised", "self-supervised", "semi-supervised", "target-supervised")
