"""Networks: 3D MedFormer (+ GenSeg wiring), M-GenSeg (2D), 2D TransUNet translator, multi-scale discriminators.

Names are resolved lazily so importing one model does not import the others.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_segmenter": "hpc_modatts.models.sizes",
    "build_mgenseg": "hpc_modatts.models.mgenseg",
    "MGenSeg": "hpc_modatts.models.mgenseg",
    "SEGMENTER_SIZES": "hpc_modatts.models.sizes",
    "MedFormer": "hpc_modatts.models.medformer",
    "GenSegMedFormer": "hpc_modatts.models.genseg",
    "build_translator": "hpc_modatts.models.sizes",
    "TransUNetTranslator": "hpc_modatts.models.transunet",
    "MultiScaleDiscriminator": "hpc_modatts.models.discriminator",
    "DiscriminatorPair": "hpc_modatts.models.discriminator",
    "apply_activation_checkpointing": "hpc_modatts.models.checkpointing",
    "count_parameters": "hpc_modatts.models.checkpointing",
    "to_channels_last": "hpc_modatts.models.layout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hpc_modatts.models' has no attribute {name!r}")
