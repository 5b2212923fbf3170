"""Loader benchmark: random reads from .nii.gz, raw .npy (memmap) and our zarr store.

Builds full-size synthetic BraTS-like volumes (240x240x155, brain-like ellipsoid with smooth
tissue textures and MRI-like noise, -1 background, normalised like the converter), writes them
as (a) .nii.gz via nibabel, (b) raw .npy read through ``np.load(mmap_mode="r")``, (c) a zarr
store through ``Store.write_case`` with the layout new datasets get (``convert``'s defaults:
float16, sharded; the chunks/codecs of hpc_modatts/data/store.py), then prints reads/s of random
240x240 axial slices and random 128^3 patches per source, and a target table with PASS/FAIL.

The store is read through the loaders' own read path (``loaders.read_window``), two ways:
- cold: cache off (``cache_bytes=0``), every read decodes its region from zarr;
- warm: through a ``VolumeCache`` (the datasets' default): the first read of a case decodes the
  whole array, later reads are memory copies. The warm rate charges that first read to the
  next reads: it is ``AMORTISE`` reads per case / (first-read time + their steady-state time);
  the steady-state rate (first read excluded) is printed too. Warm applies when the cases a
  process samples fit its ``cache_bytes``; beyond that the misses run at the cold rate.

    python benchmarks/loader.py                 # the default layout, cold and warm (~1.5 min)
    python benchmarks/loader.py --sweep         # + cold reads of candidate layouts (~4 min)

Exit status 1 when the default layout misses a target warm (amortised) or the size target;
cold misses are printed as FAIL and do not change the exit status (see the target table).

Targets (issue 2): 3D patch reads >= 20x .nii.gz and >= 0.5x .npy memmap; 2D slice reads >= 20x
.nii.gz; store <= 0.4x the raw float32 bytes. Reads are timed on warm files (page cache), one
process, with arrays opened once (as the loaders do), and counted per CPU-second of this process
(all its threads: zarr decodes in helper threads), which other jobs on a shared machine disturb
far less than wall-clock time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from scipy import ndimage  # noqa: E402

from hpc_modatts.data import store as store_mod  # noqa: E402
from hpc_modatts.data.loaders import VolumeCache, read_window  # noqa: E402
from hpc_modatts.data.store import Store  # noqa: E402

SHAPE = (240, 240, 155)  # BraTS (X, Y, Z) at 1 mm
PATCH = (128, 128, 128)
TARGETS = {"patch_vs_nii": 20.0, "patch_vs_npy": 0.5, "slice_vs_nii": 20.0, "size_vs_raw": 0.4}
AMORTISE = 50  # warm rate: reads per case over which the first (whole-array) read is charged


@dataclass(frozen=True)
class Layout:
    """A candidate storage layout (the constants block of store.py)."""

    chunks: tuple[int, int, int]
    cname: str = "zstd"
    clevel: int = 3
    dtype: str = "float32"
    sharded: bool = False

    @property
    def name(self) -> str:
        c = "x".join(map(str, self.chunks))
        return f"zarr {c} {self.cname}{self.clevel} {self.dtype}{' sharded' if self.sharded else ''}"


CANDIDATES = [
    Layout((120, 120, 16), "lz4", 5, "float32"),  # the layout before float16 + shards
    Layout((120, 120, 16), "lz4", 5, "float16"),
    Layout((120, 120, 16), "zstd", 1, "float16", sharded=True),
    Layout((120, 120, 8), "lz4", 5, "float16", sharded=True),
    Layout((64, 64, 64), "lz4", 5, "float16", sharded=True),
]


# ---------------------------------------------------------------------------- synthetic data
def synthetic_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32 [-1, 1], tumour mask uint8, brain mask uint8), each (240, 240, 155)."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, s) for s in SHAPE)]
    centre = np.array(SHAPE) / 2 + rng.normal(0, 3, 3)
    radii = np.array([68, 85, 62]) * rng.uniform(0.93, 1.07, 3)  # BraTS-like brain extent
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    brain = r2 <= 1
    # tissue classes from a smooth random field (CSF / grey / white), smooth bias, MRI-like noise
    coarse = rng.normal(size=(24, 24, 16))
    field = ndimage.zoom(ndimage.gaussian_filter(coarse, 1.0), np.array(SHAPE) / coarse.shape, order=1)
    tissue = np.digitize(field, np.quantile(field, [0.2, 0.55]))
    intensity = np.array([0.25, 0.6, 0.85], np.float32)[tissue] * (1 + 0.15 * field).astype(np.float32)
    intensity = np.where(r2 > 0.85, 0.3, intensity)  # cortex rim
    tc = centre + rng.uniform(-30, 30, 3) * np.array([1, 1, 0.5])
    tumour = sum(((g - c) / 14.0) ** 2 for g, c in zip(grid, tc)) <= 1
    intensity = np.where(tumour, 1.0, intensity) + rng.normal(0, 0.03, SHAPE).astype(np.float32)
    v = intensity[brain]
    img = np.full(SHAPE, -1.0, np.float32)
    img[brain] = np.clip((v - v.mean()) / (5 * v.std()), -1, 1)  # the converter's normalisation
    return img, (tumour & brain).astype(np.uint8), brain.astype(np.uint8)


def write_sources(root: Path, n_cases: int) -> dict:
    """Write every case as .nii.gz and .npy; return the in-memory images and masks for the stores."""
    cases = {}
    for i in range(n_cases):
        img, mask, brain = synthetic_case(i)
        nib.save(nib.Nifti1Image(img, np.eye(4)), root / f"case{i}.nii.gz")
        np.save(root / f"case{i}.npy", img)
        cases[f"case{i}"] = (img, mask, brain)
    return cases


def write_store(path: Path, cases: dict, layout: Layout) -> Store:
    """A store written through Store.write_case with ``layout`` in the constants block."""
    saved = (store_mod.IMAGE_CHUNKS, store_mod.IMAGE_CODEC)
    store_mod.IMAGE_CHUNKS = layout.chunks
    store_mod.IMAGE_CODEC = {"cname": layout.cname, "clevel": layout.clevel, "shuffle": "shuffle"}
    try:
        store = Store.create(path, kind="dataset", dtype=layout.dtype, sharded=layout.sharded)
    finally:
        store_mod.IMAGE_CHUNKS, store_mod.IMAGE_CODEC = saved
    for case, (img, mask, brain) in cases.items():
        store.write_case(case, {"t1": img}, mask=mask, brain=brain, attrs={"hemisphere_split": 120})
    return store


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in Path(path).rglob(pattern) if f.is_file())


# ---------------------------------------------------------------------------- timing
def copy_read(arr, start: tuple, size: tuple, tail: tuple) -> np.ndarray:
    """nibabel / memmap: the region as a new float32 array (a memmap read really copies)."""
    sel = tuple(slice(s, s + n) for s, n in zip(start, size)) + tail
    return np.array(arr[sel], dtype=np.float32, copy=True)


def loader_read(arr, start: tuple, size: tuple, tail: tuple) -> np.ndarray:
    """The loaders' hot path: a zarr region read or a cached-array copy, float16 -> float32."""
    return read_window(arr, [(0, d) for d in SHAPE[: len(size)]], start, size, -1.0, np.float32, tail)


def reads_per_second(arrays: list, read, kind: str, seconds: float, seed: int = 0, max_reads: int = 5000) -> float:
    """Random reads of (X, Y, Z) arrays with ``read``: ``kind`` = "slice" (vol[:, :, z]) or "patch" (128^3)."""
    rng = np.random.default_rng(seed)
    n, t0 = 0, time.process_time()
    while n < max_reads and (n < 3 or time.process_time() - t0 < seconds):
        arr = arrays[rng.integers(len(arrays))]
        if kind == "slice":
            out = read(arr, (0, 0), SHAPE[:2], (int(rng.integers(SHAPE[2])),))
        else:
            out = read(arr, tuple(int(rng.integers(0, d - p + 1)) for d, p in zip(SHAPE, PATCH)), PATCH, ())
        assert out.size and out.dtype == np.float32
        n += 1
    return n / (time.process_time() - t0)


def measure(arrays: list, seconds: float, read=copy_read, rounds: int = 3) -> dict:
    """Best of ``rounds`` bursts per read kind (the machine is shared: the best burst is the least disturbed)."""
    return {
        k: max(reads_per_second(arrays, read, k, seconds / rounds, seed=r) for r in range(rounds))
        for k in ("slice", "patch")
    }


def measure_warm(arrays: list, seconds: float, rounds: int = 3) -> dict:
    """Reads through a VolumeCache as the datasets hold it (slices: axial, Z-major, like
    SliceDataset; patches: C order, like VolumeDataset): steady-state rates, CPU time of the first
    (whole-array) read of a case, and rates with that first read charged to AMORTISE reads."""
    out = {}
    for kind, axial in (("slice", True), ("patch", False)):
        fills = []
        for _ in range(rounds):  # best of a few fresh caches, like the other measurements
            cache, t0 = VolumeCache(axial=axial), time.process_time()
            cached = [cache.get(("bench", str(i), "image"), a) for i, a in enumerate(arrays)]
            fills.append((time.process_time() - t0) / len(arrays))
        assert all(isinstance(c, np.ndarray) for c in cached), "the benchmark cases must fit the default cache"
        steady = max(reads_per_second(cached, loader_read, kind, seconds / rounds, seed=r) for r in range(rounds))
        first = min(fills)
        out.update({f"{kind}_steady": steady, f"{kind}_first_s": first, kind: AMORTISE / (first + AMORTISE / steady)})
    return out


def store_row(root: Path, cases: dict, layout: Layout, seconds: float, raw_image_bytes: int, warm: bool) -> dict:
    path = root / f"store-{abs(hash(layout)) % 10**8}.zarr"
    t0 = time.perf_counter()
    store = write_store(path, cases, layout)
    write_s = time.perf_counter() - t0
    arrays = [store.image(c, "t1") for c in store.case_ids]
    err = max(float(np.abs(np.asarray(a[...], np.float32) - cases[c][0]).max()) for c, a in zip(store.case_ids, arrays))
    row = {
        "layout": layout,
        **measure(arrays, seconds, loader_read),
        "write_s": write_s,
        "max_err": err,
        "size_ratio": dir_bytes(path) / raw_image_bytes,
        "image_ratio": sum(dir_bytes(path / "cases" / c / "image_t1") for c in store.case_ids) / raw_image_bytes,
        "files": sum(1 for _ in path.rglob("*") if _.is_file()),
    }
    if warm:
        row["warm"] = measure_warm(arrays, seconds)
    shutil.rmtree(path)
    return row


# ---------------------------------------------------------------------------- report
def target_checks(rates: dict, nii: dict, npy: dict, image_ratio: float) -> list[tuple[str, float, float, bool]]:
    """(target, required ratio, measured ratio, met) for one set of slice/patch rates."""
    checks = [
        ("3D patch vs .nii.gz", TARGETS["patch_vs_nii"], rates["patch"] / nii["patch"]),
        ("3D patch vs .npy memmap", TARGETS["patch_vs_npy"], rates["patch"] / npy["patch"]),
        ("2D slice vs .nii.gz", TARGETS["slice_vs_nii"], rates["slice"] / nii["slice"]),
    ]
    out = [(name, need, got, got >= need) for name, need, got in checks]
    return out + [
        ("image bytes vs raw float32 (<=)", TARGETS["size_vs_raw"], image_ratio, image_ratio <= TARGETS["size_vs_raw"])
    ]


def meets(row: dict, nii: dict, npy: dict, mode: str = "cold") -> bool:
    rates = row if mode == "cold" else row["warm"]
    return all(ok for *_, ok in target_checks(rates, nii, npy, row["image_ratio"]))


def print_table(nii: dict, npy: dict, rows: list[dict], current: Layout, console: Console) -> None:
    t = Table(
        title=f"random reads per CPU-second ({SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} volumes, slice 240x240, patch 128^3)"
    )
    for col in (
        "source",
        "slice/s",
        "patch/s",
        "slice x nii.gz",
        "patch x nii.gz",
        "slice x npy",
        "patch x npy",
        "images/raw",
        "store/raw",
        "files",
        "max |err|",
    ):
        t.add_column(col, justify="right" if col != "source" else "left")

    def add(name, r, size="", store="", files="", err=""):
        t.add_row(
            name,
            f"{r['slice']:.1f}",
            f"{r['patch']:.1f}",
            f"{r['slice'] / nii['slice']:.1f}",
            f"{r['patch'] / nii['patch']:.1f}",
            f"{r['slice'] / npy['slice']:.2f}",
            f"{r['patch'] / npy['patch']:.2f}",
            size,
            store,
            files,
            err,
        )

    add(".nii.gz (nibabel dataobj)", nii, f"{nii['size_ratio']:.3f}")
    add(".npy (memmap)", npy, "1.000", "", "", "0")
    for r in rows:
        mark = "*" if r["layout"] == current else ""
        add(
            f"{mark}{r['layout'].name} cold",
            r,
            f"{r['image_ratio']:.3f}",
            f"{r['size_ratio']:.3f}",
            str(r["files"]),
            f"{r['max_err']:.1e}",
        )
        if "warm" in r:
            w = r["warm"]
            add(f"{mark}{r['layout'].name} warm, steady", {"slice": w["slice_steady"], "patch": w["patch_steady"]})
            add(f"{mark}{r['layout'].name} warm, 1st read / {AMORTISE}", w)
    console.print(t)
    w = rows[0].get("warm", {})
    console.print(
        f"* = the default layout of new datasets (store.py constants, convert's dtype/sharding). "
        f"cold: cache off, every read decodes zarr; warm: VolumeCache, steady state and with the "
        f"first whole-array read of a case (slices: {w.get('slice_first_s', 0) * 1e3:.0f} ms CPU, Z-major; "
        f"patches: {w.get('patch_first_s', 0) * 1e3:.0f} ms) charged to {AMORTISE} reads of that case."
    )


def print_targets(nii: dict, npy: dict, row: dict, console: Console) -> None:
    t = Table(title=f"targets, default layout ({row['layout'].name})")
    for col in ("target", "required", "cold", "", f"warm (1st read / {AMORTISE})", ""):
        t.add_column(col, justify="left" if col == "target" else "right")
    cold = target_checks(row, nii, npy, row["image_ratio"])
    warm = target_checks(row["warm"], nii, npy, row["image_ratio"]) if "warm" in row else [None] * len(cold)
    for (name, need, got, ok), w in zip(cold, warm):
        wcols = [f"{w[2]:.2f}x", "PASS" if w[3] else "FAIL"] if w else ["", ""]
        t.add_row(name, f"{need}x", f"{got:.2f}x", "PASS" if ok else "FAIL", *wcols)
    console.print(t)


def current_layout() -> Layout:
    codec = store_mod.IMAGE_CODEC
    return Layout(
        tuple(store_mod.IMAGE_CHUNKS),
        codec["cname"],
        int(codec["clevel"]),
        store_mod.DATASET_DTYPE,
        bool(store_mod.SHARDED),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=4, help="number of 240x240x155 volumes (default 4)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing budget per measurement")
    ap.add_argument("--sweep", action="store_true", help="also time the candidate layouts")
    ap.add_argument("--workdir", default=None, help="where to write the files (default: a temp folder)")
    args = ap.parse_args(argv)
    console = Console(width=max(170, Console().width))
    root = Path(tempfile.mkdtemp(prefix="hpc-modatts-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        cases = write_sources(root, args.cases)
        raw = args.cases * int(np.prod(SHAPE)) * 4
        console.print(f"wrote {args.cases} cases as .nii.gz and .npy in {time.perf_counter() - t0:.0f} s ({root})")
        nii = measure([nib.load(root / f"{c}.nii.gz").dataobj for c in cases], args.seconds)
        nii["size_ratio"] = dir_bytes(root, "*.nii.gz") / raw
        npy = measure([np.load(root / f"{c}.npy", mmap_mode="r") for c in cases], args.seconds)
        console.print(f"nii.gz and npy timed ({time.perf_counter() - t0:.0f} s)")
        current = current_layout()
        layouts = [current] + ([c for c in CANDIDATES if c != current] if args.sweep else [])
        rows = [store_row(root, cases, lay, args.seconds, raw, warm=lay == current) for lay in layouts]
        print_table(nii, npy, rows, current, console)
        print_targets(nii, npy, rows[0], console)
        good = [r for r in rows if meets(r, nii, npy)]
        if args.sweep:
            best = max(rows, key=lambda r: min(r["patch"] / npy["patch"], r["slice"] / (20 * nii["slice"])))
            console.print(
                f"layouts meeting every target cold: {[r['layout'].name for r in good] or 'none'}; "
                f"best cold patch/slice balance: {best['layout'].name}"
            )
        return 0 if meets(rows[0], nii, npy, "warm") else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
