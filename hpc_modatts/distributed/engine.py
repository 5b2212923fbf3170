"""DeepSpeed engines from the typed config; one engine per optimiser.

* ZeRO stage 0-3 (``distributed.zero_stage``), optional optimiser offload to CPU.
* Precision: ``auto`` = bf16 on CUDA, fp32 on CPU (bf16 is several times slower on CPU and fp16
  is refused; docs/architecture.md, "Measured facts"). bf16 uses DeepSpeed's ``torch_autocast`` mode: weights and
  optimiser state stay fp32, convolutions/linears run in bf16 inside ``torch.autocast``. Unlike
  the ``bf16`` mode (weights cast to bf16), tasks can call sub-methods of a model
  (``.encode``, ``.decode_common``...) with fp32 inputs; the Trainer wraps every step
  (forward, backward and optimiser step) in ``autocast_context``. DeepSpeed's settings here are
  right: fp32 master weights and optimiser state, fp32 gradient buffers, a static loss scale of
  1 (no dynamic scaler for bf16), bf16 only as the all-reduce dtype of conv/linear gradients.
* bf16 on CPU runs WITHOUT oneDNN (``autocast_context``): oneDNN computes wrong bf16 Conv3d
  weight gradients for MedFormer's deepest stage on small patches (docs/results.md, "bf16 on
  CPU"); PyTorch's native CPU kernels are right, only slower (CPU default is fp32 anyway). CUDA
  (cuDNN) is not affected.
* ``gradient_clipping`` is always written (DeepSpeed 0.19.8 defaults it to 1.0; ours 0 = off).
* Client optimiser: ``torch.optim.Adam(amsgrad=True)`` (thesis 5.5.1: Adam, lr 1e-4, betas
  (0.5, 0.999), AMSGrad); DeepSpeed's fused Adam has no AMSGrad and needs a JIT compile.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hpc_modatts.config import DistributedConfig, OptimConfig


def use_bf16(dcfg: DistributedConfig, device: torch.device) -> bool:
    """bf16 when asked, or ``auto`` on CUDA; fp32 otherwise."""
    return dcfg.precision == "bf16" or (dcfg.precision == "auto" and device.type == "cuda")


def deepspeed_config(
    ocfg: OptimConfig, dcfg: DistributedConfig, env: Any, micro_batch: int, grad_accum: int = 1
) -> dict:
    """The DeepSpeed config dict for one engine (see module docstring)."""
    zero: dict[str, Any] = {"stage": int(dcfg.zero_stage)}
    if dcfg.offload_optimizer and dcfg.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": env.device.type == "cuda"}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(micro_batch),
        "gradient_accumulation_steps": int(grad_accum),
        "train_batch_size": int(micro_batch) * int(grad_accum) * int(env.world_size),
        "gradient_clipping": float(ocfg.grad_clip),
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        # a client torch optimiser on offloaded (CPU) partitions instead of DeepSpeedCPUAdam
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if use_bf16(dcfg, env.device):
        cfg["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return cfg


def make_optimizer(model: nn.Module, ocfg: OptimConfig) -> torch.optim.Optimizer:
    """The paper's optimiser: Adam with AMSGrad (thesis 5.5.1)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(
        params, lr=ocfg.lr, betas=tuple(ocfg.betas), amsgrad=ocfg.amsgrad, weight_decay=ocfg.weight_decay
    )


def build_engine(
    model: nn.Module,
    ocfg: OptimConfig,
    dcfg: DistributedConfig,
    env: Any,
    micro_batch: int,
    name: str = "model",
    grad_accum: int = 1,
):
    """Wrap ``model`` in a DeepSpeed engine with its own client Adam optimiser.

    ``env`` is the ``DistEnv`` of ``init_distributed`` (torch.distributed already initialised).
    ``name`` only labels the engine (``engine.hpc_name``) for logs and checkpoint folders.
    """
    import deepspeed  # lazy: importing deepspeed costs seconds, and only training needs engines

    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"build_engine({name}): the model has no trainable parameters")
    model = model.to(env.device)
    config = deepspeed_config(ocfg, dcfg, env, micro_batch, grad_accum)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=make_optimizer(model, ocfg), config=config, dist_init_required=False
    )
    engine.hpc_name = name
    if dcfg.zero_stage == 3:
        register_external_parameters(engine.module)
    return engine


def register_external_parameters(module: nn.Module) -> int:
    """ZeRO-3: declare parameters a module uses outside their owner's ``forward``.

    ``nn.MultiheadAttention`` reads ``out_proj.weight/bias`` itself (through
    ``F.multi_head_attention_forward``), never calling ``out_proj``; ZeRO-3 would not gather
    them ("mat2 must be a matrix, got 1-D tensor"). Returns how many were registered.
    """
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter  # lazy: costs seconds

    count = 0
    for m in module.modules():
        if isinstance(m, nn.MultiheadAttention):
            for p in (m.out_proj.weight, m.out_proj.bias):
                if p is not None:
                    register_external_parameter(m, p)
                    count += 1
    return count


def unwrap(engine: Any) -> nn.Module:
    """The plain ``nn.Module`` inside a DeepSpeed engine (or the module itself)."""
    return getattr(engine, "module", engine)


def is_zero3(engine: Any) -> bool:
    fn = getattr(engine, "zero_optimization_partition_weights", None)
    return bool(fn()) if callable(fn) else False


def gathered_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """Full fp32 CPU state dict of the model; collective: call on EVERY rank.

    Returns the dict on rank 0 and None on the other ranks. The fp32 values come from the
    optimiser's master weights where DeepSpeed keeps them (``safe_get_full_fp32_param``:
    ZeRO 1-3, partitioned under ZeRO-3), else from the parameter itself; ZeRO-3 parameters
    without optimiser state are gathered with ``deepspeed.zero.GatheredParameters``.
    """
    import deepspeed  # lazy: importing deepspeed costs seconds (callers: the trainer, with engines)
    from deepspeed.utils import safe_get_full_fp32_param

    module = unwrap(engine)
    main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    out: dict[str, torch.Tensor] = {}
    for pname, p in module.named_parameters():
        full = safe_get_full_fp32_param(p) if p.requires_grad else None
        if full is None and hasattr(p, "ds_id"):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                full = p.detach().clone()
        if full is None:
            full = p.detach()
        if main:
            out[pname] = full.detach().float().cpu().clone()
    if main:
        for bname, b in module.named_buffers():
            if b is not None:
                out[bname] = b.detach().cpu().clone()
        # keep only what nn.Module.state_dict would contain (drops non-persistent buffers)
        keys = set(module.state_dict().keys()) if not is_zero3(engine) else None
        if keys is not None:
            out = {k: v for k, v in out.items() if k in keys}
        else:
            out = {k: v for k, v in out.items() if k in _persistent_names(module)}
    return out if main else None


def _persistent_names(module: nn.Module) -> set[str]:
    """Names nn.Module.state_dict would produce (parameters and persistent buffers)."""
    names = {n for n, _ in module.named_parameters()}
    for mname, mod in module.named_modules():
        for bname, b in mod.named_buffers(recurse=False):
            if b is not None and bname not in mod._non_persistent_buffers_set:
                names.add(f"{mname}.{bname}" if mname else bname)
    return names


@contextlib.contextmanager
def onednn_disabled():
    """Run the block without oneDNN (mkldnn) kernels; the previous setting is restored.

    Sets ``torch.backends.mkldnn.enabled`` itself: ``torch.backends.mkldnn.flags`` also sets
    the TF32 flag, which warns on every call on CPU-only builds.
    """
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


@contextlib.contextmanager
def autocast_context(engine_or_bf16: Any, device: torch.device):
    """``torch.autocast`` in bf16 when the engine trains in bf16; a no-op context otherwise.

    Wrap the backward pass too: on CPU the block also runs without oneDNN, whose bf16 Conv3d
    weight gradients are wrong for small inputs (see the module docstring).
    """
    bf16 = (
        engine_or_bf16
        if isinstance(engine_or_bf16, bool)
        else bool(getattr(engine_or_bf16, "torch_autocast_enabled", lambda: False)())
    )
    if not bf16:
        yield
        return
    cpu_fix = onednn_disabled() if device.type == "cpu" else contextlib.nullcontext()
    with cpu_fix, torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield
