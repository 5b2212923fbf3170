"""Stage 2: 3D tumour segmentation on the target modality (thesis 5.4.2, 5.5.1).

``train.variant`` picks the Task class (``segment_variants.VARIANT_TASKS``): the bounds
(``source-supervised``, ``target-supervised``) or MoDATTS (``self-supervised``: pseudo-target
Dice; ``semi-supervised``: + GenSeg on real target half-volumes), or MoDATTS-2D
(``self-supervised-2d``, ``semi-supervised-2d``: the same on axial slices of the half-volumes,
with a 2D MedFormer; thesis 5.5.1 "Model comparison"), or M-GenSeg (``m-genseg``, ``train.mgenseg``:
end to end on source and target slices, thesis chapter 4). What they share, validation
included, is ``segment_task.SegmentTask``; a self-training round is the same task given a
``SelfTrainingRound`` (``hpc_modatts.train.self_training``).
``hpc-modatts train segment CONFIG [train.variant=...]``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hpc_modatts.config import ExperimentConfig, stage_config
from hpc_modatts.data.inputs import load_split, open_store
from hpc_modatts.runs import is_done, stage_dir
from hpc_modatts.train.guards import VolumeBound
from hpc_modatts.train.segment_task import SegmentTask, SelfTrainingRound
from hpc_modatts.train.segment_variants import VARIANT_TASKS, PseudoTargetTask
from hpc_modatts.train.synthesize import pseudo_target_store
from hpc_modatts.train.trainer import Trainer

log = logging.getLogger(__name__)


def volume_bound(cfg: ExperimentConfig, split: Any) -> VolumeBound:
    """The plausibility bound of ``cfg``'s variant (``SegmentTask.volume_bound``)."""
    return VARIANT_TASKS[cfg.train.variant].volume_bound(cfg, split)


# ----------------------------------------------------------------------------- stage
def run(cfg: ExperimentConfig) -> Path:
    """Train one variant on one fold; returns ``segment-<variant>/fold_<k>`` (skips when DONE)."""
    cfg = stage_config(cfg, "segment")
    run_dir = stage_dir(cfg.run_dir, "segment", cfg.train.variant, cfg.data.fold)
    if is_done(run_dir):
        log.info("segment: %s is DONE, skipping", run_dir)
        return run_dir
    task = make_task(cfg, run_dir)
    return Trainer(cfg, task, run_dir).fit()


def make_task(cfg: ExperimentConfig, run_dir: Path, self_training: SelfTrainingRound | None = None) -> SegmentTask:
    """The Task of ``cfg``'s variant with its inputs checked (store, split, pseudo-target store)."""
    open_store(cfg.data.store)
    split = load_split(cfg)
    cls = VARIANT_TASKS[cfg.train.variant]
    synth = pseudo_target_store(cfg) if issubclass(cls, PseudoTargetTask) else None
    task = cls(cfg, split, run_dir, synth, self_training)
    task.check_data()
    return task
