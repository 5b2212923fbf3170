"""Careless or hostile commands (issue 10: causes 4, 9, 10, 12, 13 and the "also fix" list):
one line, exit 2, nothing half-written; strict metrics; atomic writes that survive concurrency."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import hpc_modatts.runs as runs
from hpc_modatts.cli import main
from hpc_modatts.config import ConfigError, config_from_dict, config_to_dict, load_config
from hpc_modatts.data.errors import DataError
from hpc_modatts.pipeline.dag import Node
from hpc_modatts.pipeline.submit import node_parameters
from tests.fixtures import make_phantom_store

pytestmark = pytest.mark.reliability


def one_error_line(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    return err[0]


# ----------------------------------------------------------------------------- cause 4: sbatch
@pytest.mark.parametrize("name", ["x\nrm -rf $HOME", "../../x", "/abs/x", ".", "a b", ""])
def test_experiment_name_must_be_one_safe_folder_name(name):
    with pytest.raises(ConfigError, match="name="):
        config_from_dict({"name": name})


@pytest.mark.parametrize(
    "preset",
    [
        {"partition": "gpu\ntouch /tmp/pwned"},
        {"setup": ["module load x\nrm -rf ~"]},
        {"additional": {"comment": "ok\n#SBATCH --wrap=evil"}},
    ],
)
def test_no_newline_reaches_the_sbatch_script(tmp_path, preset):
    cfg = config_from_dict({"name": "exp", "run_root": str(tmp_path)})
    node = Node("translate", "hpc_modatts.train.translate:run", {}, tmp_path / "translate")
    with pytest.raises(ConfigError, match="sbatch option .* must be one line"):
        node_parameters(node, cfg, preset, [])  # checked before any executor sees them
    with pytest.raises(ConfigError, match="run_root=.* must be one line"):
        config_from_dict({"run_root": "runs\ntouch /tmp/pwned"})


# ----------------------------------------------------------------------------- cause 12: numbers
@pytest.mark.parametrize("override", ["optim.lr=nan", "optim.lr=.inf", "train.weights.adv=.nan", "train.epochs=.inf"])
def test_non_finite_numbers_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, [override])


def test_nan_learning_rate_fails_before_any_run_folder(tmp_path, capsys):
    line = one_error_line(capsys, ["train", "segment", "demo_cpu", "optim.lr=nan", f"run_root={tmp_path / 'runs'}"])
    assert "optim.lr" in line and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- cause 13: status
@pytest.mark.parametrize(
    "record",
    [
        "[]",
        '{"nodes": 5}',
        '{"nodes": [{"name": 1, "run_dir": "x"}]}',
        '{"nodes": [{"name": "a", "run_dir": "x"}], "jobs": [{"node": "a"}]}',
        '{"nodes": [], "jobs": 7}',
    ],
)
def test_status_of_a_malformed_pipeline_json_is_one_line(tmp_path, capsys, record):
    (tmp_path / "pipeline.json").write_text(record)
    assert str(tmp_path / "pipeline.json") in one_error_line(capsys, ["status", str(tmp_path)])


# ----------------------------------------------------------------------------- cause 10: split -o
def test_split_output_naming_a_folder_is_one_line_and_leaves_no_temp(tmp_path, capsys):
    _, store = make_phantom_store(tmp_path, cases=4)
    folder = tmp_path / "splits"
    folder.mkdir()
    line = one_error_line(
        capsys,
        ["split", str(store), "--source", "t1", "--target", "t2", "--val", "0.25", "--test", "0.25", "-o", str(folder)],
    )
    assert str(folder) in line and "folder" in line
    assert list(folder.iterdir()) == [] and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- cause 9 + metrics
def save_mask(path: Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), np.diag([*spacing, 1.0])), path)
    return path


def cube(shape=(12, 10, 8), start=(3, 3, 2), size=4) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[tuple(slice(s, s + size) for s in start)] = 1
    return m


@pytest.mark.parametrize("bad", ["truncated", "4D"])
def test_evaluate_checks_every_case_before_writing(tmp_path, capsys, bad):
    noisy = np.random.default_rng(0).random((24, 24, 24)) > 0.5  # long gzip stream: the header survives a cut
    for case in ("a", "b"):
        save_mask(tmp_path / "ref" / f"{case}.nii.gz", noisy)
        save_mask(tmp_path / "pred" / f"{case}.nii.gz", noisy)
    f = tmp_path / "pred" / "b.nii.gz"
    if bad == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        assert nib.load(f).shape == (24, 24, 24)  # the header still reads
    else:
        save_mask(f, np.stack([noisy, noisy], axis=-1))
    line = one_error_line(
        capsys,
        ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "-o", str(tmp_path / "out")],
    )
    assert str(f) in line
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").rglob("*")) == []


def test_one_empty_mask_counts_with_the_maximum_distance_and_metrics_json_is_strict(tmp_path):
    from hpc_modatts.infer.evaluate import evaluate

    sp = (2.0, 1.0, 1.0)
    save_mask(tmp_path / "ref" / "a.nii.gz", cube(), sp)
    save_mask(tmp_path / "ref" / "b.nii.gz", cube(), sp)
    save_mask(tmp_path / "pred" / "a.nii.gz", cube(), sp)
    save_mask(tmp_path / "pred" / "b.nii.gz", np.zeros((12, 10, 8)), sp)  # a model that gave up on b
    evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", panels=False)

    def refuse(constant):
        raise ValueError(f"bare {constant} in metrics.json")

    res = json.loads((tmp_path / "out" / "metrics.json").read_text(), parse_constant=refuse)
    diagonal = float(np.sqrt((12 * 2.0) ** 2 + 10**2 + 8**2))
    b = res["cases"][1]
    assert b["note"] == "empty prediction" and b["hd95"] == pytest.approx(diagonal) == b["assd"]
    assert res["summary"]["hd95"]["mean"] == pytest.approx(diagonal / 2) and res["summary"]["hd95"]["n"] == 2
    assert res["summary"]["one_side_empty"] == 1
    runs.atomic_write_json(tmp_path / "x.json", {"v": float("nan"), "w": [float("inf")]})
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=refuse) == {"v": None, "w": [None]}


# ----------------------------------------------------------------------------- predict
def test_predict_error_leaves_no_empty_output_folder(tmp_path):
    from hpc_modatts.infer.predict import predict
    from hpc_modatts.models import build_segmenter
    from hpc_modatts.runs import mark_done

    run = tmp_path / "run"
    run.mkdir()
    cfg = config_from_dict({"data": {"patch_size": [16, 16, 16]}})
    torch.save(
        {
            "models": {"gen": build_segmenter("tiny").state_dict()},
            "config": config_to_dict(cfg),
            "factories": {"gen": ("hpc_modatts.models:build_segmenter", {"size": "tiny"})},
        },
        run / "best_model.pt",
    )
    mark_done(run)
    with pytest.raises(DataError, match="does not exist"):
        predict([run], tmp_path / "no-such-input", tmp_path / "preds")
    assert not (tmp_path / "preds").exists()


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_writes_use_exclusive_temp_names_and_fsync(tmp_path, monkeypatch):
    target = tmp_path / "status.json"
    texts = [str(i) * 100_000 for i in range(8)]
    failures: list[BaseException] = []

    def writer(text: str) -> None:
        try:
            for _ in range(25):
                runs.atomic_write_text(target, text)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            failures.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:2]
    assert target.read_text() in texts and [p.name for p in tmp_path.iterdir()] == ["status.json"]
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    runs.atomic_write_text(target, "done")
    assert synced and target.read_text() == "done"
