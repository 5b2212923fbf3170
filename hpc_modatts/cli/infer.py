"""CLI group: ``predict`` (masks from trained runs) and ``evaluate`` (Dice/HD95/ASSD).

Each handler imports the API it calls when it runs (``hpc_modatts.cli``: keeps ``--help`` fast).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment NIfTI cases or a store with trained run(s) (fold ensemble)")
    p.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="RUN_DIR",
        help="finished training run (repeat for an ensemble of folds)",
    )
    p.add_argument("--input", required=True, help="NIfTI dataset folder (see --layout) or a converted store")
    p.add_argument("--out", required=True, help="output folder: <case>.nii.gz masks in the original geometry")
    p.add_argument("--probabilities", action="store_true", help="also write <case>_prob.nii.gz (float32)")
    p.add_argument(
        "--extras",
        action="store_true",
        help="GenSeg runs: also write <case>_healthy.nii.gz (P->A image) and <case>_residual.nii.gz",
    )
    p.add_argument("--layout", default=None, help="layout of a NIfTI input (default: the training store's)")
    p.add_argument("--modality", default=None, help="modality to segment (default: the run's data.target)")
    p.set_defaults(func=_predict)

    e = sub.add_parser("evaluate", help="Dice, HD95, ASSD (mm) of predicted vs reference masks")
    e.add_argument("--pred", required=True, help="folder of <case>.nii.gz predicted masks")
    e.add_argument("--ref", required=True, help="folder of <case>.nii.gz reference masks (same grids)")
    e.add_argument(
        "--target-supervised",
        default=None,
        metavar="DIR_OR_JSON",
        help="metrics.json (or its folder) of the target-supervised run: adds '% of target-supervised'",
    )
    e.add_argument(
        "--images",
        action="append",
        default=None,
        metavar="DIR",
        help="folder of <case>.nii.gz target images (+ <case>_pseudo_target, _healthy, _residual) drawn "
        "in the panels; repeat to search several folders (e.g. the predict folder for the extras)",
    )
    e.add_argument("--no-panels", action="store_true", help="skip the PNG panels")
    e.add_argument(
        "--region",
        default="whole",
        choices=("whole", "core", "enhancing"),
        help="tumour region the predictions are of (default whole; core/enhancing need BraTS labels)",
    )
    e.add_argument(
        "--labels",
        default=None,
        help="label scheme of the references (e.g. brats2021, brats2023; default: > 0 is tumour, "
        "detected from the values for core/enhancing)",
    )
    e.add_argument("-o", "--out", required=True, help="output folder: metrics.csv, metrics.json, panels/")
    e.set_defaults(func=_evaluate)


def _predict(args: argparse.Namespace) -> int:
    from hpc_modatts.infer.predict import predict

    print(
        predict(
            args.run,
            args.input,
            args.out,
            probabilities=args.probabilities,
            layout=args.layout,
            modality=args.modality,
            extras=args.extras,
        )
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from hpc_modatts.infer.evaluate import evaluate

    evaluate(
        args.pred,
        args.ref,
        args.out,
        target_supervised=args.target_supervised,
        images=args.images,
        panels=not args.no_panels,
        region=args.region,
        labels=args.labels,
    )
    return 0
