"""The report's figures: Dice against the annotated fraction, one panel per variant (matplotlib, Agg).

For an axis (source or target fraction) with at least two values: x = % of cases annotated,
one line per value of the other fraction, the band = mean ± std over seeds and cases (clipped
to [0, 1]), the dashed grey line = the target-supervised mean. A variant whose runs do not
depend on the axis (the bounds) is drawn flat across it. A sweep whose points differ only by
seed gets one bar chart with the same error bars. Files are written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

from hpc_modatts.runs import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

AXES = {
    "target": ("target_fraction", "source_fraction", "target cases annotated (%)", "source"),
    "source": ("source_fraction", "target_fraction", "source cases annotated (%)", "target"),
}


def _ok(v: float | None) -> bool:
    return v is not None and not math.isnan(v)


def save_png(fig, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG atomically (``runs.atomic_path``) and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _ts_mean(rows: list[dict]) -> float | None:
    ts = [r["dice"]["mean"] for r in rows if r["variant"] == "target-supervised" and _ok(r["dice"]["mean"])]
    return sum(ts) / len(ts) if ts else None


def plot_axis(report: dict, axis: str, path: Path) -> Path:
    """Dice vs the ``axis`` fraction ("target" or "source"), one panel per variant."""
    key, other, xlabel, other_name = AXES[axis]
    rows = [r for r in report["rows"] if r["cases"]]
    xs = sorted({r[key] for r in report["rows"] if r[key] is not None})
    variants = [v for v in report["variants"] if any(r["variant"] == v for r in rows)]
    ts = _ts_mean(rows)
    fig, axes = plt.subplots(
        1, max(1, len(variants)), figsize=(4.2 * max(1, len(variants)), 3.6), squeeze=False, sharey=True
    )
    for ax, v in zip(axes[0], variants):
        mine = [r for r in rows if r["variant"] == v]
        for value in sorted({r[other] for r in mine}, key=lambda f: (f is None, f)):
            line = sorted((r for r in mine if r[other] == value), key=lambda r: (r[key] is None, r[key]))
            label = f"any {other_name}" if value is None else f"{100 * value:g} % {other_name}"
            if line[0][key] is None:  # one run whatever this fraction is: flat across it, no markers
                x = [100 * xs[0], 100 * xs[-1]]
                y, s = [line[0]["dice"]["mean"]] * 2, [line[0]["dice"]["std"]] * 2
                ax.plot(x, y, linestyle="-.", label=f"{label} (one run, any {axis})")
            else:
                x = [100 * r[key] for r in line]
                y, s = [r["dice"]["mean"] for r in line], [r["dice"]["std"] for r in line]
                ax.plot(x, y, marker="o", label=label)
            ax.fill_between(
                x, [max(0.0, a - b) for a, b in zip(y, s)], [min(1.0, a + b) for a, b in zip(y, s)], alpha=0.2
            )
        if ts is not None and v != "target-supervised":
            ax.axhline(ts, color="grey", linestyle="--", linewidth=1, label="target-supervised")
        ax.set_title(v, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("test Dice (mean ± std, seeds x cases)")
    fig.suptitle(f"sweep {report['sweep']}: Dice vs annotated {axis} fraction", fontsize=11)
    return save_png(fig, path)


def plot_variants(report: dict, path: Path) -> Path:
    """A bar per row (seeds-only sweeps): mean Dice with ± std over seeds and cases."""
    rows = [r for r in report["rows"] if r["cases"]]
    fig, ax = plt.subplots(figsize=(1.6 * max(2, len(rows)) + 1, 3.6))
    ax.bar(range(len(rows)), [r["dice"]["mean"] for r in rows], yerr=[r["dice"]["std"] for r in rows], capsize=4)
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test Dice (mean ± std, seeds x cases)")
    ax.set_title(f"sweep {report['sweep']}", fontsize=10)
    return save_png(fig, path)


def plot_report(report: dict, out: Path) -> list[Path]:
    """Every figure the report's fractions allow (see the module docstring)."""
    paths = []
    for axis, (key, *_) in AXES.items():
        if len({r[key] for r in report["rows"] if r[key] is not None}) >= 2:
            paths.append(plot_axis(report, axis, out / f"dice_vs_{axis}_fraction.png"))
    if not paths and any(r["cases"] for r in report["rows"]):
        paths.append(plot_variants(report, out / "dice_by_variant.png"))
    return paths
