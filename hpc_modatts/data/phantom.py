"""The embedded demo dataset: multi-contrast brain phantoms with tumours, BraTS-layout NIfTI.

No real data can be shipped or downloaded, so cases are synthesised from the MNI152 2009 template
and its grey/white-matter probability maps that the ``nilearn`` package ships inside its own
files (``nilearn/datasets/data/mni_icbm152_*.nii.gz``; read directly, no fetcher, no network).

Per case (deterministic per ``(seed, case index)``):
1. a random smooth deformation of the anatomy (random affine + smooth displacement field,
   ``scipy.ndimage.map_coordinates``);
2. a random tumour in ONE hemisphere (the other one is always tumour-free): irregular nested
   blobs = necrotic core (label 1), enhancing rim (4), oedema (2), BraTS label values;
3. a tissue-to-intensity table per contrast (T1, T1ce, T2, FLAIR) with per-case jitter, a smooth
   multiplicative bias field and Rician noise; the background outside the brain is exactly 0
   (skull-stripped, like BraTS).
Written as ``<out>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` in LPS orientation (like BraTS).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from hpc_modatts.data.errors import DataError
from hpc_modatts.runs import atomic_path

CONTRASTS = ("t1", "t1ce", "t2", "flair")
TISSUES = ("csf", "gm", "wm", "necrosis", "oedema", "enhancing")
# Relative signal per tissue (columns as TISSUES). Encodes the textbook contrast rules:
# CSF dark in T1/T1ce, bright in T2, suppressed in FLAIR; WM brighter than GM in T1, darker in T2;
# necrotic core hypo-intense in T1 (bright in T2); oedema bright in T2/FLAIR; enhancing rim
# bright only in T1ce (gadolinium).
INTENSITY = {
    "t1": (0.25, 0.55, 0.80, 0.20, 0.45, 0.50),
    "t1ce": (0.25, 0.55, 0.75, 0.20, 0.45, 1.15),
    "t2": (1.00, 0.60, 0.42, 0.90, 0.88, 0.70),
    "flair": (0.12, 0.60, 0.45, 0.55, 1.00, 0.80),
}
FIELD_OF_VIEW_MM = (192, 224, 192)  # (X, Y, Z) extent of a case: 96x112x96 at 2 mm
BRATS_LABELS = (0, 1, 2, 4)
SHARED_BIAS = True
TUMOUR_RADII_MM = (20.0, 34.0)
BIAS_AMPLITUDE = (0.02, 0.06)


@dataclass(frozen=True)
class Anatomy:
    """Template tissue maps on the case grid (RAS), plus the grid's affine."""

    gm: np.ndarray  # (X, Y, Z) float32 in [0, 1]
    wm: np.ndarray
    csf: np.ndarray
    support: np.ndarray  # (X, Y, Z) float32, 1 inside the skull-stripped brain
    affine: np.ndarray  # 4x4 RAS


def _nilearn_data_dir() -> Path:
    try:  # an optional dependency (the demo extra): only the phantom needs it
        import nilearn
    except ImportError:
        raise DataError("the phantom needs the 'nilearn' package (pip install 'hpc-modatts[demo]')") from None
    d = Path(nilearn.__file__).parent / "datasets" / "data"
    if not (d / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").is_file():
        raise DataError(f"{d}: nilearn's MNI152 template files are missing from this installation")
    return d


def _block_mean(vol: np.ndarray, factor: int) -> np.ndarray:
    """Downsample by an integer factor with a box average (anti-aliased, exact, fast)."""
    if factor == 1:
        return vol.astype(np.float32)
    s = [n - n % factor for n in vol.shape]
    v = vol[: s[0], : s[1], : s[2]].astype(np.float32)
    return v.reshape(s[0] // factor, factor, s[1] // factor, factor, s[2] // factor, factor).mean(axis=(1, 3, 5))


def _fit(vol: np.ndarray, start: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Crop/zero-pad ``vol`` to ``shape`` starting at index ``start`` (may be negative)."""
    out = np.zeros(shape, np.float32)
    src = tuple(slice(max(0, a), min(n, a + m)) for a, n, m in zip(start, vol.shape, shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start))
    out[dst] = vol[src]
    return out


@functools.lru_cache(maxsize=4)
def load_anatomy(spacing: int = 2) -> Anatomy:
    """MNI152 tissue maps at ``spacing`` mm, cropped/padded around the brain to FIELD_OF_VIEW_MM."""
    if int(spacing) != spacing or not 1 <= spacing <= 8:
        raise DataError(f"phantom spacing {spacing} mm must be an integer between 1 and 8")
    spacing = int(spacing)
    d = _nilearn_data_dir()
    img = nib.load(d / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    t1 = np.asarray(img.dataobj)
    gm = np.asarray(nib.load(d / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").dataobj) / 255.0
    wm = np.asarray(nib.load(d / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").dataobj) / 255.0
    support = ndi.binary_fill_holes(t1 > 0).astype(np.float32)
    maps = [_block_mean(v, spacing) for v in (gm, wm, support)]
    shape = tuple(int(round(f / spacing)) for f in FIELD_OF_VIEW_MM)
    nz = np.argwhere(maps[2] > 0.5)
    centre = (nz.min(0) + nz.max(0) + 1) // 2
    start = centre - np.array(shape) // 2
    gm, wm, support = (_fit(m, start, shape) for m in maps)
    gm, wm = gm * support, wm * support
    csf = np.clip(support - gm - wm, 0.0, 1.0)
    # voxel j of the case grid = centre of the 1 mm block starting at (j + start) * spacing
    affine = img.affine @ np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = img.affine[:3, :3] @ (start * spacing + (spacing - 1) / 2.0) + img.affine[:3, 3]
    return Anatomy(gm, wm, csf, support, affine)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int = 6) -> np.ndarray:
    """A smooth random field, zero mean unit std: coarse gaussian noise upsampled (order 1)."""
    grid = tuple(max(2, round(coarse * s / max(shape))) for s in shape)
    f = ndi.zoom(rng.standard_normal(grid).astype(np.float32), [s / g for s, g in zip(shape, grid)], order=1)
    f = _fit(f, np.zeros(3, int), shape)
    return (f - f.mean()) / (f.std() + 1e-6)


def deform(anat: Anatomy, rng: np.random.Generator, spacing: int) -> tuple[np.ndarray, ...]:
    """Random affine (scale +-6 %, small rotation) + smooth displacement (~4 mm) of the tissue maps."""
    shape = anat.gm.shape
    centre = (np.array(shape) - 1) / 2.0
    angle = np.deg2rad(rng.uniform(-6, 6))
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    mat = rot @ np.diag(rng.uniform(0.94, 1.06, 3))
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None].astype(np.float32)
    coords = (mat.astype(np.float32) @ grid) + centre[:, None].astype(np.float32)
    amp = 4.0 / spacing
    for ax in range(3):
        coords[ax] += amp * smooth_field(rng, shape, coarse=5).reshape(-1)
    out = [
        ndi.map_coordinates(m, coords, order=1, mode="constant", cval=0.0).reshape(shape)
        for m in (anat.csf, anat.gm, anat.wm, anat.support)
    ]
    return tuple(out)


def brain_mask_of(support: np.ndarray) -> np.ndarray:
    """Largest component of the support, holes filled: what preprocessing recovers from images."""
    fg = support > 0.5
    lab, n = ndi.label(fg)
    if n > 1:
        fg = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    return ndi.binary_fill_holes(fg)


def hemisphere_split(brain: np.ndarray) -> int:
    """X index of the midline: the middle of the brain's X bounding box (left = [0, split))."""
    xs = np.nonzero(brain.any(axis=(1, 2)))[0]
    return int((xs[0] + xs[-1] + 1) // 2)


def make_tumour(brain: np.ndarray, rng: np.random.Generator, spacing: int, side: str) -> np.ndarray:
    """Labels (X, Y, Z) uint8 with 1 necrosis, 4 enhancing rim, 2 oedema, in one hemisphere."""
    split = hemisphere_split(brain)
    half = np.zeros_like(brain)
    if side == "left":
        half[: split - 1] = True
    else:
        half[split + 1 :] = True
    inside = brain & half
    depth = ndi.distance_transform_edt(inside) * spacing  # mm from the edge of the hemisphere
    for _ in range(20):
        radii = rng.uniform(*TUMOUR_RADII_MM, 3) / spacing  # whole-tumour semi-axes in voxels
        candidates = np.argwhere(depth > 0.6 * radii.min() * spacing)
        if len(candidates) == 0:
            candidates = np.argwhere(inside)
        centre = candidates[rng.integers(len(candidates))]
        labels = _nested_blobs(brain.shape, centre, radii, rng) * inside
        if (labels > 0).sum() * spacing**3 >= 1500:  # at least 1.5 ml
            return labels.astype(np.uint8)
    raise DataError("phantom: could not place a tumour inside the brain (grid too small?)")


def _nested_blobs(shape, centre, radii, rng) -> np.ndarray:
    """Irregular nested ellipsoids: oedema ⊃ enhancing rim ⊃ necrotic core."""
    r = np.ceil(radii * 1.6).astype(int) + 2
    lo = np.maximum(centre - r, 0)
    hi = np.minimum(centre + r + 1, shape)
    box = tuple(hi - lo)
    idx = np.indices(box, dtype=np.float32)
    rho = np.sqrt(sum(((idx[a] + lo[a] - centre[a]) / radii[a]) ** 2 for a in range(3)))
    labels_box = np.zeros(box, np.uint8)
    whole = rho + 0.25 * smooth_field(rng, box, coarse=4) < 1.0
    core = rho + 0.15 * smooth_field(rng, box, coarse=4) < rng.uniform(0.55, 0.75)
    necrosis = rho + 0.1 * smooth_field(rng, box, coarse=3) < rng.uniform(0.3, 0.45)
    labels_box[whole] = 2
    labels_box[core] = 4
    labels_box[necrosis & core] = 1
    labels = np.zeros(shape, np.uint8)
    labels[tuple(slice(a, b) for a, b in zip(lo, hi))] = labels_box
    return labels


def render(
    fractions: np.ndarray, brain: np.ndarray, contrast: str, rng: np.random.Generator, bias: np.ndarray | None = None
) -> np.ndarray:
    """One contrast from tissue fractions (T, X, Y, Z): table * jitter, texture, bias, Rician noise.

    ``bias``: the session's multiplicative bias field (X, Y, Z), shared by every contrast of a case;
    None draws an independent one for this contrast (the pre-0.2 phantom)."""
    table = np.asarray(INTENSITY[contrast], np.float32) * rng.normal(1.0, 0.05, len(TISSUES)).astype(np.float32)
    img = np.tensordot(table, fractions, axes=1)  # (X, Y, Z)
    shape: tuple[int, ...] = img.shape
    img *= 1.0 + 0.03 * smooth_field(rng, shape, coarse=24)  # tissue texture
    img *= bias if bias is not None else np.exp(rng.uniform(0.05, 0.15) * smooth_field(rng, shape, coarse=3))
    sigma = rng.uniform(0.015, 0.035)
    noise_r = rng.normal(0.0, sigma, shape).astype(np.float32)
    noise_i = rng.normal(0.0, sigma, shape).astype(np.float32)
    img = np.sqrt((img + noise_r) ** 2 + noise_i**2)  # Rician magnitude
    img = np.where(brain, np.maximum(np.rint(img * 1000.0), 1.0), 0.0)  # background exactly 0
    return img.astype(np.int16)


def make_case(index: int, seed: int = 0, spacing: int = 2, healthy: bool = False) -> dict[str, np.ndarray | str]:
    """Arrays of one case in RAS: {"t1", "t1ce", "t2", "flair": int16, "seg": uint8, "side": str}."""
    anat = load_anatomy(spacing)
    rng = np.random.default_rng([int(seed), int(index)])
    csf, gm, wm, support = deform(anat, rng, spacing)
    brain = brain_mask_of(support)
    side = str(rng.choice(["left", "right"]))
    seg = np.zeros(brain.shape, np.uint8) if healthy else make_tumour(brain, rng, spacing, side)
    tumour = [ndi.gaussian_filter((seg == v).astype(np.float32), 0.6) for v in (1, 2, 4)]  # soft edges
    t_total = np.clip(sum(tumour), 0.0, 1.0)
    normal = [m * (1.0 - t_total) for m in (csf, gm, wm)]
    fractions = np.stack(normal + [tumour[0], tumour[1], tumour[2]]) * brain  # (T, X, Y, Z), TISSUES order
    bias = np.exp(rng.uniform(*BIAS_AMPLITUDE) * smooth_field(rng, brain.shape, coarse=3)) if SHARED_BIAS else None
    out: dict[str, np.ndarray | str] = {c: render(fractions, brain, c, rng, bias) for c in CONTRASTS}
    out["seg"] = seg
    out["side"] = "none" if healthy else side
    return out


def make_phantom(
    out_dir: str | Path,
    cases: int = 4,
    seed: int = 0,
    spacing: int = 2,
    healthy_fraction: float = 0.0,
    prefix: str = "phantom",
) -> list[Path]:
    """Write ``cases`` BraTS-layout phantom cases under ``out_dir``; returns the case folders.

    ``spacing`` (mm, integer) sets the grid: 2 -> 96x112x96 (the demo), 4 -> 48x56x48 (tests).
    ``healthy_fraction`` of the cases carry no tumour at all. Same seed -> identical arrays.
    """
    if cases < 1:
        raise DataError(f"phantom: --cases must be >= 1, got {cases}")
    out_dir = Path(out_dir)
    anat = load_anatomy(spacing)
    ras_to_lps = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("LPS")
    )
    folders = []
    for i in range(cases):
        case = f"{prefix}_{i:03d}"
        healthy = np.random.default_rng([int(seed), i, 1]).random() < healthy_fraction
        arrays = make_case(i, seed, spacing, healthy=bool(healthy))
        folder = out_dir / case
        folder.mkdir(parents=True, exist_ok=True)
        for name in (*CONTRASTS, "seg"):
            img = nib.Nifti1Image(arrays[name], anat.affine).as_reoriented(ras_to_lps)
            img.header.set_xyzt_units("mm")
            with atomic_path(folder / f"{case}_{name}.nii.gz") as tmp:
                nib.save(img, tmp)
        folders.append(folder)
    return folders
