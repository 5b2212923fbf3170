"""Label schemes: what the integer values of a release's masks mean, and the tumour regions.

Each generation numbers its sub-regions differently (BraTS 2013-2015: 3 = non-enhancing tumour,
4 = enhancing; BraTS 2018-2021: 4 = enhancing, no 3; BraTS 2023-2025: 3 = enhancing, no 4; the
2024-2025 post-treatment glioma release adds 4 = resection cavity, which is not tumour; CrossMoDA:
the cochlea is labelled but is not tumour). A store keeps the ORIGINAL label map (``labels``), the
scheme's name (case attribute ``label_scheme``, root attribute ``labels``), the whole-tumour mask
(``mask``) and, where the scheme defines them, the tumour-core and enhancing-tumour masks
(``mask_core``, ``mask_enhancing``): the training target region (``data.region``) is a choice of
an experiment, not of the conversion.

``convert --labels auto`` (the default) reads every mask once and picks the scheme when the label
values found (and the release's file naming) leave one answer; otherwise it stops with one line
naming the values found and the ``--labels`` choices that fit them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import nibabel as nib
import numpy as np

from hpc_modatts.data.errors import DataError
from hpc_modatts.data.nifti_size import check_nifti_size

REGIONS = ("whole", "core", "enhancing")
REGION_NAMES = {"whole": "whole tumour", "core": "tumour core", "enhancing": "enhancing tumour"}


@dataclass(frozen=True)
class LabelScheme:
    """Allowed label values, their meaning, and the label values of each tumour region."""

    name: str
    allowed: tuple[int, ...] | None  # None: any value 0-255
    meanings: dict[int, str] = field(default_factory=dict)
    regions: dict[str, tuple[int, ...] | None] = field(default_factory=dict)  # None: every non-zero value
    auto: bool = True  # may ``--labels auto`` pick it on its own?
    description: str = ""

    @property
    def tumour(self) -> tuple[int, ...]:
        """Label values of the whole tumour (every non-zero value up to 255 for ``nonzero``)."""
        whole = self.regions["whole"]
        return tuple(range(1, 256)) if whole is None else whole

    def allows(self, values: Iterable[int]) -> bool:
        return self.allowed is None or set(values) <= set(self.allowed)

    def region_mask(self, labels: np.ndarray, region: str = "whole") -> np.ndarray:
        """uint8 {0, 1} mask of ``region`` ("whole", "core", "enhancing") in a label map."""
        if region not in self.regions:
            raise DataError(
                f"label scheme {self.name} has no {REGION_NAMES.get(region, region)} "
                f"(it defines {', '.join(self.regions)}); data.region={region} needs a BraTS scheme"
            )
        values = self.regions[region]
        if values is None:
            return (labels > 0).astype(np.uint8)
        return np.isin(labels, values).astype(np.uint8)

    def record(self) -> dict:
        """The scheme as stored in the root attributes (JSON)."""
        return {
            "scheme": self.name,
            "allowed": None if self.allowed is None else list(self.allowed),
            "meanings": {str(k): v for k, v in self.meanings.items()},
            "regions": {r: (None if v is None else list(v)) for r, v in self.regions.items()},
            "description": self.description,
        }


def _brats(name, allowed, meanings, whole, core, enh, auto=True, description="") -> LabelScheme:
    return LabelScheme(name, allowed, meanings, {"whole": whole, "core": core, "enhancing": enh}, auto, description)


SCHEMES: dict[str, LabelScheme] = {
    s.name: s
    for s in (
        _brats(
            "brats2013",
            (0, 1, 2, 3, 4),
            {1: "necrosis", 2: "oedema", 3: "non-enhancing tumour", 4: "enhancing tumour"},
            (1, 2, 3, 4),
            (1, 3, 4),
            (4,),
            description="BraTS 2013-2015 and copies derived from them",
        ),
        _brats(
            "brats2021",
            (0, 1, 2, 4),
            {1: "necrotic / non-enhancing core", 2: "oedema", 4: "enhancing tumour"},
            (1, 2, 4),
            (1, 4),
            (4,),
            description="BraTS 2017-2021",
        ),
        _brats(
            "brats2023",
            (0, 1, 2, 3),
            {1: "non-enhancing tumour core", 2: "surrounding FLAIR hyperintensity", 3: "enhancing tumour"},
            (1, 2, 3),
            (1, 3),
            (3,),
            description="BraTS 2023-2025 GLI, MEN, MET, PED, SSA",
        ),
        _brats(
            "brats2024",
            (0, 1, 2, 3, 4),
            {
                1: "non-enhancing tumour core",
                2: "surrounding FLAIR hyperintensity",
                3: "enhancing tumour",
                4: "resection cavity (not tumour)",
            },
            (1, 2, 3),
            (1, 3),
            (3,),
            auto=False,
            description="BraTS 2024-2025 post-treatment glioma (4 = resection cavity, not tumour)",
        ),
        LabelScheme("binary", (0, 1), {1: "tumour"}, {"whole": (1,)}, description="0 background, 1 tumour"),
        LabelScheme("nonzero", None, {}, {"whole": None}, auto=False, description="every non-zero value is tumour"),
        LabelScheme(
            "crossmoda",
            (0, 1, 2),
            {1: "vestibular schwannoma", 2: "cochlea (not tumour)"},
            {"whole": (1,)},
            description="CrossMoDA 2021-2022",
        ),
        LabelScheme(
            "crossmoda2023",
            (0, 1, 2, 3),
            {
                1: "intra-meatal vestibular schwannoma",
                2: "extra-meatal vestibular schwannoma",
                3: "cochlea (not tumour)",
            },
            {"whole": (1, 2)},
            description="CrossMoDA 2023 (tumour sub-segmented intra/extra-meatal)",
        ),
    )
}
LABEL_CHOICES = ("auto", *SCHEMES)
"""Values of ``convert --labels``."""

# (candidate schemes tried by --labels auto, the one the release's naming implies) per naming generation
GENERATIONS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "brats2018-2021": (("brats2021", "brats2013", "brats2023", "binary"), "brats2021"),
    "brats2023-2025": (("brats2023", "binary"), "brats2023"),
    "crossmoda2021": (("crossmoda", "crossmoda2023", "binary"), "crossmoda"),
    "crossmoda2022": (("crossmoda", "crossmoda2023", "binary"), "crossmoda"),
    "crossmoda2023": (("crossmoda2023", "crossmoda", "binary"), None),
    "crossmoda": (("crossmoda", "crossmoda2023", "binary"), None),  # unknown or mixed file prefixes
    "manifest": (tuple(n for n, s in SCHEMES.items() if s.auto), None),
}


def get_scheme(name: str | LabelScheme) -> LabelScheme:
    if isinstance(name, LabelScheme):
        return name
    if name not in SCHEMES:
        raise DataError(f"--labels {name!r} must be one of {', '.join(LABEL_CHOICES)}")
    return SCHEMES[name]


def _agree(schemes: list[LabelScheme], values: set[int], region: str | None = None) -> bool:
    """Do the schemes give the same regions (or ``region``) for the label values present? (only regions all define)"""
    regions = {region} if region else set.intersection(*(set(s.regions) for s in schemes))

    def inside(s: LabelScheme, r: str, v: int) -> bool:
        labels = s.regions[r]  # None: every tumour label
        return labels is None or v in labels

    for r in regions:
        masks = {frozenset(v for v in values if v > 0 and inside(s, r, v)) for s in schemes}
        if len(masks) > 1:
            return False
    return True


def _choices(values: set[int]) -> str:
    fits = [s for s in SCHEMES.values() if s.allows(values)]
    return ", ".join(f"--labels {s.name} ({s.description})" for s in fits)


def detect_scheme(
    values: Iterable[int], generation: str, where: str, region: str | None = None
) -> tuple[LabelScheme, str]:
    """(scheme, how it was chosen) for the union of label values of a dataset; DataError when ambiguous.

    ``region``: only schemes defining it are candidates, and they need to agree on it alone
    (evaluation of one region)."""
    values = {int(v) for v in values}
    candidates, preferred = GENERATIONS.get(generation, GENERATIONS["manifest"])
    if region:
        candidates = tuple(n for n in candidates if region in SCHEMES[n].regions)
        preferred = preferred if preferred in candidates else None
    found = sorted(values)
    if not values - {0}:
        name = preferred or "binary"
        return SCHEMES[name], f"no tumour label in any mask; {name} assumed"
    if preferred and SCHEMES[preferred].allows(values):
        return SCHEMES[preferred], f"label values {found} and the {generation} naming"
    if SCHEMES["binary"].allows(values) and "binary" in candidates:
        return SCHEMES["binary"], f"label values {found}"
    # narrowest first: when brats2021 and brats2013 read {0, 1, 2, 4} alike, record brats2021
    fits = sorted((SCHEMES[n] for n in candidates if SCHEMES[n].allows(values)), key=lambda s: len(s.allowed or ()))
    if len(fits) == 1 or (fits and _agree(fits, values, region)):
        return fits[0], f"label values {found}"
    if not fits:
        raise DataError(
            f"{where}: label values {found} fit no label scheme of the {generation} naming; "
            f"choose one: {_choices(values)}"
        )
    raise DataError(
        f"{where}: label values {found} are ambiguous ({', '.join(s.name for s in fits)} read them "
        f"differently); choose one: {_choices(values)}"
    )


def scan_label_values(path: str, case: str) -> dict:
    """Label values of one mask file (a dask task): {"case", "values", "error"}."""
    try:
        check_nifti_size(path, "mask")  # before allocating what a forged header claims
        data = np.asanyarray(nib.load(str(path)).dataobj)
        values = np.unique(data)
        if values.dtype.kind == "f" and not np.array_equal(values, np.rint(values)):
            return {"case": case, "values": [], "error": f"{path}: mask has non-integer values"}
        return {"case": case, "values": [int(v) for v in values], "error": ""}
    except DataError as e:
        return {"case": case, "values": [], "error": str(e)}
    except Exception as e:  # corrupt files: one line naming the file, reported by convert
        error = f"{path}: cannot read mask ({type(e).__name__}: {e})".replace("\n", " ")
        return {"case": case, "values": [], "error": error}


# ----------------------------------------------------------------------------- regions in a store
def region_array(region: str) -> str:
    """Store array holding a region's mask: ``mask`` (whole tumour), ``mask_core``, ``mask_enhancing``."""
    if region not in REGIONS:
        raise DataError(f"region {region!r} must be one of {', '.join(REGIONS)}")
    return "mask" if region == "whole" else f"mask_{region}"


def region_masks(labels: np.ndarray, scheme: LabelScheme) -> dict[str, np.ndarray]:
    """The extra region arrays of a case ({"mask_core": ..., "mask_enhancing": ...}) its scheme defines."""
    return {region_array(r): scheme.region_mask(labels, r) for r in REGIONS[1:] if r in scheme.regions}


def read_region(store, case: str, region: str = "whole", region_slice=None) -> np.ndarray | None:
    """uint8 mask of ``region`` of a case in a store; None when the case has no mask at all."""
    name = region_array(region)
    if name == "mask":
        return store.read_mask(case, region_slice)
    if name in store.array_names(case):
        return np.asarray(store.read_array(case, name, region_slice), dtype=np.uint8)
    if store.mask(case) is None:
        return None
    scheme = store.attrs(case).get("label_scheme", "unknown")
    raise DataError(
        f"{store.path}: case {case!r} has no {REGION_NAMES[region]} ({name}): label scheme {scheme!r} "
        f"does not define it; data.region={region} needs a store converted with a BraTS scheme"
    )
