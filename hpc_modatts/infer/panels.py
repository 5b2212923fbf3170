"""Every PNG the package draws: per-case evaluation panels, the stage-1 report, training panels.

``save_panel``: one row of axial slices (the slice with the largest reference area, else prediction, else the
middle): target image, pseudo-target, P->A healthy image, residual (each only when given),
then the target (or a blank) with the reference contour (green) and the prediction (red). The
residual uses a diverging colormap centred at 0 (symmetric limits) with a colour bar.
Arrays are (X, Y, Z) in RAS; a slice ``vol[:, :, z]`` is drawn transposed, origin lower.
``save_translation_report``: stage-1 validation curves and slices. ``write_panel``: one row of
2D images (a training stage's validation panel). All written atomically (``runs.atomic_path``).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hpc_modatts.runs import atomic_path  # noqa: E402

TITLES = {"target": "target image", "pseudo_target": "pseudo-target", "healthy": "P->A healthy", "residual": "residual"}


def best_slice(ref: np.ndarray, pred: np.ndarray) -> int:
    """Axial index with the largest reference area (prediction area if the reference is empty)."""
    for m in (ref, pred):
        area = m.reshape(-1, m.shape[2]).sum(0)
        if area.max() > 0:
            return int(area.argmax())
    return ref.shape[2] // 2


def save_panel(
    path: str | os.PathLike, case: str, images: dict[str, np.ndarray], pred: np.ndarray, ref: np.ndarray
) -> Path:
    """Draw the panel of one case into ``path`` (PNG, written atomically)."""
    z = best_slice(ref, pred)
    names = [n for n in TITLES if n in images]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3 * (len(names) + 1), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        sl = images[name][:, :, z].T
        if name == "residual":  # diverging colormap centred at 0: red adds signal, blue removes it
            lim = max(float(np.abs(sl).max()), 1e-6)
            im = ax.imshow(sl, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        else:
            ax.imshow(sl, origin="lower", cmap="gray")
        ax.set_title(TITLES[name], fontsize=9)
    ax = axes[0][-1]
    base = images.get("target", np.zeros(ref.shape, np.float32))
    ax.imshow(base[:, :, z].T, origin="lower", cmap="gray")
    for mask, colour in ((ref, "lime"), (pred, "red")):
        sl = mask[:, :, z].T.astype(float)
        if sl.any() and not sl.all():
            ax.contour(sl, levels=[0.5], colors=colour, linewidths=1)
    ax.set_title("reference (green) / prediction (red)", fontsize=8)
    for a in axes[0]:
        a.axis("off")
    fig.suptitle(f"{case}  z={z}", fontsize=10)
    return _save(fig, path)


REPORT_CURVES = (
    ("score", "selection score"),
    ("contrast_ratio", "tumour contrast ratio"),
    ("appearance", "appearance (1 - W1 ratio)"),
    ("disc_accuracy", "discriminator accuracy"),
    ("disc_auc", "discriminator AUC"),
    ("paired_corr", "paired correlation"),
)


def save_translation_report(
    path: str | os.PathLike,
    records: list[dict],
    rows: list[dict[str, np.ndarray]],
    title: str,
    best_step: int | None = None,
) -> Path:
    """Stage-1 report: validation curves over steps, then one row of slices per case.

    ``records``: metrics.jsonl lines with ``val/<name>`` entries; ``rows``: per case an ordered
    dict title -> (H, W) slice (e.g. source / pseudo-target / real target), all in [-1, 1].
    """
    curves = [(k, t) for k, t in REPORT_CURVES if any(f"val/{k}" in r for r in records)]
    ncols = max(len(curves), max((len(r) for r in rows), default=1), 1)
    nrows = 1 + len(rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.5 * nrows), squeeze=False)
    for ax, (key, name) in zip(axes[0], curves):
        pts = [(r["step"], r[f"val/{key}"]) for r in records if f"val/{key}" in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
        if key in ("disc_accuracy", "disc_auc"):  # chance, always in view
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, 0.45), max(high, 0.55))
        if best_step is not None:
            ax.axvline(best_step, color="red", lw=0.8, ls=":")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes[0][len(curves) :]:
        ax.axis("off")
    for i, row in enumerate(rows, start=1):
        for ax, (name, img) in zip(axes[i], row.items()):
            ax.imshow(np.asarray(img, np.float32).T, cmap="gray", vmin=-1, vmax=1, origin="lower")
            ax.set_title(name, fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle(title + (f" (selected: step {best_step}, red line)" if best_step is not None else ""), fontsize=9)
    return _save(fig, path)


def write_panel(path: str | os.PathLike, columns: dict[str, np.ndarray], title: str = "") -> Path:
    """One row of 2D images (title -> (H, W) array) as a PNG; masks in [0, 1], images in [-1, 1]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(columns), figsize=(2.4 * len(columns), 2.6), squeeze=False)
    for ax, (name, img) in zip(axes[0], columns.items()):
        lo, hi = (0.0, 1.0) if name.lower().endswith("mask") else (-1.0, 1.0)
        ax.imshow(np.asarray(img, dtype=np.float32).T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    """Write a figure as PNG atomically and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
