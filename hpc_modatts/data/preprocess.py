"""Per-case preprocessing (thesis 5.5.1 "Datasets"): NIfTI -> canonical RAS, resampled, cropped,
normalised arrays with a brain mask, a whole-tumour mask, hemisphere weak labels and the
attributes needed to put predictions back into the original geometry (:func:`to_original_geometry`).

Order of operations: check inputs (modalities, mask and brain-mask file on one grid, or resampled
onto the ``resample_to`` modality's grid in world coordinates) -> canonical RAS (nibabel
``as_closest_canonical``) -> brain mask (``hpc_modatts.data.brain``: the case's brain-mask file, or
the voxels differing from each image's background, 0 or a constant such as z-scored data's) ->
optional resampling to a target spacing (order 1 images, 0 masks) -> optional crop ->
normalisation -> tumour masks of the label scheme (``hpc_modatts.data.labels``) -> weak labels.

Resampling is ``scipy.ndimage.affine_transform`` on an explicit index map
``i_in = i_out * (new_spacing / old_spacing)`` (voxel 0 centres coincide) rather than MONAI
``Spacing``: the exact same map, stored in the affine, is inverted by ``to_original_geometry``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage as ndi

from hpc_modatts.data.aliases import canonical
from hpc_modatts.data.brain import brain_from_images, constant_background
from hpc_modatts.data.errors import DataError
from hpc_modatts.data.labels import LabelScheme, get_scheme, region_masks
from hpc_modatts.data.layouts import LABEL_SCHEMES, CaseSpec
from hpc_modatts.data.nifti_size import check_nifti_size

AFFINE_ATOL = 1e-3  # mm: image/mask affines must agree to this tolerance


@dataclass
class PreparedCase:
    """Arrays ready for ``Store.write_case`` (all (X, Y, Z), canonical RAS)."""

    images: dict[str, np.ndarray]  # float32 in [-1, 1], background -1
    mask: np.ndarray | None  # uint8 {0, 1} whole tumour
    labels: np.ndarray | None  # uint8 original label values
    brain: np.ndarray  # uint8 {0, 1}
    attrs: dict[str, Any]
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # region masks ("mask_core", ...)
    warnings: list[str] = field(default_factory=list)  # for the driver to log (workers may be remote)


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


def same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image) -> bool:
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=AFFINE_ATOL, rtol=0)


def grid_mismatch(
    ref_mod: str, ref: nib.Nifti1Image, ref_path: Path, other: nib.Nifti1Image, other_path: Path, what: str
) -> DataError:
    """The one-line error for a file off the reference grid, suggesting --resample-to."""
    detail = (
        f"shape {other.shape} vs {ref.shape}"
        if other.shape != ref.shape
        else "affine differs (spacing/origin/orientation)"
    )
    return DataError(
        f"{other_path}: {what} is not on the grid of {ref_path.name} ({detail}); add "
        f"--resample-to {ref_mod} to resample it onto {ref_mod}'s grid (world coordinates)"
    )


def resample_onto(img: nib.Nifti1Image, ref: nib.Nifti1Image, order: int, cval: float = 0.0) -> nib.Nifti1Image:
    """``img`` resampled onto ``ref``'s voxel grid through both affines (world coordinates);
    order 1 for images, 0 for label maps; ``cval`` where ``img`` does not reach."""
    data = np.asarray(img.dataobj)
    src = nib.Nifti1Image(data.astype(np.float32) if order else data, img.affine)
    out = resample_from_to(src, (ref.shape, ref.affine), order=order, mode="constant", cval=cval)
    vol = np.asarray(out.dataobj)
    return nib.Nifti1Image(vol.astype(np.float32) if order else vol.astype(data.dtype), ref.affine)


def check_labels(labels: np.ndarray, scheme: LabelScheme, path: Path) -> np.ndarray:
    """Integer-valued labels within the scheme's allowed values (0-255 for ``nonzero``), as uint8."""
    allowed = list(scheme.allowed) if scheme.allowed is not None else "0-255"
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.rint(labels)):
        raise DataError(f"{path}: mask has non-integer values (expected labels {allowed})")
    values = {int(v) for v in np.unique(labels)}
    unexpected = sorted(values - set(scheme.allowed if scheme.allowed is not None else range(256)))
    if unexpected:
        raise DataError(
            f"{path}: mask has unexpected label values {unexpected} for --labels {scheme.name} "
            f"(allowed {allowed}); see --labels"
        )
    return labels.astype(np.uint8)


# ----------------------------------------------------------------------------- geometry
def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray
) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample(vol: np.ndarray, scale: np.ndarray, out_shape: tuple[int, ...], order: int) -> np.ndarray:
    """Output voxel i samples input index ``i * scale`` (scale = new spacing / old spacing)."""
    out = ndi.affine_transform(
        vol.astype(np.float32 if order else vol.dtype, copy=False),
        np.asarray(scale, float),
        output_shape=out_shape,
        order=order,
        mode="nearest",
    )
    return out.astype(vol.dtype if order == 0 else np.float32, copy=False)


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
    """(v - mean) / (5 std) over brain voxels, clipped to [-1, 1] (thesis 5.5.1); background -1."""
    v = vol[brain].astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # checked below: one line, not numpy warnings
        mean, std = float(v.mean()), float(v.std())
    if not (np.isfinite(mean) and np.isfinite(std)):  # e.g. a 1e300 voxel: its square overflows
        raise DataError(
            f"{where}: brain intensities too large to normalise (mean {mean:.3g}, std {std:.3g}: NaN/Inf statistics)"
        )
    if not std > 0:
        raise DataError(f"{where}: constant intensity inside the brain (std 0), cannot normalise")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: clipped here or refused by the caller
        out = np.clip((vol.astype(np.float32) - mean) / (5.0 * std), -1.0, 1.0)
    out[~brain] = -1.0
    return out.astype(np.float32), {"mean": mean, "std": std}


def weak_labels_of(mask: np.ndarray, split: int) -> dict[str, str]:
    return {"left": "P" if mask[:split].any() else "A", "right": "P" if mask[split:].any() else "A"}


# ----------------------------------------------------------------------------- the pipeline
def _scheme(scheme: LabelScheme | str) -> LabelScheme:
    """A scheme by name; a layout name ("brats", "crossmoda", "manifest") gives its default scheme."""
    if isinstance(scheme, str) and scheme in LABEL_SCHEMES:
        return LABEL_SCHEMES[scheme]
    return get_scheme(scheme)


def _on_grid(
    spec: CaseSpec,
    ref_mod: str,
    ref: nib.Nifti1Image,
    img: nib.Nifti1Image,
    path: Path,
    what: str,
    resample: bool,
    order: int,
    cval: float,
    moved: dict,
    key: str,
) -> nib.Nifti1Image:
    """``img`` on the reference grid: as it is, resampled (recorded in ``moved``), or a one-line error."""
    if same_grid(ref, img):
        return img
    if not resample:
        raise grid_mismatch(ref_mod, ref, spec.images[ref_mod], img, path, what)
    moved[key] = {"path": str(path), "shape": list(img.shape), "affine": img.affine.tolist(), "order": order}
    return resample_onto(img, ref, order=order, cval=cval)


def _load_on_grid(spec: CaseSpec, resample_to: str | None) -> tuple:
    """Load images, mask and brain-mask file, all on the reference modality's grid."""
    mods = list(spec.images)
    ref_mod = mods[0]
    if resample_to is not None:
        ref_mod = canonical(resample_to)
        if ref_mod not in spec.images:
            raise DataError(
                f"case {spec.case_id}: --resample-to {resample_to}: the case has no {ref_mod} image (has {mods})"
            )
    resample = resample_to is not None
    originals = {m: load_volume(spec.images[m], f"{m} image") for m in mods}
    ref = originals[ref_mod]
    backgrounds = {m: constant_background(np.asarray(img.dataobj)) for m, img in originals.items()}
    moved: dict[str, dict] = {}
    for m in mods:
        if m != ref_mod:
            originals[m] = _on_grid(
                spec,
                ref_mod,
                ref,
                originals[m],
                spec.images[m],
                f"{m} image",
                resample,
                1,
                backgrounds[m] or 0.0,
                moved,
                m,
            )
    extra = {}
    for key, path in (("mask", spec.mask), ("brain", spec.brain)):
        if path is not None:
            what = "the brain mask" if key == "brain" else "the mask"
            extra[key] = _on_grid(
                spec,
                ref_mod,
                ref,
                load_volume(path, f"{key} mask" if key == "brain" else key),
                path,
                what,
                resample,
                0,
                0.0,
                moved,
                key,
            )
    return ref_mod, originals, backgrounds, extra.get("mask"), extra.get("brain"), moved


def preprocess_case(
    spec: CaseSpec,
    scheme: LabelScheme | str = "brats",
    spacing: Sequence[float] | None = None,
    crop: Sequence[int] | str | None = None,
    crop_margin: int = 2,
    resample_to: str | None = None,
) -> PreparedCase:
    """Check, reorient, resample, crop and normalise one case (see module docstring).

    ``scheme``: a label scheme or its name (``hpc_modatts.data.labels``). ``resample_to``: a
    modality whose grid every other file is resampled onto when it is not on it already (None: a
    file off the grid is a one-line error suggesting it).
    """
    scheme = _scheme(scheme)
    ref_mod, originals, backgrounds, mask_img, brain_img, moved = _load_on_grid(spec, resample_to)
    mods = list(spec.images)
    ref_path, ref = spec.images[ref_mod], originals[ref_mod]
    canon = {m: nib.as_closest_canonical(img) for m, img in originals.items()}
    can_affine = canon[ref_mod].affine
    vols = {m: np.asarray(img.dataobj) for m, img in canon.items()}
    labels = None
    if mask_img is not None and spec.mask is not None:  # the mask image is read from spec.mask
        labels = check_labels(np.asarray(nib.as_closest_canonical(mask_img).dataobj), scheme, spec.mask)
    can_spacing = np.sqrt((can_affine[:3, :3] ** 2).sum(axis=0))
    can_shape = vols[ref_mod].shape
    warnings: list[str] = []
    # brain (foreground) mask on the source grid: interpolation would blur its edge outwards
    if brain_img is not None:
        brain = np.asarray(nib.as_closest_canonical(brain_img).dataobj) > 0
        brain_from = "file"
        if not brain.any():
            raise DataError(f"{spec.brain}: brain mask of case {spec.case_id} is empty")
    else:
        shifted = {m: b for m, b in backgrounds.items() if b not in (None, 0.0)}
        if shifted:
            warnings.append(
                f"case {spec.case_id}: constant non-zero background "
                + ", ".join(f"{b:.4g} in {m}" for m, b in shifted.items())
                + " (z-scored data?): voxels equal to it are background"
            )
        # modalities resampled onto the grid have blurred edges: the brain comes from those already on it
        on_grid = {m: v for m, v in vols.items() if m not in moved}
        brain = brain_from_images(on_grid, {m: b or 0.0 for m, b in backgrounds.items()})
        brain_from = "images"
        if not brain.any():
            raise DataError(f"case {spec.case_id}: empty brain mask (every image voxel is background, e.g. {ref_path})")
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
    mask = None if labels is None else scheme.region_mask(labels, "whole")
    split = hemisphere_split(brain)
    weak = weak_labels_of(mask, split) if mask is not None else spec.weak
    attrs = {
        "affine": affine.tolist(),
        "spacing": [float(s) for s in out_spacing],
        "shape": list(brain.shape),
        "original_shape": list(ref.shape),
        "original_affine": ref.affine.tolist(),
        "original_orientation": "".join(nib.aff2axcodes(ref.affine)),
        "canonical_shape": list(can_shape),
        "canonical_affine": can_affine.tolist(),
        "crop_box": box,
        "resampled_shape": None if res_shape is None else list(res_shape),
        "norm": norm,
        "hemisphere_split": split,
        "weak_labels": weak,
        "label_scheme": scheme.name,
        "label_values": None if scheme.allowed is None else list(scheme.allowed),
        "tumour_labels": list(scheme.tumour) if scheme.allowed is not None else "nonzero",
        "brain_from": brain_from,
        "background": {m: (0.0 if b is None else b) for m, b in backgrounds.items()},
        "reference_modality": ref_mod,
        "modality_names": {m: spec.names.get(m, m) for m in mods},
        "resampled_to": {"modality": ref_mod, "files": moved} if moved else None,
    }
    extra = region_masks(labels, scheme) if labels is not None else {}
    return PreparedCase(images, mask, labels, brain.astype(np.uint8), attrs, extra, warnings)


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
        inside = tuple(slice(a - o, b - o) for (a, b), (o, _) in zip(src_box, box))
        full[tuple(slice(a, b) for a, b in src_box)] = volume[inside]
        volume = full
    if attrs.get("resampled_shape"):
        # canonical voxel j -> resampled index inv(A_grid) @ A_can @ j
        m = np.linalg.inv(grid_affine) @ can_affine
        dtype = volume.dtype if order == 0 else np.float32
        volume = ndi.affine_transform(
            volume.astype(dtype, copy=False),
            m[:3, :3],
            offset=m[:3, 3],
            output_shape=can_shape,
            order=order,
            mode="constant",
            cval=fill,
        )
    to_orig = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    data = nib.orientations.apply_orientation(volume, to_orig)
    if data.shape != orig_shape:
        raise DataError(f"to_original_geometry: got shape {data.shape}, expected {orig_shape} (inconsistent attrs)")
    return nib.Nifti1Image(np.ascontiguousarray(data), orig_affine)
