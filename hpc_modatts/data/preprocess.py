"""Per-case preprocessing (method.md "Datasets"): NIfTI -> canonical RAS, resampled, cropped,
normalised arrays with a brain mask, a whole-tumour mask, hemisphere weak labels and the
attributes needed to put predictions back into the original geometry (:func:`to_original_geometry`).

Order of operations: check inputs -> canonical RAS (nibabel ``as_closest_canonical``) -> brain mask
-> optional resampling to a target spacing (order 1 images, 0 masks) -> optional crop ->
normalisation -> weak labels.

Resampling is ``scipy.ndimage.affine_transform`` on an explicit index map
``i_in = i_out * (new_spacing / old_spacing)`` (voxel 0 centres coincide) rather than MONAI
``Spacing``: the exact same map, stored in the affine, is inverted by ``to_original_geometry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from hpc_modatts.data.errors import DataError
from hpc_modatts.data.layouts import LABEL_SCHEMES, CaseSpec, LabelScheme
from hpc_modatts.data.nifti_size import check_nifti_size

AFFINE_ATOL = 1e-3  # mm: image/mask affines must agree to this tolerance


@dataclass
class PreparedCase:
    """Arrays ready for ``Store.write_case`` (all (X, Y, Z), canonical RAS)."""

    images: dict[str, np.ndarray]   # float32 in [-1, 1], background -1
    mask: np.ndarray | None         # uint8 {0, 1} whole tumour
    labels: np.ndarray | None       # uint8 original label values
    brain: np.ndarray               # uint8 {0, 1}
    attrs: dict[str, Any]


# ----------------------------------------------------------------------------- loading / checks
def load_volume(path: Path, what: str) -> nib.Nifti1Image:
    """Load a 3D NIfTI fully (catches corrupt/truncated files); squeeze a trailing singleton 4th dim."""
    check_nifti_size(path, what)  # before allocating what a forged header claims
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as e:  # nibabel/gzip/zlib raise many types for broken files
        raise DataError(f"{path}: cannot read {what} NIfTI ({type(e).__name__}: {e})".replace("\n", " ")) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: {what} must be a 3D volume, got shape {tuple(data.shape)} ({data.ndim}D)")
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise DataError(f"{path}: {what} has {bad} NaN/Inf voxels")
    return nib.Nifti1Image(data, img.affine, img.header)


def check_same_grid(ref: nib.Nifti1Image, ref_path: Path, other: nib.Nifti1Image, other_path: Path) -> None:
    if ref.shape != other.shape:
        raise DataError(f"{other_path}: shape {other.shape} differs from {ref_path.name} {ref.shape}")
    if not np.allclose(ref.affine, other.affine, atol=AFFINE_ATOL, rtol=0):
        raise DataError(f"{other_path}: affine differs from {ref_path.name} (images and mask must share one grid)")


def check_labels(labels: np.ndarray, scheme: LabelScheme, path: Path) -> np.ndarray:
    """Integer-valued labels within the layout's allowed values, as uint8."""
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.rint(labels)):
        raise DataError(f"{path}: mask has non-integer values (expected labels {list(scheme.allowed)})")
    values = np.unique(labels)
    unexpected = sorted(set(int(v) for v in values) - set(scheme.allowed))
    if unexpected:
        raise DataError(f"{path}: mask has unexpected label values {unexpected} (allowed {list(scheme.allowed)})")
    return labels.astype(np.uint8)


# ----------------------------------------------------------------------------- geometry
def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample(vol: np.ndarray, scale: np.ndarray, out_shape: tuple[int, ...], order: int) -> np.ndarray:
    """Output voxel i samples input index ``i * scale`` (scale = new spacing / old spacing)."""
    out = ndi.affine_transform(vol.astype(np.float32 if order else vol.dtype, copy=False), np.asarray(scale, float),
                               output_shape=out_shape, order=order, mode="nearest")
    return out.astype(vol.dtype if order == 0 else np.float32, copy=False)


def largest_component_filled(fg: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(fg)
    if n > 1:
        fg = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    return ndi.binary_fill_holes(fg)


def bbox(mask: np.ndarray) -> list[list[int]]:
    """[[x0, x1), [y0, y1), [z0, z1)] of the nonzero voxels."""
    out = []
    for ax in range(3):
        idx = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0]
        out.append([int(idx[0]), int(idx[-1]) + 1])
    return out


def crop_box_for(brain: np.ndarray, crop: Sequence[int] | str, margin: int = 2) -> list[list[int]]:
    """A fixed-size box centred on the brain bbox, or (``crop="brain"``) the bbox + margin."""
    box = bbox(brain)
    if isinstance(crop, str):
        if crop != "brain":
            raise DataError(f"--crop {crop!r} must be 'brain' or three sizes X Y Z")
        return [[a - margin, b + margin] for a, b in box]
    size = [int(c) for c in crop]
    if len(size) != 3 or min(size) < 1:
        raise DataError(f"--crop {list(crop)} must be three positive sizes X Y Z")
    return [[(a + b) // 2 - s // 2, (a + b) // 2 - s // 2 + s] for (a, b), s in zip(box, size)]


def crop_or_pad(vol: np.ndarray, box: list[list[int]], fill: float = 0) -> np.ndarray:
    """``vol[box]`` where the box may extend beyond the array (padded with ``fill``)."""
    shape = tuple(b - a for a, b in box)
    out = np.full(shape, fill, dtype=vol.dtype)
    src = tuple(slice(max(a, 0), min(b, n)) for (a, b), n in zip(box, vol.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, (a, _) in zip(src, box))
    if all(s.stop > s.start for s in src):
        out[dst] = vol[src]
    return out


def hemisphere_split(brain: np.ndarray) -> int:
    """X index of the midline = middle of the brain's X bounding box; left half is [0, split)."""
    x0, x1 = bbox(brain)[0]
    return int((x0 + x1) // 2)


def normalise(vol: np.ndarray, brain: np.ndarray, where: str) -> tuple[np.ndarray, dict[str, float]]:
    """(v - mean) / (5 std) over brain voxels, clipped to [-1, 1]; background -1 (method.md)."""
    v = vol[brain].astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # checked below: one line, not numpy warnings
        mean, std = float(v.mean()), float(v.std())
    if not (np.isfinite(mean) and np.isfinite(std)):  # e.g. a 1e300 voxel: its square overflows
        raise DataError(f"{where}: brain intensities too large to normalise (mean {mean:.3g}, std {std:.3g}: "
                        "NaN/Inf statistics)")
    if not std > 0:
        raise DataError(f"{where}: constant intensity inside the brain (std 0), cannot normalise")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: clipped here or refused by the caller
        out = np.clip((vol.astype(np.float32) - mean) / (5.0 * std), -1.0, 1.0)
    out[~brain] = -1.0
    return out.astype(np.float32), {"mean": mean, "std": std}


def weak_labels_of(mask: np.ndarray, split: int) -> dict[str, str]:
    return {"left": "P" if mask[:split].any() else "A", "right": "P" if mask[split:].any() else "A"}


# ----------------------------------------------------------------------------- the pipeline
def preprocess_case(spec: CaseSpec, scheme: LabelScheme | str = "brats", spacing: Sequence[float] | None = None,
                    crop: Sequence[int] | str | None = None, crop_margin: int = 2) -> PreparedCase:
    """Check, reorient, resample, crop and normalise one case (see module docstring)."""
    scheme = LABEL_SCHEMES[scheme] if isinstance(scheme, str) else scheme
    mods = list(spec.images)
    originals = {m: load_volume(spec.images[m], f"{m} image") for m in mods}
    ref_path, ref = spec.images[mods[0]], originals[mods[0]]
    for m in mods[1:]:
        check_same_grid(ref, ref_path, originals[m], spec.images[m])
    mask_img = None
    if spec.mask is not None:
        mask_img = load_volume(spec.mask, "mask")
        check_same_grid(ref, ref_path, mask_img, spec.mask)
    canon = {m: nib.as_closest_canonical(img) for m, img in originals.items()}
    can_affine = canon[mods[0]].affine
    vols = {m: np.asarray(img.dataobj) for m, img in canon.items()}
    labels = None
    if mask_img is not None:
        labels = check_labels(np.asarray(nib.as_closest_canonical(mask_img).dataobj), scheme, spec.mask)
    can_spacing = np.sqrt((can_affine[:3, :3] ** 2).sum(axis=0))
    can_shape = vols[mods[0]].shape
    # brain (foreground) mask on the source grid: interpolation would blur its edge outwards
    brain = largest_component_filled(np.any([v != 0 for v in vols.values()], axis=0))
    if not brain.any():
        raise DataError(f"case {spec.case_id}: empty brain mask (every image voxel is 0, e.g. {ref_path})")
    affine, res_shape, out_spacing = can_affine, None, can_spacing
    if spacing is not None:
        target = np.asarray([float(s) for s in spacing])
        if target.shape != (3,) or target.min() <= 0:
            raise DataError(f"case {spec.case_id}: --spacing {list(spacing)} must be three positive numbers")
        scale = target / can_spacing
        res_shape = resampled_shape(can_shape, can_spacing, target)
        vols = {m: resample(v, scale, res_shape, order=1) for m, v in vols.items()}
        labels = None if labels is None else resample(labels, scale, res_shape, order=0)
        brain = resample(brain.astype(np.uint8), scale, res_shape, order=0).astype(bool)
        affine = can_affine @ np.diag([*scale, 1.0])
        out_spacing = target
    box = None
    if crop is not None:
        box = crop_box_for(brain, crop, crop_margin)
        vols = {m: crop_or_pad(v, box) for m, v in vols.items()}
        labels = None if labels is None else crop_or_pad(labels, box)
        brain = crop_or_pad(brain, box, fill=False)
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.array([a for a, _ in box], float) + affine[:3, 3]
    images, norm = {}, {}
    for m, v in vols.items():
        images[m], norm[m] = normalise(v, brain, f"case {spec.case_id} ({spec.images[m]})")
    mask = None if labels is None else np.isin(labels, scheme.tumour).astype(np.uint8)
    split = hemisphere_split(brain)
    weak = weak_labels_of(mask, split) if mask is not None else spec.weak
    attrs = {
        "affine": affine.tolist(), "spacing": [float(s) for s in out_spacing], "shape": list(brain.shape),
        "original_shape": list(ref.shape), "original_affine": ref.affine.tolist(),
        "original_orientation": "".join(nib.aff2axcodes(ref.affine)),
        "canonical_shape": list(can_shape), "canonical_affine": can_affine.tolist(),
        "crop_box": box, "resampled_shape": None if res_shape is None else list(res_shape),
        "norm": norm, "hemisphere_split": split, "weak_labels": weak,
        "label_values": list(scheme.allowed), "tumour_labels": list(scheme.tumour),
    }
    return PreparedCase(images, mask, labels, brain.astype(np.uint8), attrs)


def to_original_geometry(volume: np.ndarray, attrs: dict, order: int = 0, fill: float = 0) -> nib.Nifti1Image:
    """Undo crop, resampling and reorientation: a NIfTI on the source image's exact grid.

    ``volume`` (X, Y, Z) is in the stored grid (``attrs["shape"]``); order 0 for masks/labels,
    1 for images/probabilities. Shape and affine of the result equal the original NIfTI's.
    """
    volume = np.asarray(volume)
    if list(volume.shape) != list(attrs["shape"]):
        raise DataError(f"to_original_geometry: volume shape {list(volume.shape)} != stored shape {attrs['shape']}")
    orig_affine = np.asarray(attrs["original_affine"], float)
    orig_shape = tuple(int(s) for s in attrs["original_shape"])
    ornt = nib.orientations.io_orientation(orig_affine)
    can_affine = orig_affine @ nib.orientations.inv_ornt_aff(ornt, orig_shape)
    can_shape = tuple(int(orig_shape[int(ax)]) for ax in np.argsort(ornt[:, 0]))
    stored_affine = np.asarray(attrs["affine"], float)
    box = attrs.get("crop_box")
    grid_shape = tuple(attrs.get("resampled_shape") or can_shape)
    grid_affine = stored_affine.copy()
    if box:
        # paste the crop back into the full (resampled) grid
        grid_affine[:3, 3] = stored_affine[:3, 3] - stored_affine[:3, :3] @ np.array([a for a, _ in box], float)
        full = np.full(grid_shape, fill, dtype=volume.dtype)
        src_box = [[max(a, 0), min(b, n)] for (a, b), n in zip(box, grid_shape)]
        full[tuple(slice(a, b) for a, b in src_box)] = volume[tuple(slice(a - o, b - o) for (a, b), (o, _) in zip(src_box, box))]
        volume = full
    if attrs.get("resampled_shape"):
        # canonical voxel j -> resampled index inv(A_grid) @ A_can @ j
        m = np.linalg.inv(grid_affine) @ can_affine
        dtype = volume.dtype if order == 0 else np.float32
        volume = ndi.affine_transform(volume.astype(dtype, copy=False), m[:3, :3], offset=m[:3, 3],
                                      output_shape=can_shape, order=order, mode="constant", cval=fill)
    to_orig = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    data = nib.orientations.apply_orientation(volume, to_orig)
    if data.shape != orig_shape:
        raise DataError(f"to_original_geometry: got shape {data.shape}, expected {orig_shape} (inconsistent attrs)")
    return nib.Nifti1Image(np.ascontiguousarray(data), orig_affine)
