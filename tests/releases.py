"""Phantom cases rewritten as each public release names (and labels) its files.

``write_release(root, release, cases)`` takes the 4 mm phantom cases (tests/fixtures.py, cached
per session) and writes them the way a researcher has them after downloading ``release``: the
folder tree, file names, NIfTI suffixes and label values of that release. No real data, no
download. ``RELEASES`` lists what exists; ``EXPECT`` what the converter should find in each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from tests.fixtures import make_phantom_nifti

CONTRASTS = ("t1", "t1ce", "t2", "flair")
NEW_NAMES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}  # BraTS 2023-2025 file names


@dataclass(frozen=True)
class Expect:
    layout: str  # what --layout auto must detect
    scheme: str  # label scheme --labels auto must pick ("" = it must refuse)
    source: str  # split/config names a researcher would type
    target: str
    labelled: int  # cases with a mask


def phantom(tmp: Path, cases: int) -> list[dict]:
    """The first ``cases`` (<= 4) phantom cases as arrays + affine: [{"id", "t1", ..., "seg", "affine"}]
    (4 cases: the session cache tests/fixtures.py shares with the other tests)."""
    src = make_phantom_nifti(tmp / "_phantom", cases=4, seed=0, size="small")
    out = []
    for d in sorted(p for p in src.iterdir() if p.is_dir())[:cases]:
        case = {"id": d.name}
        for name in (*CONTRASTS, "seg"):
            img = nib.load(d / f"{d.name}_{name}.nii.gz")
            case[name], case["affine"] = np.asarray(img.dataobj), img.affine
        out.append(case)
    return out


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def brats2023_labels(seg: np.ndarray) -> np.ndarray:
    """Phantom labels (1 necrosis, 2 oedema, 4 enhancing: BraTS 2018-2021) in the 2023 numbering (3 = enhancing)."""
    out = seg.copy()
    out[seg == 4] = 3
    return out


def brats2013_labels(seg: np.ndarray) -> np.ndarray:
    """BraTS 2013-2015 numbering: part of the core (necrosis next to the enhancing rim) becomes 3 (non-enhancing)."""
    out = seg.copy()
    near_rim = ndi.binary_dilation(seg == 4, iterations=1)
    out[(seg == 1) & near_rim] = 3
    return out


def zscore(vol: np.ndarray, background: float) -> np.ndarray:
    """A z-scored copy whose background (0 in the phantom) becomes the constant ``background``."""
    v = vol.astype(np.float32)
    std = float(v[v > 0].std())
    return (v / std + background).astype(np.float32)


def _old_brats(
    root: Path,
    cases: list[dict],
    ids: list[str],
    suffix: str = ".nii.gz",
    sub=None,
    labels=lambda s: s,
    images=lambda v: v,
    brainmask: bool = False,
) -> None:
    for k, (case, cid) in enumerate(zip(cases, ids)):
        folder = root / (sub(k) if sub else "") / cid
        for m in CONTRASTS:
            save(folder / f"{cid}_{m}{suffix}", images(case[m]), case["affine"])
        save(folder / f"{cid}_seg{suffix}", labels(case["seg"]), case["affine"])
        if brainmask:
            save(folder / f"{cid}_brainmask{suffix}", (case["t1"] > 0).astype(np.uint8), case["affine"])


def _new_brats(root: Path, cases: list[dict], sub: str, labels=brats2023_labels, first: int = 0) -> None:
    for k, case in enumerate(cases):
        cid = f"BraTS-{sub}-{first + k:05d}-000"
        for m in CONTRASTS:
            save(root / cid / f"{cid}-{NEW_NAMES[m]}.nii.gz", case[m], case["affine"])
        save(root / cid / f"{cid}-seg.nii.gz", labels(case["seg"]), case["affine"])


def _cochlea(seg: np.ndarray) -> np.ndarray:
    """A small blob away from the tumour: CrossMoDA labels the cochlea (not tumour)."""
    blob = np.zeros(seg.shape, bool)
    x, y, z = (np.array(seg.shape) * [0.5, 0.3, 0.3]).astype(int)
    blob[x - 1 : x + 2, y - 1 : y + 2, z - 1 : z + 2] = True
    return blob & (seg == 0)


def _crossmoda(root: Path, cases: list[dict], prefix: str, sites: tuple[str, str], year: int) -> None:
    """Even cases: annotated ceT1 (phantom T1ce) + Label; odd cases: unannotated hrT2 (phantom T2)."""
    for k, case in enumerate(cases):
        cid = f"{prefix}{sites[k % 2]}{k + 1}"
        if k % 2 == 0:
            lab = np.zeros(case["seg"].shape, np.uint8)
            if year == 2023:  # 1 intra-meatal, 2 extra-meatal tumour, 3 cochlea
                lab[case["seg"] == 1] = 1
                lab[np.isin(case["seg"], (2, 4))] = 2
                lab[_cochlea(case["seg"])] = 3
            else:  # 1 vestibular schwannoma, 2 cochlea
                lab[case["seg"] > 0] = 1
                lab[_cochlea(case["seg"])] = 2
            sub = "source_training" if year == 2021 else ""
            save(root / sub / f"{cid}_ceT1.nii.gz", case["t1ce"], case["affine"])
            save(root / sub / f"{cid}_Label.nii.gz", lab, case["affine"])
        else:
            sub = "target_training" if year == 2021 else ""
            save(root / sub / f"{cid}_hrT2.nii.gz", case["t2"], case["affine"])


RELEASES = (
    "brats2018",
    "brats2019",
    "brats2020",
    "brats2021",
    "brats2013-derived",
    "brats2023-GLI",
    "brats2023-MEN",
    "brats2023-MET",
    "brats2023-PED",
    "brats2023-SSA",
    "brats2024-GLI",
    "crossmoda2021",
    "crossmoda2022",
    "crossmoda2023",
)

EXPECT = {
    **{r: Expect("brats", "brats2021", "t1", "t2", 3) for r in ("brats2018", "brats2019", "brats2020", "brats2021")},
    "brats2013-derived": Expect("brats", "brats2013", "t1", "t2", 3),
    **{f"brats2023-{s}": Expect("brats", "brats2023", "t1n", "t2w", 3) for s in ("GLI", "MEN", "MET", "PED", "SSA")},
    "brats2024-GLI": Expect("brats", "", "t1c", "t2f", 3),  # 4 = resection cavity: --labels brats2024
    "crossmoda2021": Expect("crossmoda", "crossmoda", "ceT1", "hrT2", 2),
    "crossmoda2022": Expect("crossmoda", "crossmoda", "ceT1", "hrT2", 2),
    "crossmoda2023": Expect("crossmoda", "crossmoda2023", "ceT1", "hrT2", 2),
}


def write_release(tmp: Path, release: str, n: int = 3) -> Path:
    """Write ``n`` phantom cases (``n + 1`` for CrossMoDA: half ceT1, half hrT2) as ``release``; returns the folder."""
    cases = phantom(tmp, n + 1 if release.startswith("crossmoda") else n)
    if release == "brats2018":
        root = tmp / "MICCAI_BraTS_2018_Data_Training"
        ids = [f"Brats18_CBICA_AA{chr(65 + k)}_1" if k % 2 == 0 else f"Brats18_2013_{k}_1" for k in range(n)]
        _old_brats(root, cases, ids, sub=lambda k: "HGG" if k % 2 == 0 else "LGG")
    elif release == "brats2019":
        root = tmp / "MICCAI_BraTS_2019_Data_Training"
        ids = [f"BraTS19_CBICA_AA{chr(65 + k)}_1" if k % 2 == 0 else f"BraTS19_2013_{k}_1" for k in range(n)]
        _old_brats(root, cases, ids, sub=lambda k: "HGG" if k % 2 == 0 else "LGG")
    elif release == "brats2020":  # uncompressed .nii, and case 355's known mis-named mask
        root = tmp / "MICCAI_BraTS2020_TrainingData"
        ids = [f"BraTS20_Training_{k + 1:03d}" for k in range(n)]
        _old_brats(root, cases, ids, suffix=".nii")
        quirk = root / ids[-1]
        (quirk / f"{ids[-1]}_seg.nii").rename(quirk / "W39_1998.09.19_Segm.nii")
    elif release == "brats2021":
        root = tmp / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021"
        _old_brats(root, cases, [f"BraTS2021_{k:05d}" for k in range(n)])
    elif release == "brats2013-derived":  # z-scored (background -3.6), brain masks shipped, labels 0-4
        root = tmp / "BRATS2015_Training_zscored"
        _old_brats(
            root,
            cases,
            [f"brats_2013_pat{k + 1:04d}_1" for k in range(n)],
            labels=brats2013_labels,
            images=lambda v: zscore(v, -3.6),
            brainmask=True,
        )
    elif release.startswith("brats2023-"):
        sub = release.split("-")[1]
        root = tmp / f"ASNR-MICCAI-BraTS2023-{sub}-Challenge-TrainingData"
        _new_brats(root, cases, sub, first=2 if sub in ("MET", "SSA") else 0)
    elif release == "brats2024-GLI":  # post-treatment: 4 = resection cavity (a blob outside the tumour)
        root = tmp / "BraTS2024-BraTS-GLI-TrainingData" / "training_data1_v2"

        def with_cavity(seg):
            out = brats2023_labels(seg)
            out[_cochlea(seg)] = 4
            return out

        _new_brats(root, cases, "GLI", labels=with_cavity, first=2073)
    elif release.startswith("crossmoda"):
        year = int(release[-4:])
        root = tmp / f"{release}_training"
        prefix = {2021: "crossmoda_", 2022: "crossmoda2022_", 2023: "crossmoda2023_"}[year]
        sites = ("", "") if year == 2021 else ("etz_", "ldn_")
        _crossmoda(root, cases, prefix, sites, year)
    else:
        raise ValueError(f"unknown release {release!r}; known: {RELEASES}")
    return root
