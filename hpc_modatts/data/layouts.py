"""Find the cases of a source dataset: BraTS folders, CrossMoDA files, or a manifest CSV/JSON.

Every layout returns a list of :class:`CaseSpec` (sorted by case id) and carries its label scheme
(which label values are allowed and which of them are tumour).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from hpc_modatts.data.errors import DataError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
CROSSMODA_MODALITIES = ("ceT1", "hrT2")


@dataclass(frozen=True)
class LabelScheme:
    """Allowed label values of a layout's masks and which values are tumour (whole tumour = union)."""

    allowed: tuple[int, ...]
    tumour: tuple[int, ...]


LABEL_SCHEMES = {
    "brats": LabelScheme(allowed=(0, 1, 2, 4), tumour=(1, 2, 4)),
    # CrossMoDA 2022: 1 vestibular schwannoma, 2 cochlea (not tumour)
    "crossmoda": LabelScheme(allowed=(0, 1, 2), tumour=(1,)),
    "manifest": LabelScheme(allowed=(0, 1, 2, 3, 4), tumour=(1, 2, 3, 4)),
}


@dataclass
class CaseSpec:
    """One case of a source dataset."""

    case_id: str
    images: dict[str, Path]                       # modality -> NIfTI path
    mask: Path | None = None                      # label map (original values), or None
    weak: dict[str, str] | None = None            # {"left": "P"|"A", "right": "P"|"A"} (manual)
    extra: dict[str, str] = field(default_factory=dict)


def _strip_nifti(name: str) -> str | None:
    for suf in NIFTI_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return None


def _check_source(src: Path) -> None:
    if not src.exists():
        raise DataError(f"{src}: source does not exist")
    if src.is_dir() and not any(src.iterdir()):
        raise DataError(f"{src}: source folder is empty")


def _apply_missing(specs: list[CaseSpec], required: tuple[str, ...], missing: str, src: Path) -> list[CaseSpec]:
    """Skip (with a warning) or refuse cases lacking a required modality."""
    if missing not in ("skip", "fail"):
        raise DataError(f"--missing {missing!r} must be 'skip' or 'fail'")
    kept = []
    for spec in specs:
        lacking = [m for m in required if m not in spec.images]
        if not lacking:
            kept.append(spec)
        elif missing == "fail":
            raise DataError(f"case {spec.case_id}: missing modality {', '.join(lacking)} in {src} "
                            "(use --missing skip to leave such cases out)")
        else:
            log.warning("case %s: missing modality %s, skipped", spec.case_id, ", ".join(lacking))
    if not kept:
        raise DataError(f"{src}: no usable case found")
    return kept


def _unique(specs: list[CaseSpec], src: Path) -> list[CaseSpec]:
    seen: dict[str, CaseSpec] = {}
    for spec in specs:
        if spec.case_id in seen:
            raise DataError(f"{src}: duplicate case id {spec.case_id!r} "
                            f"({next(iter(seen[spec.case_id].images.values()))} and {next(iter(spec.images.values()))})")
        seen[spec.case_id] = spec
    return sorted(seen.values(), key=lambda s: s.case_id)


def find_brats(src: Path, missing: str = "fail", modalities: tuple[str, ...] = BRATS_MODALITIES) -> list[CaseSpec]:
    """BraTS: a folder per case (anywhere below ``src``) holding ``<case>_<mod>.nii.gz`` and ``<case>_seg.nii.gz``."""
    src = Path(src)
    _check_source(src)
    folders = sorted({p.parent for suf in NIFTI_SUFFIXES for p in src.rglob(f"*{suf}")})
    specs = []
    for folder in folders:
        images, mask = {}, None
        for f in sorted(folder.iterdir()):
            stem = _strip_nifti(f.name)
            if stem is None or f.name.startswith("."):
                continue
            key = stem.rsplit("_", 1)[-1].lower() if "_" in stem else ""
            if key == "seg":
                mask = f
            elif key in BRATS_MODALITIES:
                images[key] = f
        if images or mask:
            specs.append(CaseSpec(folder.name, images, mask))
    if not specs:
        raise DataError(f"{src}: no BraTS case found (expected <case>/<case>_t1.nii.gz ...)")
    return _apply_missing(_unique(specs, src), tuple(modalities), missing, src)


_CROSSMODA = re.compile(r"^(?P<case>.+)_(?P<kind>ceT1|hrT2|Label)$")


def find_crossmoda(src: Path, missing: str = "fail", modalities: tuple[str, ...] = ()) -> list[CaseSpec]:
    """CrossMoDA: ``<case>_ceT1.nii.gz`` (+ ``<case>_Label.nii.gz``) or ``<case>_hrT2.nii.gz`` files.

    Unpaired: a case holds ceT1 or hrT2; ``modalities`` lists those every case must have (none by default).
    """
    src = Path(src)
    _check_source(src)
    by_case: dict[str, CaseSpec] = {}
    for f in sorted(p for suf in NIFTI_SUFFIXES for p in src.rglob(f"*{suf}")):
        stem = _strip_nifti(f.name)
        m = _CROSSMODA.match(stem or "")
        if not m or f.name.startswith("."):
            continue
        spec = by_case.setdefault(m["case"], CaseSpec(m["case"], {}))
        slot = "mask" if m["kind"] == "Label" else m["kind"]
        if (slot == "mask" and spec.mask is not None) or slot in spec.images:
            raise DataError(f"{src}: duplicate case id {m['case']!r} ({f} appears twice)")
        if slot == "mask":
            spec.mask = f
        else:
            spec.images[slot] = f
    if not by_case:
        raise DataError(f"{src}: no CrossMoDA case found (expected <case>_ceT1.nii.gz / <case>_hrT2.nii.gz)")
    for spec in by_case.values():
        if not spec.images:
            raise DataError(f"case {spec.case_id}: label file {spec.mask} has no ceT1/hrT2 image beside it")
    return _apply_missing(sorted(by_case.values(), key=lambda s: s.case_id), tuple(modalities), missing, src)


def _read_manifest_rows(path: Path) -> list[dict[str, str]]:
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
            if isinstance(rows, dict):
                rows = rows.get("cases", rows.get("rows"))
            if not isinstance(rows, list):
                raise ValueError("expected a list of rows (or {'cases': [...]})")
            return [{k: ("" if v is None else str(v)) for k, v in r.items()} for r in rows]
        with path.open(newline="") as fh:
            return [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(fh)]
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: cannot read manifest ({e})") from None


def find_manifest(src: Path, missing: str = "fail", modalities: tuple[str, ...] | None = None) -> list[CaseSpec]:
    """Manifest CSV/JSON rows: case, modality, image, mask (optional), weak_left/weak_right (A/P, optional).

    Relative paths are relative to the manifest's folder. ``modalities`` every case must have
    (default: every modality the manifest names).
    """
    path = Path(src)
    if not path.is_file():
        raise DataError(f"{path}: manifest file does not exist")
    rows = _read_manifest_rows(path)
    if not rows:
        raise DataError(f"{path}: manifest has no rows")
    for col in ("case", "modality", "image"):
        if col not in rows[0]:
            raise DataError(f"{path}: manifest lacks the column {col!r} (has {sorted(rows[0])})")
    by_case: dict[str, CaseSpec] = {}
    for i, r in enumerate(rows, start=2):
        case, mod, image = r["case"], r["modality"], r["image"]
        if not case or not mod or not image:
            raise DataError(f"{path}: row {i} needs case, modality and image")
        spec = by_case.setdefault(case, CaseSpec(case, {}))
        if mod in spec.images:
            raise DataError(f"{path}: duplicate case id {case!r} with modality {mod!r} (row {i})")
        spec.images[mod] = _resolve(path, image)
        if r.get("mask"):
            mask = _resolve(path, r["mask"])
            if spec.mask is not None and spec.mask != mask:
                raise DataError(f"{path}: case {case!r} names two different masks ({spec.mask}, {mask})")
            spec.mask = mask
        weak = _weak_labels(path, i, r)
        if weak is not None:
            spec.weak = weak
    required = tuple(modalities) if modalities is not None else tuple(sorted({m for s in by_case.values() for m in s.images}))
    return _apply_missing(sorted(by_case.values(), key=lambda s: s.case_id), required, missing, path)


def _resolve(manifest: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else manifest.parent / q


def _weak_labels(path: Path, row: int, r: dict[str, str]) -> dict[str, str] | None:
    left, right = r.get("weak_left", "").upper(), r.get("weak_right", "").upper()
    if not left and not right:
        return None
    if left not in ("A", "P") or right not in ("A", "P"):
        raise DataError(f"{path}: row {row}: weak_left/weak_right must both be A or P, got {left!r}/{right!r}")
    return {"left": left, "right": right}


LAYOUTS = {"brats": find_brats, "crossmoda": find_crossmoda, "manifest": find_manifest}


def find_cases(src: str | Path, layout: str, missing: str = "fail",
               modalities: tuple[str, ...] | None = None) -> list[CaseSpec]:
    """Cases of ``src`` in ``layout`` ("brats", "crossmoda", "manifest")."""
    if layout not in LAYOUTS:
        raise DataError(f"--layout {layout!r} must be one of {', '.join(LAYOUTS)}")
    kwargs = {} if modalities is None else {"modalities": tuple(modalities)}
    return LAYOUTS[layout](Path(src), missing=missing, **kwargs)
