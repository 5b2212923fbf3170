"""Find the cases of a source dataset: BraTS folders, CrossMoDA files, or a manifest CSV/JSON.

Every layout returns a list of :class:`CaseSpec` (sorted by case id) with canonical modality names
(``hpc_modatts.data.aliases``: BraTS 2023-2025's ``t1c`` is stored as ``t1ce``) and the naming
generation of the release (``CaseSpec.generation``), which ``--labels auto`` uses to read the
label values (``hpc_modatts.data.labels``). ``detect_layout`` picks the layout from the folder.

Recognised namings (a case's optional brain mask: ``<case>_brainmask``, ``<case>_brain_mask``,
``<case>_mask`` or ``<case>-mask``, any NIfTI suffix):

* BraTS 2018-2021: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (anywhere below the folder,
  e.g. ``HGG/``/``LGG/`` of 2018-2019); BraTS 2020's mis-named ``W39_1998.09.19_Segm.nii`` is
  taken as that folder's mask.
* BraTS 2023-2025 (GLI, MEN, MET, PED, SSA): ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``
  with ``<case>`` = ``BraTS-GLI-00000-000`` etc.
* CrossMoDA 2021-2023: flat ``<case>_ceT1.nii.gz`` (+ ``<case>_Label.nii.gz``) and
  ``<case>_hrT2.nii.gz`` with ``<case>`` = ``crossmoda_1``, ``crossmoda2022_etz_1``,
  ``crossmoda2023_ukm_1`` ...; the unlabelled hrT2 target set is a folder of ``_hrT2`` files only.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpc_modatts.data.aliases import canonical
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.labels import SCHEMES, LabelScheme  # noqa: F401 (LabelScheme re-exported)

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
CROSSMODA_MODALITIES = ("ceT1", "hrT2")
BRATS_NAMINGS = {
    "t1": "2018-2021",
    "t1ce": "2018-2021",
    "t2": "2018-2021",
    "flair": "2018-2021",
    "t1n": "2023-2025",
    "t1c": "2023-2025",
    "t2w": "2023-2025",
    "t2f": "2023-2025",
}
"""File key (last ``_``/``-`` token of the name) -> the BraTS naming generation using it."""
SEG_KEYS = ("seg", "segm")
BRAIN_KEYS = ("brainmask", "mask")
LAYOUT_CHOICES = ("auto", "brats", "crossmoda", "manifest")

# the layout's default scheme, for callers that name a layout instead of a scheme
LABEL_SCHEMES = {"brats": SCHEMES["brats2021"], "crossmoda": SCHEMES["crossmoda"], "manifest": SCHEMES["nonzero"]}


@dataclass
class CaseSpec:
    """One case of a source dataset."""

    case_id: str
    images: dict[str, Path]  # canonical modality -> NIfTI path
    mask: Path | None = None  # label map (original values), or None
    weak: dict[str, str] | None = None  # {"left": "P"|"A", "right": "P"|"A"} (manual)
    extra: dict[str, str] = field(default_factory=dict)
    brain: Path | None = None  # brain mask file (> 0 = brain), or None
    names: dict[str, str] = field(default_factory=dict)  # canonical modality -> name in the files
    generation: str = ""  # naming generation, e.g. "brats2023-2025"


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
            raise DataError(
                f"case {spec.case_id}: missing modality {', '.join(lacking)} in {src} "
                "(use --missing skip to leave such cases out)"
            )
        else:
            log.warning("case %s: missing modality %s, skipped", spec.case_id, ", ".join(lacking))
    if not kept:
        raise DataError(f"{src}: no usable case found")
    return kept


def _unique(specs: list[CaseSpec], src: Path) -> list[CaseSpec]:
    seen: dict[str, CaseSpec] = {}
    for spec in specs:
        if spec.case_id in seen:
            first, second = next(iter(seen[spec.case_id].images.values())), next(iter(spec.images.values()))
            raise DataError(f"{src}: duplicate case id {spec.case_id!r} ({first} and {second})")
        seen[spec.case_id] = spec
    return sorted(seen.values(), key=lambda s: s.case_id)


def _brats_key(stem: str) -> str:
    """The last ``_``/``-`` separated token of a file name, lower case ("t1c", "seg", "mask" ...)."""
    return re.split(r"[-_]", stem)[-1].lower()


def _brats_folder(folder: Path) -> CaseSpec | None:
    images: dict[str, Path] = {}
    names: dict[str, str] = {}
    mask, brain, namings = None, None, set()
    for f in sorted(folder.iterdir()):
        stem = _strip_nifti(f.name)
        if stem is None or f.name.startswith("."):
            continue
        key = _brats_key(stem)
        if key in SEG_KEYS:
            if mask is not None:
                raise DataError(f"{folder}: two masks ({mask.name}, {f.name})")
            mask = f
        elif key in BRAIN_KEYS:
            brain = f
        elif key in BRATS_NAMINGS:
            mod = canonical(key)
            if mod in images:
                raise DataError(f"{folder}: {images[mod].name} and {f.name} are the same modality ({mod})")
            images[mod], names[mod] = f, key
            namings.add(BRATS_NAMINGS[key])
    if not images and mask is None:
        return None
    if len(namings) > 1:
        raise DataError(
            f"{folder}: mixes the BraTS 2018-2021 (t1, t1ce, t2, flair) and 2023-2025 "
            f"(t1n, t1c, t2w, t2f) namings ({sorted(names.values())})"
        )
    generation = f"brats{namings.pop()}" if namings else ""
    return CaseSpec(folder.name, images, mask, brain=brain, names=names, generation=generation)


def find_brats(src: Path, missing: str = "fail", modalities: tuple[str, ...] = BRATS_MODALITIES) -> list[CaseSpec]:
    """BraTS 2018-2021 or 2023-2025: a folder per case (anywhere below ``src``), see the module doc."""
    src = Path(src)
    _check_source(src)
    folders = sorted({p.parent for suf in NIFTI_SUFFIXES for p in src.rglob(f"*{suf}")})
    specs = [spec for spec in (_brats_folder(f) for f in folders) if spec is not None]
    if not specs:
        raise DataError(
            f"{src}: no BraTS case found (expected <case>/<case>_t1.nii.gz ... or <case>/<case>-t1n.nii.gz ...)"
        )
    generations = {s.generation for s in specs if s.generation}
    if len(generations) > 1:
        raise DataError(
            f"{src}: mixes BraTS namings {sorted(generations)} (their label values differ): "
            "convert each release into its own store"
        )
    generation = generations.pop() if generations else "brats2018-2021"
    for spec in specs:
        spec.generation = generation
    return _apply_missing(_unique(specs, src), tuple(canonical(m) for m in modalities), missing, src)


_CROSSMODA = re.compile(r"^(?P<case>.+)_(?P<kind>ceT1|hrT2|Label|(?i:brain[_-]?mask))$")


def _crossmoda_generation(case_ids: list[str]) -> str:
    """crossmoda2021 (``crossmoda_1``), crossmoda2022, crossmoda2023, or "crossmoda" (unknown or mixed)."""
    found = set()
    for c in case_ids:
        m = re.match(r"^crossmoda(\d{4})?_", c)
        found.add(f"crossmoda{m[1] or '2021'}" if m else "crossmoda")
    return found.pop() if len(found) == 1 else "crossmoda"


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
        kind = m["kind"]
        slot = "mask" if kind == "Label" else "brain" if kind.lower().endswith("mask") else kind
        if (slot in ("mask", "brain") and getattr(spec, slot) is not None) or slot in spec.images:
            raise DataError(f"{src}: duplicate case id {m['case']!r} ({f} appears twice)")
        if slot in ("mask", "brain"):
            setattr(spec, slot, f)
        else:
            spec.images[slot], spec.names[slot] = f, slot
    if not by_case:
        raise DataError(f"{src}: no CrossMoDA case found (expected <case>_ceT1.nii.gz / <case>_hrT2.nii.gz)")
    for spec in by_case.values():
        if not spec.images:
            raise DataError(
                f"case {spec.case_id}: label file {spec.mask or spec.brain} has no ceT1/hrT2 image beside it"
            )
    generation = _crossmoda_generation(sorted(by_case))
    for spec in by_case.values():
        spec.generation = generation
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
    """Manifest CSV/JSON rows: case, modality, image, mask and brain (optional, per case), weak_left/weak_right.

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
        case, name, image = r["case"], r["modality"], r["image"]
        if not case or not name or not image:
            raise DataError(f"{path}: row {i} needs case, modality and image")
        spec = by_case.setdefault(case, CaseSpec(case, {}, generation="manifest"))
        mod = canonical(name)
        if mod in spec.images:
            raise DataError(f"{path}: duplicate case id {case!r} with modality {name!r} (row {i})")
        spec.images[mod], spec.names[mod] = _resolve(path, image), name
        for col in ("mask", "brain"):
            if r.get(col):
                file = _resolve(path, r[col])
                if getattr(spec, col) is not None and getattr(spec, col) != file:
                    raise DataError(
                        f"{path}: case {case!r} names two different {col} files ({getattr(spec, col)}, {file})"
                    )
                setattr(spec, col, file)
        weak = _weak_labels(path, i, r)
        if weak is not None:
            spec.weak = weak
    required = (
        tuple(canonical(m) for m in modalities)
        if modalities is not None
        else tuple(sorted({m for s in by_case.values() for m in s.images}))
    )
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


def describe(specs: list[CaseSpec]) -> str:
    """One line about what was found, e.g. "5 case(s) in the BraTS 2023-2025 naming (GLI, MET), 5 with masks"."""
    gen = specs[0].generation if specs else ""
    m = re.match(r"^(brats|crossmoda)(\d{4}(?:-\d{4})?)?$", gen)
    naming = (
        f"the {'BraTS' if m[1] == 'brats' else 'CrossMoDA'} {m[2] or ''} naming".replace("  ", " ")
        if m
        else "a manifest"
    )
    subs = sorted({x[1] for x in (re.match(r"^BraTS-([A-Z]+)-\d", s.case_id) for s in specs) if x})
    if subs:
        naming += f" ({', '.join(subs)})"
    parts = [f"{len(specs)} case(s) in {naming}", f"{sum(s.mask is not None for s in specs)} with masks"]
    brains = sum(s.brain is not None for s in specs)
    if brains:
        parts.append(f"{brains} with brain-mask files")
    return ", ".join(parts)


def detect_layout(src: str | Path) -> str:
    """The layout of ``src`` from its file names: a .csv/.json file is a manifest, a folder holds
    BraTS or CrossMoDA files (see the module doc); DataError when it cannot tell."""
    src = Path(src)
    _check_source(src)
    if src.is_file():
        if src.suffix.lower() in (".csv", ".json"):
            return "manifest"
        raise DataError(f"{src}: a file, but not a .csv/.json manifest; give a dataset folder or a manifest")
    found = set()
    for p in (p for suf in NIFTI_SUFFIXES for p in src.rglob(f"*{suf}")):
        stem = _strip_nifti(p.name) or ""
        m = _CROSSMODA.match(stem)
        if m and m["kind"] in ("ceT1", "hrT2", "Label"):
            found.add("crossmoda")
        elif _brats_key(stem) in BRATS_NAMINGS:
            found.add("brats")
    if len(found) == 1:
        return found.pop()
    if found:
        raise DataError(f"{src}: holds both BraTS and CrossMoDA files; give --layout brats|crossmoda (or a manifest)")
    raise DataError(
        f"{src}: cannot tell the layout: no BraTS files (<case>/<case>_t1.nii.gz, "
        f"<case>/BraTS-GLI-00000-000-t1c.nii.gz) and no CrossMoDA files (<case>_ceT1.nii.gz, "
        f"<case>_hrT2.nii.gz); give --layout or a manifest (--layout manifest)"
    )


def resolve_layout(src: str | Path, layout: str) -> str:
    """``layout`` itself, or the detected one for "auto"."""
    if layout == "auto":
        return detect_layout(src)
    if layout not in LAYOUTS:
        raise DataError(f"--layout {layout!r} must be one of {', '.join(LAYOUT_CHOICES)}")
    return layout


def find_cases(
    src: str | Path, layout: str, missing: str = "fail", modalities: Sequence[str] | None = None
) -> list[CaseSpec]:
    """Cases of ``src`` in ``layout`` ("auto", "brats", "crossmoda", "manifest")."""
    layout = resolve_layout(src, layout)
    kwargs = {} if modalities is None else {"modalities": tuple(modalities)}
    return LAYOUTS[layout](Path(src), missing=missing, **kwargs)
