"""Check a store case by case: shapes, attributes, source checksums, value ranges, and that
every array is intact against the checksums recorded when it was written.

Store level: every case of the root attribute ``expected_cases`` (written by ``convert``) is
present and complete; leftover temp folders are reported (warning) with whether their writer
still runs. Case level: the ``arrays`` list of the case attributes against the arrays on disk
(``Store.array_problems``: missing or extra arrays, deleted chunks/shards, changed bytes), the
value checks, and the whole-tumour mask against ``labels`` (an emptied mask is caught).

``verify(store) -> list[Problem]``; errors make ``hpc-modatts verify`` exit non-zero, warnings
(e.g. a source file that moved) do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from hpc_modatts.console import log_console
from hpc_modatts.data.convert import sha256
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.integrity import temp_owner_alive
from hpc_modatts.data.store import IMAGE_PREFIX, Store

# attributes every case of a converted dataset carries (docs/interfaces.md "case attributes")
DATASET_ATTRS = (
    "affine",
    "spacing",
    "shape",
    "original_shape",
    "original_affine",
    "original_orientation",
    "crop_box",
    "resampled_shape",
    "sources",
    "norm",
    "hemisphere_split",
    "weak_labels",
    "has_mask",
    "complete",
)
OTHER_ATTRS = ("shape", "has_mask", "complete")


@dataclass(frozen=True)
class Problem:
    case: str  # case id, or "" for the store itself
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.case or '<store>'}: {self.message}"


def verify(store: str | Path | Store, check_sources: bool = True) -> list[Problem]:
    """Every problem found in the store (empty list = all good)."""
    try:
        st = store if isinstance(store, Store) else Store.open(store)
    except DataError as e:
        return [Problem("", "error", str(e))]
    problems: list[Problem] = []
    cases = st.all_case_dirs()
    if not cases:
        problems.append(Problem("", "error", "the store holds no case"))
    problems += _check_store_level(st, cases)
    required = DATASET_ATTRS if st.root_attrs.get("kind") == "dataset" else OTHER_ATTRS
    for case in cases:
        problems += verify_case(st, case, required, check_sources)
    return problems


def _check_store_level(st: Store, cases: list[str]) -> list[Problem]:
    """Expected cases that are missing; temp folders left behind (or being written)."""
    out = [
        Problem(
            case,
            "error",
            "case is missing (listed in the store's expected cases: deleted, "
            "or its conversion failed; run convert again)",
        )
        for case in sorted(set(st.root_attrs.get("expected_cases") or []) - set(cases))
    ]
    for name in st.temp_folders():
        alive = temp_owner_alive(name)
        state = {
            True: "its writer is still running",
            False: "its writer is gone; the next convert removes it",
            None: "writer unknown (another host or an older version); removed after a day",
        }[alive]
        out.append(Problem("", "warning", f"temporary folder cases/{name} ({state})"))
    return out


def verify_case(st: Store, case: str, required=DATASET_ATTRS, check_sources: bool = True) -> list[Problem]:
    try:
        attrs = st.attrs(case)
    except Exception as e:  # unreadable group metadata
        return [Problem(case, "error", f"unreadable case group ({type(e).__name__}: {e})")]
    out = [Problem(case, "error", f"missing attribute {k!r}") for k in required if k not in attrs]
    if not attrs.get("complete"):
        out.append(Problem(case, "error", "case is not complete (interrupted write?)"))
    intact: dict[str, np.ndarray] = {}  # arrays read (once) by the checksum check
    try:
        out += _check_integrity(st, case, attrs, intact)
    except Exception as e:  # noqa: BLE001 - a damaged folder listing or metadata
        out.append(Problem(case, "error", f"cannot check arrays ({type(e).__name__}: {e})".replace("\n", " ")))
    try:
        out += _check_arrays(st, case, attrs, intact)
    except Exception as e:  # corrupt chunks, missing files
        out.append(Problem(case, "error", f"cannot read arrays ({type(e).__name__}: {e})".replace("\n", " ")))
    if check_sources:
        out += _check_sources(case, attrs.get("sources") or {})
    return out


def _check_integrity(st: Store, case: str, attrs: dict, intact: dict[str, np.ndarray]) -> list[Problem]:
    """Arrays against their recorded checksums (the intact ones go into ``intact``), and the
    whole-tumour mask against the labels."""
    if "arrays" not in attrs:
        return [
            Problem(
                case,
                "warning",
                "no array checksums (written by an older hpc-modatts): damaged "
                "chunks cannot be detected; convert again to add them",
            )
        ]
    out = [Problem(case, "error", p) for p in st.array_problems(case, intact.__setitem__)]
    tumour = attrs.get("tumour_labels")
    if "mask" in intact and "labels" in intact and tumour is not None:
        if not np.array_equal(intact["mask"] > 0, np.isin(intact["labels"], tumour)):
            out.append(Problem(case, "error", f"mask differs from labels in {tumour} (whole tumour)"))
    return out


def _check_arrays(st: Store, case: str, attrs: dict, intact: dict[str, np.ndarray]) -> list[Problem]:
    out: list[Problem] = []
    names = st.array_names(case)
    shapes = {n: tuple(st.array(case, n).shape) for n in names}
    expected = tuple(attrs.get("shape") or next(iter(shapes.values()), ()))
    for n, s in shapes.items():
        if s != expected:
            out.append(Problem(case, "error", f"array {n!r} has shape {list(s)}, expected {list(expected)}"))
    if not any(n.startswith(IMAGE_PREFIX) for n in names) and st.root_attrs.get("kind") == "dataset":
        out.append(Problem(case, "error", "no image array"))
    for n in names:
        data = intact[n] if n in intact else st.read_array(case, n)
        if n.startswith(IMAGE_PREFIX):
            if not np.isfinite(data).all():
                out.append(Problem(case, "error", f"{n} has NaN/Inf values"))
            elif data.min() < -1 or data.max() > 1:
                out.append(Problem(case, "error", f"{n} values [{data.min():.3g}, {data.max():.3g}] outside [-1, 1]"))
        elif n in ("mask", "brain") or n.startswith("mask_"):  # mask_core, mask_enhancing: tumour regions
            bad = sorted(set(np.unique(data).tolist()) - {0, 1})
            if bad:
                out.append(Problem(case, "error", f"{n} has values {bad}, expected only 0/1"))
            if n == "brain" and not data.any():
                out.append(Problem(case, "error", "brain mask is empty"))
        elif n == "labels" and attrs.get("label_values") is not None:
            bad = sorted(set(np.unique(data).tolist()) - set(attrs["label_values"]))
            if bad:
                out.append(Problem(case, "error", f"labels has values {bad}, allowed {attrs['label_values']}"))
    if bool(attrs.get("has_mask")) != ("mask" in names):
        state = "present" if "mask" in names else "absent"
        out.append(Problem(case, "error", f"has_mask={attrs.get('has_mask')} but mask array {state}"))
    return out


def _check_sources(case: str, sources: dict) -> list[Problem]:
    out = []
    for key, entry in sources.items():
        path = Path(entry.get("path", ""))
        if not path.is_file():
            out.append(Problem(case, "warning", f"source moved: {key} file {path} not found (checksum not checked)"))
        elif sha256(path) != entry.get("sha256"):
            out.append(
                Problem(case, "error", f"source changed: {key} file {path} no longer matches its sha256 (reconvert)")
            )
    return out


def print_report(store_path: str | Path, problems: list[Problem], n_cases: int) -> None:
    """A rich table of the problems (or a one-line all-clear)."""
    console = log_console()
    if not problems:
        console.print(f"[green]{store_path}: {n_cases} case(s), no problem found[/green]")
        return
    table = Table(title=f"{store_path}: {n_cases} case(s)")
    for col in ("case", "severity", "problem"):
        table.add_column(col)
    for p in problems:
        colour = "red" if p.severity == "error" else "yellow"
        table.add_row(p.case or "<store>", f"[{colour}]{p.severity}[/{colour}]", p.message)
    console.print(table)
