"""Stage 1's ``report.png``: validation curves and source / pseudo-target / real target slices of
the translator synthesis uses (``translate/``, or the restart its DONE names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpc_modatts.config import ExperimentConfig
from hpc_modatts.data.slices import fit_slices
from hpc_modatts.data.store import Store
from hpc_modatts.runs import DONE, translator_dir
from hpc_modatts.train.best_model import load_best_model
from hpc_modatts.train.synthesize import translate_volume


def write_report(cfg: ExperimentConfig, split: Any, run_dir: Path, cases: int = 3) -> Path:
    """``report.png``: validation curves and source / pseudo-target / real target slices of the
    selected translator (the one synthesis uses), for a few annotated source cases."""
    from hpc_modatts.infer.panels import save_translation_report  # matplotlib: loaded only to draw

    store = Store.open(cfg.data.store)
    model_dir = translator_dir(run_dir)  # translate/, or the restart synthesis uses (train.restarts)
    records = [json.loads(ln) for ln in (model_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    done = json.loads((run_dir / DONE).read_text())
    model, _ = load_best_model(model_dir, "gen")
    size, src, tgt = cfg.data.slice_size, split.source, split.target
    rows = []
    for case in (split.source_labeled or split.source_train)[:cases]:
        image, brain, mask = store.read_image(case, src), store.read_brain(case), store.read_mask(case)
        pseudo = translate_volume(model, image, brain, size, torch.device("cpu"))
        z = int(np.argmax(mask.sum(axis=(0, 1)))) if mask is not None else image.shape[2] // 2
        row = {f"{case} {src}": image, f"pseudo-{tgt}": pseudo}
        other = case if tgt in store.modalities(case) else (split.val[0] if split.val else None)
        if other is not None:
            row[f"{other} real {tgt}" + ("" if other == case else " (another case)")] = store.read_image(other, tgt)
        rows.append({k: fit_slices(v[:, :, z : z + 1], size, -1.0)[0] for k, v in row.items()})
    return save_translation_report(
        run_dir / "report.png",
        records,
        rows,
        title=f"stage 1 {src}->{tgt}" + ("" if model_dir == run_dir else f", {model_dir.name}"),
        best_step=done.get("best_step"),
    )
