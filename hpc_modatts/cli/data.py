"""Data commands: ``phantom``, ``convert``, ``verify``, ``split`` (thin wrappers around the API).

Each handler imports the API it calls when it runs (``hpc_modatts.cli``: keeps ``--help`` fast).
"""

from __future__ import annotations

import argparse
import logging

from hpc_modatts.data.errors import DataError
from hpc_modatts.data.labels import LABEL_CHOICES  # the schemes' one owner

log = logging.getLogger(__name__)


def _phantom(args: argparse.Namespace) -> int:
    from hpc_modatts.data.phantom import make_phantom

    folders = make_phantom(
        args.out, cases=args.cases, seed=args.seed, spacing=args.spacing, healthy_fraction=args.healthy_fraction
    )
    log.info("wrote %d phantom case(s) to %s", len(folders), args.out)
    return 0


def _crop(values: list[str] | None):
    if values is None:
        return None
    if values == ["brain"]:
        return "brain"
    try:
        return [int(v) for v in values]
    except ValueError:
        raise DataError(f"--crop {' '.join(values)}: give three integers X Y Z or 'brain'") from None


def _convert(args: argparse.Namespace) -> int:
    from hpc_modatts.data.convert import convert

    path = convert(
        args.src,
        args.store,
        layout=args.layout,
        spacing=args.spacing,
        crop=_crop(args.crop),
        missing=args.missing,
        workers=args.workers,
        scheduler=args.scheduler,
        dtype=args.dtype,
        modalities=args.modalities,
        crop_margin=args.crop_margin,
        sharded=args.sharded,
        progress=not args.no_progress,
        labels=args.labels,
        resample_to=args.resample_to,
        cluster=args.cluster,
    )
    log.info("store ready: %s", path)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from hpc_modatts.data.store import Store
    from hpc_modatts.data.verify import print_report, verify

    problems = verify(args.store, check_sources=not args.skip_sources)
    try:
        n = len(Store.open(args.store).all_case_dirs())
    except Exception:
        n = 0
    print_report(args.store, problems, n)
    return 1 if any(p.severity == "error" for p in problems) else 0


def _split(args: argparse.Namespace) -> int:
    from hpc_modatts.data.splits import make_split

    split = make_split(
        args.store,
        source=args.source,
        target=args.target,
        source_labeled=args.source_labeled,
        target_labeled=args.target_labeled,
        val=args.val,
        test=args.test,
        folds=args.folds,
        seed=args.seed,
    )
    split.save(args.output)
    log.info("split written to %s", args.output)
    return 0


def register(sub) -> None:
    """Add the data subcommands to the top-level parser's subparsers."""
    p = sub.add_parser("phantom", help="write the embedded demo dataset (BraTS-layout NIfTI phantoms)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same arrays)")
    p.add_argument("--spacing", type=int, default=2, help="voxel size in mm: 2 -> 96x112x96 (default), 4 -> 48x56x48")
    p.add_argument("--healthy-fraction", type=float, default=0.0, help="fraction of cases without a tumour")
    p.set_defaults(func=_phantom)

    p = sub.add_parser("convert", help="convert a NIfTI dataset into one zarr store (parallel, resumable)")
    p.add_argument("src", help="dataset folder (BraTS 2018-2025, CrossMoDA 2021-2023) or manifest .csv/.json")
    p.add_argument("store", help="output store, e.g. data/brats.zarr")
    p.add_argument(
        "--layout",
        choices=("auto", "brats", "crossmoda", "manifest"),
        default="auto",
        help="auto (default): from the file names; brats = BraTS 2018-2021 and 2023-2025 namings",
    )
    p.add_argument(
        "--labels",
        default="auto",
        choices=LABEL_CHOICES,
        help="label scheme of the masks (default auto: from the label values found; see data/README.md)",
    )
    p.add_argument(
        "--resample-to",
        metavar="MODALITY",
        default=None,
        help="resample modalities/masks not on this modality's grid onto it (world coordinates)",
    )
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="resample to this spacing (mm)")
    p.add_argument(
        "--crop", nargs="+", metavar="N", help="crop X Y Z voxels around the brain centre, or 'brain' (bbox)"
    )
    p.add_argument("--crop-margin", type=int, default=2, help="margin (voxels) of --crop brain")
    p.add_argument("--missing", choices=("skip", "fail"), default="fail", help="case lacking a modality: skip or fail")
    p.add_argument("--modalities", nargs="+", help="modalities every case must have (layout default)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="parallel cases (local dask scheduler), or SLURM worker jobs with --scheduler slurm",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="sync|threads|processes, ADDRESS of a running dask.distributed scheduler, or slurm "
        "(dask-jobqueue workers from --cluster)",
    )
    p.add_argument(
        "--cluster",
        default=None,
        metavar="PRESET",
        help="with --scheduler slurm: cluster preset (a shipped name, e.g. example_a100, or a YAML path)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default=None,
        help="stored image dtype (default float16 for a new store, max error 2.4e-4; a resumed store keeps its own)",
    )
    shard = p.add_mutually_exclusive_group()
    shard.add_argument(
        "--no-shard",
        dest="sharded",
        action="store_false",
        default=None,
        help="one file per chunk instead of one zarr v3 shard per array (the default)",
    )
    shard.add_argument(
        "--sharded",
        dest="sharded",
        action="store_true",
        default=None,
        help="one zarr v3 shard per array (the default; kept for old scripts)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_convert)

    p = sub.add_parser("verify", help="check every case of a store; exit 1 on any problem")
    p.add_argument("store")
    p.add_argument("--skip-sources", action="store_true", help="do not re-hash the source files")
    p.set_defaults(func=_verify)

    p = sub.add_parser("split", help="write a split JSON (source/target roles, annotated fractions, folds)")
    p.add_argument("store")
    p.add_argument("--source", required=True, help="annotated source modality, e.g. t1")
    p.add_argument("--target", required=True, help="target modality, e.g. t2")
    p.add_argument("--source-labeled", type=float, default=1.0, help="fraction of source cases with masks")
    p.add_argument("--target-labeled", type=float, default=0.0, help="fraction of target cases with masks")
    p.add_argument("--val", type=float, default=0.1, help="validation fraction")
    p.add_argument("--test", type=float, default=0.1, help="test fraction")
    p.add_argument("--folds", type=int, default=1, help="cross-validation folds of the segmentation stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="split JSON path")
    p.set_defaults(func=_split)
