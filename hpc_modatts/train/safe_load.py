"""THE loader of ``.pt`` files: weights only, never code (docs/reliability.md).

Every ``.pt`` file hpc_modatts reads (best models, checkpoint RNG states, DeepSpeed's own files
before DeepSpeed unpickles them) goes through ``load_weights``: ``torch.load(weights_only=True)``
with, for DeepSpeed's files, the few DeepSpeed data classes they hold allow-listed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hpc_modatts.data.errors import DataError


def _deepspeed_safe_globals() -> list:
    """The DeepSpeed data classes its checkpoint files pickle (ZeRO 1-3 optimiser states, bf16
    parameter maps; found with ``torch.serialization.get_unsafe_globals_in_checkpoint``). A newer
    DeepSpeed that pickles another class makes the check refuse its files, naming the class (add
    it here after reading it)."""
    # deepspeed is imported lazily: it costs seconds and only checkpoint checks need these classes
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_weights(path: str | os.PathLike, deepspeed: bool = False, mmap: bool = False) -> Any:
    """THE loader of ``.pt`` files: ``torch.load(weights_only=True)`` on the CPU.

    Tensors, containers and numbers only (no code runs); ``deepspeed`` also allows the few
    DeepSpeed data classes of its checkpoint files; ``mmap`` maps tensors instead of reading
    them (a check of a large file). DataError naming the file when it is missing, damaged or
    holds anything else.
    """
    path = Path(path)
    try:
        if deepspeed:
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # zip/pickle/OS errors and refused globals: one line naming the file
        first = next(
            (ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln),
            str(e).strip().splitlines()[0] if str(e).strip() else "",
        )
        raise DataError(f"{path}: not a loadable weights file ({type(e).__name__}: {first})"[:400]) from None
