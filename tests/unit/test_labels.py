"""Label schemes (auto-detection and its one-line refusals), tumour regions in training and
evaluation, and modality aliases in configs and splits."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from hpc_modatts.cli import main
from hpc_modatts.config import load_config
from hpc_modatts.data.aliases import canonical, resolve
from hpc_modatts.data.convert import convert
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.labels import SCHEMES, detect_scheme, read_region
from hpc_modatts.data.loaders import VolumeDataset
from hpc_modatts.data.splits import make_split
from hpc_modatts.data.store import Store
from hpc_modatts.infer.evaluate import evaluate
from tests.releases import write_release
from tests.unit.test_datasets import DEMO, one_step


@pytest.mark.parametrize(
    "values,generation,expected",
    [
        ({0, 1, 2, 4}, "brats2018-2021", "brats2021"),
        ({0, 1, 2, 3, 4}, "brats2018-2021", "brats2013"),  # BraTS 2013-2015 copies in the 2018-2021 naming
        ({0, 1, 2}, "brats2018-2021", "brats2021"),  # no 3 nor 4 anywhere: every BraTS scheme agrees
        ({0, 1, 2, 3}, "brats2023-2025", "brats2023"),
        ({0}, "brats2023-2025", "brats2023"),  # no tumour at all
        ({0, 1}, "manifest", "binary"),
        ({0, 1, 2, 4}, "manifest", "brats2021"),
        ({0, 1, 2}, "crossmoda2022", "crossmoda"),
        ({0, 1, 2, 3}, "crossmoda2023", "crossmoda2023"),
    ],
)
def test_auto_detection_picks_the_scheme_when_unambiguous(values, generation, expected):
    assert detect_scheme(values, generation, "src")[0].name == expected


@pytest.mark.parametrize(
    "values,generation,flags",
    [
        ({0, 1, 2, 3}, "brats2018-2021", ["brats2013", "brats2023"]),  # 3: non-enhancing or enhancing?
        ({0, 1, 2, 3, 4}, "brats2023-2025", ["brats2013", "brats2024", "nonzero"]),  # 4: a resection cavity?
        ({0, 1, 2}, "manifest", ["brats2021", "crossmoda"]),  # 2: oedema or cochlea?
        ({0, 1, 2}, "crossmoda2023", ["crossmoda", "crossmoda2023"]),
        ({0, 7}, "brats2018-2021", ["nonzero"]),
    ],
)
def test_ambiguous_values_give_one_line_naming_values_and_flags(values, generation, flags):
    with pytest.raises(DataError) as e:
        detect_scheme(values, generation, "data/src")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data/src: label values " + str(sorted(values)))
    for flag in flags:
        assert f"--labels {flag} " in msg


def test_regions_of_the_brats_schemes():
    labels = np.array([0, 1, 2, 3, 4], np.uint8)
    got = {
        n: {r: SCHEMES[n].region_mask(labels, r).nonzero()[0].tolist() for r in ("whole", "core", "enhancing")}
        for n in ("brats2013", "brats2021", "brats2023", "brats2024")
    }
    assert got["brats2013"] == {"whole": [1, 2, 3, 4], "core": [1, 3, 4], "enhancing": [4]}
    assert got["brats2021"] == {"whole": [1, 2, 4], "core": [1, 4], "enhancing": [4]}  # (3 is not a 2021 label)
    assert got["brats2023"] == {"whole": [1, 2, 3], "core": [1, 3], "enhancing": [3]}
    assert got["brats2024"] == {"whole": [1, 2, 3], "core": [1, 3], "enhancing": [3]}  # 4: resection cavity
    with pytest.raises(DataError, match="binary has no tumour core"):
        SCHEMES["binary"].region_mask(labels, "core")


def test_aliases_in_names_configs_and_splits(tmp_path):
    assert [canonical(n) for n in ("t1n", "T1C", "t2w", "t2f", "flair", "ceT1", "hrT2")] == [
        "t1",
        "t1ce",
        "t2",
        "flair",
        "flair",
        "ceT1",
        "hrT2",
    ]
    assert resolve("t1c", ["t1ce", "t2"], "s") == "t1ce"
    with pytest.raises(DataError, match=r"no modality 't2f' \(alias of flair\)"):
        resolve("t2f", ["t1", "t2"], "s")
    cfg = load_config(DEMO, ["data.source=t1c", "data.target=t2f"])
    assert (cfg.data.source, cfg.data.target) == ("t1ce", "flair")
    src = write_release(tmp_path, "brats2023-MEN")
    convert(src, tmp_path / "s.zarr", progress=False)
    st = Store.open(tmp_path / "s.zarr")
    assert st.root_attrs["modality_names"] == {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
    assert st.root_attrs["modality_aliases"]["t1ce"] == ["t1c"]
    split = make_split(st, "t1c", "t2f", val=0.34, test=0.0)
    assert (split.source, split.target) == ("t1ce", "flair")


@pytest.fixture(scope="module")
def brats2023(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("brats2023")
    store = convert(write_release(tmp, "brats2023-GLI"), tmp / "s.zarr", progress=False)
    split = make_split(store, "t1n", "t2w", source_labeled=1.0, val=0.34, test=0.0)
    split.save(tmp / "split.json")
    return tmp, store, tmp / "split.json"


def test_region_core_is_what_training_sees(brats2023, tmp_path):
    _, store, split_path = brats2023
    st = Store.open(store)
    case = st.case_ids[0]
    labels = st.read_labels(case)
    core = read_region(st, case, "core")
    assert np.array_equal(core, np.isin(labels, (1, 3))) and 0 < core.sum() < st.read_mask(case).sum()
    assert np.array_equal(read_region(st, case, "enhancing"), labels == 3)
    shape = tuple(st.attrs(case)["shape"])
    for name, truth in (("mask_core", core), ("mask", st.read_mask(case))):  # the window holds the whole brain
        ds = VolumeDataset(store, [case], "t1", patch_size=shape, half=False, annotated={case}, mask_name=name)
        assert ds[0]["mask"].sum().item() == truth.sum() and ds[0]["weak"] == 1
    run = one_step(tmp_path, store, split_path, "data.source=t1", "data.target=t2", "data.region=core")
    assert load_config(run / "config.yaml").data.region == "core" and (run / "DONE").is_file()
    # validation scores the core and the volume guards bound it by the largest annotated core
    split, cfg = json.loads(split_path.read_text()), load_config(run / "config.yaml")
    ml = {c: read_region(st, c, "core").sum() * np.prod(st.attrs(c)["spacing"]) / 1000 for c in st.case_ids}
    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "val/ref_ml" in x][-1]
    assert val["val/ref_ml"] == pytest.approx(np.mean([ml[c] for c in split["val"]]))
    largest = max(ml[c] for c in split["source_labeled"])
    assert val["val/limit_ml"] == pytest.approx(cfg.train.max_volume_factor * largest)


def test_region_needs_a_scheme_that_defines_it(tmp_path):
    src = write_release(tmp_path, "brats2021", n=3)
    store = convert(src, tmp_path / "b.zarr", labels="nonzero", progress=False)
    st = Store.open(store)
    with pytest.raises(DataError, match="scheme 'nonzero' does not define it; data.region=enhancing needs"):
        read_region(st, st.case_ids[0], "enhancing")
    with pytest.raises(DataError, match="no 'mask_core' \\(data.region\\)"):
        VolumeDataset(
            store, st.case_ids[:1], "t1", patch_size=(8, 8, 8), annotated=set(st.case_ids[:1]), mask_name="mask_core"
        )


def test_evaluate_reports_the_region(tmp_path, capsys):
    """References as label maps (BraTS 2023 numbering), predictions of the tumour core."""
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[4:16, 4:16, 4:16] = 2  # oedema
    labels[7:13, 7:13, 7:13] = 1  # necrotic core
    labels[9:11, 9:11, 9:11] = 3  # enhancing
    for d in ("pred", "ref"):
        (tmp_path / d).mkdir()
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "ref" / "c1.nii.gz")
    nib.save(nib.Nifti1Image(np.isin(labels, (1, 3)).astype(np.uint8), np.eye(4)), tmp_path / "pred" / "c1.nii.gz")
    out = evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "core", region="core", panels=False)
    result = json.loads((out / "metrics.json").read_text())
    assert result["region"] == "core" and result["labels"] == "brats2023"  # detected from the values
    assert result["cases"][0]["dice"] == pytest.approx(1.0)
    assert "tumour core (brats2023 labels)" in " ".join(capsys.readouterr().out.split())  # the table title
    whole = json.loads(
        (evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "whole", panels=False) / "metrics.json").read_text()
    )
    assert whole["region"] == "whole" and whole["cases"][0]["dice"] < 0.3
    rc = main(
        [
            "evaluate",
            "--pred",
            str(tmp_path / "pred"),
            "--ref",
            str(tmp_path / "ref"),
            "--no-panels",
            "--region",
            "enhancing",
            "--labels",
            "brats2021",
            "-o",
            str(tmp_path / "enh"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "c1.nii.gz: reference label values [3] are not in --labels brats2021" in err[0]
