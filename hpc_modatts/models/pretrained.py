"""Local ImageNet weights for the TransUNet encoder (never downloaded).

Split out of ``transunet.py``: reading the original ``R50+ViT-B_16.npz`` (flax names, HWIO conv
kernels, per-head attention kernels, a class-token position embedding) or a torch state_dict
with our key names, with strict key and shape checks that raise one-line DataErrors.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpc_modatts.data.errors import DataError
from hpc_modatts.models.transunet import TransUNetTranslator, resize_pos_embed

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- pretrained weights
# Local files only, never downloaded. Two formats:
# - .npz: the original ViT "R50+ViT-B_16" checkpoint (google-research/vision_transformer, the one
#   TransUNet loads): flax names, HWIO conv kernels, (in, out) dense kernels, per-head attention
#   kernels, a position embedding with a class token; classifier entries are ignored.
# - .pt/.pth: a torch state_dict with our own key names (a whole translator or its encoder only).
_NPZ_IGNORED = re.compile(r"^(cls|head/.*|pre_logits/.*)$")
_NPZ_LEAF = {"weight": "scale", "bias": "bias"}


def _npz_key(key: str) -> tuple[str, str]:
    """Our encoder parameter name (without "encoder.") -> (npz key, conversion kind)."""
    parts = key.split(".")
    p = parts[-1]
    if key == "pos_embed":
        return "Transformer/posembed_input/pos_embedding", "pos"
    if parts[0] == "embed":
        return ("embedding/kernel", "conv") if p == "weight" else ("embedding/bias", "vec")
    if parts[0] == "norm":
        return f"Transformer/encoder_norm/{_NPZ_LEAF[p]}", "vec"
    if parts[0] == "resnet":  # resnet.root.conv.weight | resnet.body.block1.unit1.conv1.weight
        *mods, name, _ = parts
        name = f"{name}_root" if mods[1] == "root" else name
        path = "/".join([*mods[2:], name])
        return (f"{path}/kernel", "conv") if name.startswith("conv") else (f"{path}/{_NPZ_LEAF[p]}", "vec")
    block = f"Transformer/encoderblock_{parts[1]}"
    if parts[2] in ("attn_norm", "mlp_norm"):
        return f"{block}/LayerNorm_{0 if parts[2] == 'attn_norm' else 2}/{_NPZ_LEAF[p]}", "vec"
    if parts[2] == "attn":
        path = f"{block}/MultiHeadDotProductAttention_1/{parts[3]}"
        if p == "bias":
            return f"{path}/bias", "flat"
        return f"{path}/kernel", "out" if parts[3] == "out" else "qkv"
    dense = f"{block}/MlpBlock_3/Dense_{0 if parts[3] == 'fc1' else 1}"
    return (f"{dense}/kernel", "dense") if p == "weight" else (f"{dense}/bias", "vec")


def _from_npz(array: np.ndarray, kind: str) -> torch.Tensor:
    a = np.asarray(array, dtype=np.float32)
    if kind == "conv":
        a = a.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif kind == "dense":
        a = a.T  # (in, out) -> (out, in)
    elif kind == "qkv":
        a = a.reshape(a.shape[0], -1).T  # (D, heads, D/heads) -> (D_out, D_in)
    elif kind == "out":
        a = a.reshape(-1, a.shape[-1]).T  # (heads, D/heads, D) -> (D_out, D_in)
    elif kind == "flat":
        a = a.reshape(-1)  # (heads, D/heads) -> (D,)
    return torch.from_numpy(np.ascontiguousarray(a))


def _read_weights(path: str, model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read a weights file into our key names; returns (state, ignored file keys)."""
    try:
        if path.endswith(".npz"):
            with np.load(path) as npz:
                arrays = {k: npz[k] for k in npz.files}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle, OS errors: one message naming the file
        raise DataError(f"{path}: cannot read pretrained weights ({type(err).__name__}: {err})") from err
    if not path.endswith(".npz"):
        obj = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise DataError(f"{path}: not a torch state_dict of tensors")
        return dict(obj), []
    state, used = {}, set()
    for key in model.encoder.state_dict():
        npz_key, kind = _npz_key(key)
        if npz_key in arrays:
            state[f"encoder.{key}"] = _from_npz(arrays[npz_key], kind)
            used.add(npz_key)
    ignored = sorted(k for k in arrays if k not in used and _NPZ_IGNORED.match(k))
    unexpected = sorted(set(arrays) - used - set(ignored))
    if unexpected:
        raise DataError(f"{path}: {len(unexpected)} unexpected npz keys, e.g. {unexpected[:5]}")
    return state, ignored


def _fit_pos_embed(pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Drop a class token and resize the grid when the token count differs (same hidden size)."""
    if pos.shape == target.shape or pos.ndim != 3 or pos.shape[-1] != target.shape[-1]:
        return pos
    n = pos.shape[1]
    if math.isqrt(n) ** 2 != n and math.isqrt(n - 1) ** 2 == n - 1:
        pos = pos[:, 1:]  # class token of the ImageNet classifier
    g = math.isqrt(target.shape[1])
    if g * g != target.shape[1] or math.isqrt(pos.shape[1]) ** 2 != pos.shape[1]:
        return pos  # not square grids: reported as a shape mismatch
    return resize_pos_embed(pos.float(), (g, g))


def load_pretrained(model: TransUNetTranslator, path: str) -> dict[str, list[str]]:
    """Load weights from a local .npz (original R50+ViT-B_16) or .pt/.pth (our names) file.

    Every encoder tensor must be in the file with the model's shape (the position embedding is
    resized); decoder tensors are optional; any other key is an error. Raises DataError naming
    the file. Returns {"loaded", "not_in_file", "ignored"} key lists.
    """
    path = str(path)
    if not Path(path).is_file():
        raise DataError(f"{path}: pretrained weights file not found")
    state, ignored = _read_weights(path, model)
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise DataError(f"{path}: {len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
    missing = sorted(k for k in own if k.startswith("encoder.") and k not in state)
    if missing:
        raise DataError(f"{path}: {len(missing)} encoder keys missing, e.g. {missing[:5]}")
    state["encoder.pos_embed"] = _fit_pos_embed(state["encoder.pos_embed"], own["encoder.pos_embed"])
    wrong = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape
    ]
    if wrong:
        raise DataError(f"{path}: {len(wrong)} shape mismatches, e.g. {'; '.join(wrong[:3])}")
    model.load_state_dict(state, strict=False)
    not_in_file = sorted(set(own) - set(state))
    log.info("loaded %d tensors from %s (%d decoder tensors keep their init)", len(state), path, len(not_in_file))
    return {"loaded": sorted(state), "not_in_file": not_in_file, "ignored": ignored}
