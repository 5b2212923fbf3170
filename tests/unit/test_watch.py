"""Watching a pipeline: latest metric from metrics.jsonl, one line per state change in logs,
the live local executor, ``status --watch``."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from rich.console import Console

from hpc_modatts.cli import main
from hpc_modatts.config import ExperimentConfig
from hpc_modatts.pipeline.dag import Dag, Node
from hpc_modatts.pipeline.status import print_status
from hpc_modatts.pipeline.submit import run_pipeline
from hpc_modatts.pipeline.watch import PipelineWatcher, latest_metric, watch
from hpc_modatts.runs import mark_done
from tests.unit.test_dag import make_cfg


def metrics_stage(cfg: ExperimentConfig) -> Path:
    """A light stage that logs three training steps, stays alive a moment, then finishes."""
    out = Path(cfg.train.pseudo_labels)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "a") as f:
        for step in (1, 2, 3):
            f.write(json.dumps({"step": step, "train/loss": 1.0 / step}) + "\n")
    time.sleep(3.0)
    mark_done(out)
    return out


def failing_stage(cfg: ExperimentConfig) -> Path:
    raise RuntimeError("stage exploded")


def test_latest_metric_prefers_the_newest_line_and_skips_partial_ones(tmp_path):
    assert latest_metric(tmp_path) == ""  # no metrics.jsonl yet
    lines = [
        {"step": 25, "train/loss": 0.9},
        {"step": 50, "train/loss": 0.5},
        {"step": 50, "val/dice": 0.4321, "val/pred_ml": 12.0},
        {"step": 75, "train/loss": 0.25},
    ]
    text = "garbage-first-line\n" + "\n".join(json.dumps(r) for r in lines) + '\n{"step": 80, "train/lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert latest_metric(tmp_path) == "train/loss 0.250 @75"  # the half-written last line is skipped
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines[:3]) + "\n")
    assert latest_metric(tmp_path) == "val/dice 0.432 @50"
    (tmp_path / "metrics.jsonl").write_text("[1, 2]\nnull\n")  # valid JSON, not a row: nothing shown
    assert latest_metric(tmp_path) == ""


def test_log_mode_prints_one_line_per_state_change():
    script = [
        [{"node": "a", "state": "NOT SUBMITTED"}, {"node": "b", "state": "NOT SUBMITTED"}],
        [
            {"node": "a", "state": "RUNNING", "elapsed_s": 5, "metric": "step 1 train/loss 1.000"},
            {"node": "b", "state": "NOT SUBMITTED"},
        ],
        [
            {"node": "a", "state": "RUNNING", "elapsed_s": 9, "metric": "step 2 train/loss 0.500"},
            {"node": "b", "state": "NOT SUBMITTED"},
        ],
        [{"node": "a", "state": "DONE", "elapsed_s": 61}, {"node": "b", "state": "FAILED", "log": "/x/b.err"}],
    ]
    calls = iter(script)
    out = io.StringIO()
    watcher = PipelineWatcher(lambda: next(calls), "t", Console(file=out, width=200), live=False, every_s=0.0)
    with watcher:  # enter and exit each update once, plus two in between
        watcher.update()
        watcher.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # the initial pending set and an unchanged RUNNING print nothing
    assert lines[0].endswith("a  NOT SUBMITTED -> RUNNING  0:05  step 1 train/loss 1.000")
    assert lines[1].endswith("a  RUNNING -> DONE  1:01")
    assert lines[2].endswith("b  NOT SUBMITTED -> FAILED  log: /x/b.err")


def test_watch_stops_when_every_node_has_ended():
    states = iter([["RUNNING", "PENDING"], ["COMPLETED", "RUNNING"], ["DONE", "FAILED"], ["never", "reached"]])

    def rows() -> list[dict]:
        return [{"node": f"n{i}", "state": s} for i, s in enumerate(next(states))]

    final = watch(rows, "t", interval_s=0.0, console=Console(file=io.StringIO()), live=False)
    assert [r["state"] for r in final] == ["DONE", "FAILED"]


def test_local_pipeline_shows_progress_and_status_watch_returns(tmp_path, capsys):
    cfg = make_cfg(tmp_path, timeout_min=2)
    root = tmp_path / "runs" / "exp"
    nodes = [
        Node(
            "first", "tests.unit.test_watch:metrics_stage", {"train.pseudo_labels": str(root / "first")}, root / "first"
        ),
        Node(
            "second",
            "tests.unit.test_dag:record_stage",
            {"train.pseudo_labels": str(root / "second")},
            root / "second",
            ("first",),
        ),
    ]
    run_pipeline(cfg, executor="local", dag=Dag(nodes), check=False)
    out = capsys.readouterr().out
    running = [ln for ln in out.splitlines() if "first  RUNNING" in ln and "train/loss" in ln]
    assert running, out  # seen while it ran, with its latest logged metric
    assert any("first  RUNNING -> DONE" in ln for ln in out.splitlines()), out
    assert any("second" in ln and "DONE" in ln for ln in out.splitlines()), out

    rows = print_status(root, watch_s=0.05)  # everything ended: one poll, then it returns
    assert [r["state"] for r in rows] == ["DONE", "DONE"]
    assert rows[0]["metric"] == "train/loss 0.333 @3" and 3.0 <= rows[0]["elapsed_s"] < 60
    assert Path(rows[0]["log"]).is_file()  # submitit's stderr file of the job
    assert main(["status", str(root), "--watch", "0.05"]) == 0
    table = capsys.readouterr().out
    assert "train/loss 0.333 @3" in table and max(len(ln) for ln in table.splitlines()) <= 120


def test_failed_local_stage_names_its_log(tmp_path, capsys):
    cfg = make_cfg(tmp_path, timeout_min=2)
    root = tmp_path / "runs" / "exp"
    bad = Dag([Node("boom", "tests.unit.test_watch:failing_stage", {}, root / "boom")])
    with pytest.raises(Exception, match="stage exploded"):
        run_pipeline(cfg, executor="local", dag=bad, check=False)
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "boom" in ln and "FAILED" in ln)
    log_file = Path(line.split("log: ")[1])
    assert "stage exploded" in log_file.read_text()


def test_status_watch_rejects_a_non_positive_interval(tmp_path):
    mark_done(tmp_path / "x")
    with pytest.raises(SystemExit, match="must be > 0"):
        main(["status", str(tmp_path), "--watch", "0"])
