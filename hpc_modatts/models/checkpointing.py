"""Activation checkpointing as a policy applied to a built model (never an `if` in model code).

Blocks declare what they are with a class attribute `checkpoint_kind` ("bmdh", "conv", "decoder",
"vit"). `apply_activation_checkpointing(model, ["bmdh", "conv"])` patches, in place, the `forward`
of every such submodule so it runs under `torch.utils.checkpoint.checkpoint(use_reentrant=False)`:
its activations are freed after the forward and recomputed during backward. The parameters and the
state_dict keys are untouched, so checkpoints load with or without a policy, and the same module
works in plain torch and inside a DeepSpeed engine (which only wraps the top module).

- Outermost wins: a block inside an already checkpointed block is not wrapped again (nested
  checkpoints would recompute twice for no memory gain).
- Idempotent: applying the same or a narrower policy again changes nothing.
- Modules with mutable forward-time state (GenSeg's SwitchableNorm) expose a `recompute_state`
  attribute; it is captured at forward and restored while the block is recomputed, so a block
  recomputed in backward uses the state it ran with, whatever the state is by then.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager, nullcontext
from typing import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.checkpoint import checkpoint

KINDS = ("bmdh", "conv", "decoder", "vit")
_MARK = "_activation_checkpointed"


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (each shared tensor once); only those with requires_grad by default."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextmanager
def _restored(states: list):
    """Temporarily put back the (module, state) pairs captured at forward time."""
    current = [(m, m.recompute_state) for m, _ in states]
    for m, s in states:
        m.recompute_state = s
    try:
        yield
    finally:
        for m, s in current:
            m.recompute_state = s


class _CheckpointedForward:
    """Replacement `forward`: the module's own forward, run under non-reentrant checkpointing."""

    def __init__(self, module: nn.Module):
        self.forward = module.forward  # bound original forward
        self.stateful = [m for m in module.modules() if hasattr(m, "recompute_state")]

    def __call__(self, *args, **kwargs):
        states = [(m, m.recompute_state) for m in self.stateful]
        return checkpoint(
            self.forward, *args, use_reentrant=False, context_fn=lambda: (nullcontext(), _restored(states)), **kwargs
        )


def apply_activation_checkpointing(model: nn.Module, policy: list[str]) -> nn.Module:
    """Checkpoint every submodule whose `checkpoint_kind` is in `policy` (in place); returns `model`."""
    unknown = sorted(set(policy) - set(KINDS))
    if unknown:
        raise ValueError(f"activation checkpointing policy {unknown} unknown; kinds are {list(KINDS)}")
    wrapped: list[str] = [name for name, m in model.named_modules() if getattr(m, _MARK, False)]
    for name, module in model.named_modules():
        inside = any(name.startswith(w + ".") or w == "" for w in wrapped)
        if inside or getattr(module, _MARK, False) or getattr(module, "checkpoint_kind", None) not in policy:
            continue
        module.forward = _CheckpointedForward(module)
        setattr(module, _MARK, True)
        wrapped.append(name)
    return model


def checkpointed_modules(model: nn.Module) -> list[str]:
    """Names of the submodules whose forward runs under activation checkpointing."""
    return [name for name, m in model.named_modules() if getattr(m, _MARK, False)]


def measure_peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated while `fn()` runs, above what was allocated before it.

    CUDA: `torch.cuda.max_memory_allocated`. CPU: torch.profiler memory events (profile_memory=True),
    sorted by time, peak of their running sum; bit-identical across repeats (docs/architecture.md, "Measured facts").
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    return max(itertools.accumulate((e.nbytes() for e in events), initial=0))
