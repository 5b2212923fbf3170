"""Modality names: one name per MRI contrast, whatever the release calls it.

BraTS 2018-2021 name their contrasts ``t1``, ``t1ce``, ``t2``, ``flair``; BraTS 2023-2025 call the
same contrasts ``t1n``, ``t1c``, ``t2w``, ``t2f``. Stores hold the first (canonical) name, so the
paper configs (``data.source: t1``) and splits work with every generation; configs, splits and
manifests may use either name (:func:`canonical` maps it), and ``convert`` records this table and
the names the files used in the store's root attributes (``modality_aliases``, ``modality_names``).
Names outside the table (``ceT1``, ``hrT2``, ``ct``, your own) are kept as they are.
"""

from __future__ import annotations

from typing import Iterable

from hpc_modatts.data.errors import DataError

ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1n",),  # native T1 (BraTS 2023-2025: t1n)
    "t1ce": ("t1c",),  # contrast-enhanced T1 (BraTS 2023-2025: t1c)
    "t2": ("t2w",),  # T2-weighted (BraTS 2023-2025: t2w)
    "flair": ("t2f",),  # T2-FLAIR (BraTS 2023-2025: t2f)
}
"""Canonical name -> the other names of the same contrast."""

_TO_CANONICAL = {name: canon for canon, names in ALIASES.items() for name in (canon, *names)}


def canonical(name: str) -> str:
    """The stored name of a modality: ``t1c`` -> ``t1ce``, ``T2W`` -> ``t2``; other names unchanged."""
    return _TO_CANONICAL.get(str(name).strip().lower(), str(name).strip())


def same_modality(a: str, b: str) -> bool:
    return canonical(a) == canonical(b)


def resolve(name: str, available: Iterable[str], where: str) -> str:
    """The member of ``available`` that names the same contrast as ``name``; DataError if none."""
    available = list(available)
    if name in available:
        return name
    hits = [m for m in available if same_modality(m, name)]
    if len(hits) == 1:
        return hits[0]
    also = f" (alias of {canonical(name)})" if canonical(name) != name else ""
    raise DataError(f"{where}: no modality {name!r}{also}; the store has {sorted(available)}")


def alias_table() -> dict[str, list[str]]:
    """The table as recorded in a store's root attributes."""
    return {canon: list(names) for canon, names in ALIASES.items()}
