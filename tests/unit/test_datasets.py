"""Every dataset generation as researchers hold it (tests/releases.py): each converts with
--layout auto, verifies, splits and trains one step of the demo config; label schemes, aliases,
brain masks, z-scored backgrounds, unregistered modalities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpc_modatts.config import load_config
from hpc_modatts.data.convert import convert
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.layouts import detect_layout
from hpc_modatts.data.splits import make_split
from hpc_modatts.data.store import Store
from hpc_modatts.data.verify import verify
from hpc_modatts.train import segment
from tests.releases import EXPECT, RELEASES, write_release

DEMO = Path(__file__).resolve().parents[2] / "hpc_modatts" / "configs" / "demo_cpu.yaml"


def one_step(tmp: Path, store: Path, split: Path, *extra: str) -> Path:
    """One optimiser step of the demo config's source-supervised segmenter (tiny patches)."""
    cfg = load_config(
        DEMO,
        [
            f"data.store={store}",
            f"data.split={split}",
            f"run_root={tmp / 'runs'}",
            "name=t",
            "data.patch_size=[32,32,16]",
            "train.max_steps=1",
            "train.batch_size=2",
            "train.log_every=1",
            "train.val_cases=1",
            "train.variant=source-supervised",
            *extra,
        ],
    )
    return segment.run(cfg)


@pytest.mark.parametrize("release", RELEASES)
def test_release_converts_verifies_splits_and_trains(tmp_path, release):
    exp = EXPECT[release]
    src = write_release(tmp_path, release)
    assert detect_layout(src) == exp.layout
    store = tmp_path / "s.zarr"
    labels = "auto"
    if not exp.scheme:  # ambiguous: one line naming the values found and the flags that fit
        with pytest.raises(DataError, match=r"label values \[0, 1, 2, 3, 4\] fit no .*--labels brats2024") as e:
            convert(src, store, progress=False)
        assert "\n" not in str(e.value) and not store.exists()
        labels = "brats2024"
    convert(src, store, labels=labels, progress=False)
    st = Store.open(store)
    assert st.root_attrs["labels"]["scheme"] == (exp.scheme or labels)
    assert verify(store) == []
    masked = [c for c in st.case_ids if st.attrs(c)["has_mask"]]
    assert len(masked) == exp.labelled
    mods = sorted(st.root_attrs["modalities"])
    assert mods == (["ceT1", "hrT2"] if exp.layout == "crossmoda" else ["flair", "t1", "t1ce", "t2"])
    for case in masked:  # the whole tumour is the phantom's tumour: cochlea and resection cavity left out
        labels_ = st.read_labels(case)
        tumour = np.isin(labels_, st.root_attrs["labels"]["regions"]["whole"])
        assert np.array_equal(st.read_mask(case), tumour) and 0 < tumour.sum() < (labels_ > 0).sum() + 1
    split = make_split(
        store,
        exp.source,
        exp.target,
        source_labeled=1.0,
        val=0.0 if exp.layout == "crossmoda" else 0.34,
        test=0.0,
        seed=0,
    )
    split.save(tmp_path / "split.json")
    run = one_step(tmp_path, store, tmp_path / "split.json", f"data.source={exp.source}", f"data.target={exp.target}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert (run / "DONE").is_file() and [r["step"] for r in rows if "train/loss" in r] == [1]
    assert np.isfinite([r["train/loss"] for r in rows if "train/loss" in r]).all()


def test_unlabelled_target_set_converts_alone(tmp_path):
    """CrossMoDA's validation/target sets: hrT2 files only, no label anywhere."""
    src = write_release(tmp_path, "crossmoda2022")
    for f in list(src.glob("*_ceT1.nii.gz")) + list(src.glob("*_Label.nii.gz")):
        f.unlink()
    st = Store.open(convert(src, tmp_path / "t.zarr", progress=False))
    assert st.case_ids == ["crossmoda2022_ldn_2", "crossmoda2022_ldn_4"] and verify(st) == []
    assert all(st.modalities(c) == ["hrT2"] and st.mask(c) is None for c in st.case_ids)
    assert st.root_attrs["labels"]["chosen_by"].startswith("no tumour label in any mask")
