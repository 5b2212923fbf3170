"""THE inferer: whole-volume outputs of a 3D model, fed exactly what training fed it.

Validation (``train/segment_task.py``), pseudo-labelling (``train/self_training.py``) and
``hpc-modatts predict`` all call ``VolumeInferer``; its settings live once in the config
(``infer.*``, ``hpc_modatts.config.InferConfig``).

Modes:

* ``hemisphere`` (models trained on half volumes, ``data.half_volumes``): each hemisphere is
  cut out alone, the other side and everything outside the volume at the fill value (-1, the
  normalised background), in a window of the training patch size centred on that
  hemisphere's brain box, exactly as ``data.loaders.VolumeDataset`` builds its (non-augmented)
  training items. When the brain box of a hemisphere is larger than the patch along an axis the
  window grows to the box and MONAI ``sliding_window_inference`` tiles it with patch-sized
  windows (gaussian blending); when it fits, the model sees the one training window directly.
  The outputs of the two halves are pasted back side by side; voxels outside both windows get
  ``out_fill``. The windows of exactly the patch size go through the model as one batch (a
  batch of one is ~2.5x slower per window on CPU: ``benchmarks/inferer.py``).
* ``whole`` (models trained on whole volumes): MONAI ``sliding_window_inference`` over the
  volume.

2D models (MoDATTS-2D and M-GenSeg, ``slices=True``): the patch is (X, Y, 1), so the same windows are tiled
slice by slice along Z (each window one axial slice of a hemisphere, centred in-plane exactly as
``data.volume_slices.VolumeSliceDataset`` shows it in training) and the predictor is handed
(B, 1, X, Y) slices; its (B, C, X, Y) outputs are restacked into the volume. Every caller's
predictor (probabilities, GenSeg extras) is thus the same for 2D and 3D models.

``predictor`` maps a (B, 1, *patch) float tensor to (B, C, *patch) outputs to be averaged
(probabilities, images...); ``__call__`` returns (C, X, Y, Z) float32 numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from hpc_modatts.config import variant_dims
from hpc_modatts.data.loaders import brain_box, centred_window, read_window

Predictor = Callable[[torch.Tensor], torch.Tensor]
FILL = -1.0
"""Image value of voxels the model must not see (the other hemisphere, outside the volume)."""


@dataclass(frozen=True)
class Window:
    """One region a model is run on: the voxels it may see (``valid``) and the window over them."""

    valid: tuple[tuple[int, int], ...]  # [lo, hi) per axis: the hemisphere (or whole volume)
    start: tuple[int, ...]  # window origin (may be negative: padded with FILL)
    size: tuple[int, ...]  # window size: the patch, or the brain box when larger


class VolumeInferer:
    """``VolumeInferer(patch_size, hemispheres=True)(predictor, image, brain, split) -> (C, X, Y, Z)``.

    ``slices``: the model is 2D; ``patch_size`` must then be (X, Y, 1) (see the module docstring).
    """

    def __init__(
        self,
        patch_size: Sequence[int],
        hemispheres: bool = True,
        overlap: float = 0.5,
        sw_batch_size: int = 2,
        slices: bool = False,
    ) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size {list(patch_size)} must have 3 values (X, Y, Z)")
        self.slices = bool(slices)
        if self.slices and self.patch_size[2] != 1:
            raise ValueError(f"slice-wise inference needs a (X, Y, 1) patch, got {list(self.patch_size)}")
        self.hemispheres = bool(hemispheres)
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)

    def windows(self, brain: np.ndarray, split: int | None) -> list[Window]:
        """The windows of a volume: one per hemisphere, or the whole volume."""
        X, Y, Z = brain.shape
        if not self.hemispheres:
            return [Window(((0, X), (0, Y), (0, Z)), (0, 0, 0), (X, Y, Z))]
        if split is None or not 0 < int(split) < X:
            raise ValueError(f"hemisphere inference needs a split index in (0, {X}), got {split!r}")
        out = []
        for x0, x1 in ((0, int(split)), (int(split), X)):
            valid = ((x0, x1), (0, Y), (0, Z))
            box = brain_box(brain[x0:x1], (x0, 0, 0))
            size = tuple(max(n, hi - lo) for (lo, hi), n in zip(box, self.patch_size))
            out.append(Window(valid, tuple(centred_window(box, size)), size))
        return out

    @torch.no_grad()
    def __call__(
        self,
        predictor: Predictor,
        image: np.ndarray,
        brain: np.ndarray,
        split: int | None,
        device: torch.device | str = "cpu",
        out_fill: float | Sequence[float] = 0.0,
    ) -> np.ndarray:
        """Outputs of ``predictor`` over the whole (X, Y, Z) ``image`` -> (C, X, Y, Z) float32."""
        if self.slices:
            predictor = _slice_wise(predictor)
        windows = self.windows(brain, split)
        inputs = [read_window(image, w.valid, w.start, w.size, FILL, np.float32) for w in windows]  # (*size)
        outputs: list[np.ndarray | None] = [None] * len(windows)
        # The windows of the training patch size (both hemispheres, usually) go through the model as
        # ONE batch: a batch of one takes PyTorch's native 3D convolution instead of oneDNN's (its
        # heuristic, made for 2D, sends small batch-1 inputs there), ~10x slower for the 4-channel
        # full-resolution stages on CPU. Every model is per sample (instance norm, no batch terms).
        direct = [i for i, w in enumerate(windows) if w.size == self.patch_size]
        if direct:
            t = torch.from_numpy(np.stack([inputs[i] for i in direct]))[:, None].to(device)  # (N, 1, *patch)
            y = predictor(t).float().cpu().numpy()  # (N, C, *patch)
            for k, i in enumerate(direct):
                outputs[i] = y[k]
        for i, x in enumerate(inputs):
            if outputs[i] is None:  # a brain box larger than the patch: tiled, gaussian-blended
                t = torch.from_numpy(x)[None, None].to(device)  # (1, 1, *size)
                y = sliding_window_inference(
                    t,
                    roi_size=self.patch_size,
                    sw_batch_size=self.sw_batch_size,
                    predictor=lambda p: predictor(p).float(),
                    overlap=self.overlap,
                    mode="gaussian",
                    padding_mode="constant",
                    cval=FILL,
                )  # (1, C, *size)
                outputs[i] = y[0].cpu().numpy()
        result: np.ndarray | None = None
        for w, y in zip(windows, outputs):
            assert y is not None
            if result is None:
                fill = np.asarray(out_fill, np.float32).reshape(-1, 1, 1, 1)
                result = np.broadcast_to(fill, (y.shape[0], *image.shape)).astype(np.float32)
            _paste(result, y, w)
        assert result is not None
        return result


def _slice_wise(predictor: Predictor) -> Predictor:
    """A 2D predictor on (B, 1, X, Y, 1) windows: (B, 1, X, Y) in, (B, C, X, Y) -> (B, C, X, Y, 1) out."""
    return lambda t: predictor(t[..., 0])[..., None]


def _paste(result: np.ndarray, window_out: np.ndarray, w: Window) -> None:
    """Copy the part of a window's output that lies inside its valid region into ``result``."""
    dst, src = [], []
    for (lo, hi), s, n in zip(w.valid, w.start, w.size):
        a, b = max(lo, s), min(hi, s + n)
        if b <= a:
            return
        dst.append(slice(a, b))
        src.append(slice(a - s, b - s))
    result[(slice(None), *dst)] = window_out[(slice(None), *src)]


def inferer_from_config(cfg) -> VolumeInferer:
    """The inferer of an experiment config: its ``infer`` section and training patch; for a 2D
    variant (``config.variant_dims``: MoDATTS-2D and M-GenSeg) the patch's (X, Y) slices, ``infer.sw_batch_size``
    x patch Z of them per forward (the voxels of ``sw_batch_size`` 3D windows: same memory, few small calls)."""
    mode = cfg.infer.mode
    hemispheres = cfg.data.half_volumes if mode == "auto" else mode == "hemisphere"
    if variant_dims(cfg.train.variant) == 2:
        x, y, z = cfg.data.patch_size
        return VolumeInferer((x, y, 1), hemispheres, cfg.infer.overlap, cfg.infer.sw_batch_size * z, slices=True)
    return VolumeInferer(cfg.data.patch_size, hemispheres, cfg.infer.overlap, cfg.infer.sw_batch_size)
