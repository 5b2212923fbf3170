"""bf16 training through real DeepSpeed engines (world of 1, gloo, CPU), ZeRO 0-3.

Regression for "OVERFLOW! Skipping step" with ZeRO-1/2 + bf16 on CPU: the cause was oneDNN's
bf16 Conv3d weight gradient (wrong for inputs whose first spatial dim is 2), not DeepSpeed's
loss scaling; ``autocast_context`` now runs CPU bf16 without oneDNN (see engine.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from hpc_modatts.config import DistributedConfig, OptimConfig
from hpc_modatts.distributed.engine import autocast_context, build_engine, deepspeed_config
from hpc_modatts.distributed.env import init_distributed

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def env():
    return init_distributed(DistributedConfig())


def conv3d_weight_grad_error(x: torch.Tensor, w: torch.Tensor, go: torch.Tensor) -> float:
    """Max |bf16 weight grad under autocast_context - fp64 reference on the same bf16 values|."""
    xb, wb = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    with autocast_context(True, CPU):
        y = torch.nn.functional.conv3d(xb, wb, padding=1)  # (B, Cout, X, Y, Z) bf16
        y.backward(go.to(y.dtype))
    x64, go64 = x.to(torch.bfloat16).double(), go.to(torch.bfloat16).double()
    ref = torch.nn.grad.conv3d_weight(x64, w.shape, go64, padding=1)
    return float((wb.grad.double() - ref).abs().max())


def test_cpu_bf16_conv3d_weight_gradient_is_right_on_small_inputs():
    """oneDNN gives garbage/NaN here on every call; the native kernels are right."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 2, 4, 4, generator=g)  # (B, C, X, Y, Z), X = 2 triggers it
    w = torch.randn(8, 32, 3, 3, 3, generator=g) * 0.05
    go = torch.randn(2, 8, 2, 4, 4, generator=g)
    for _ in range(3):
        err = conv3d_weight_grad_error(x, w, go)
        assert math.isfinite(err) and err < 0.5, err  # bf16 rounding of the sum: ~1e-2
    assert torch.backends.mkldnn.enabled  # restored after the block


def test_bf16_config_keeps_fp32_weights_and_no_loss_scaler(env):
    cfg = deepspeed_config(OptimConfig(), DistributedConfig(zero_stage=2, precision="bf16"), env, 2)
    assert cfg["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert "bf16" not in cfg and "fp16" not in cfg  # no weight cast, no (dynamic) loss scaler
    assert cfg["gradient_clipping"] == 0.0
    fp32 = deepspeed_config(OptimConfig(), DistributedConfig(precision="fp32"), env, 2)
    assert "torch_autocast" not in fp32


def optimizer_state_tensors(engine) -> list[torch.Tensor]:
    """The client Adam's state (exp_avg, exp_avg_sq, max_exp_avg_sq) under any ZeRO wrapper."""
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    return [t for s in inner.state.values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1]


def master_weights(engine) -> list[torch.Tensor]:
    opt = engine.optimizer
    for attr in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):  # ZeRO-1/2, ZeRO-3
        if hasattr(opt, attr):
            return list(getattr(opt, attr))
    return [p for g in opt.param_groups for p in g["params"]]  # ZeRO-0: the model's own parameters


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_bf16_segmenter_trains_without_skipped_steps(env, stage):
    from hpc_modatts.losses import dice_loss
    from hpc_modatts.models import build_segmenter

    torch.manual_seed(0)
    engine = build_engine(
        build_segmenter("tiny"),
        OptimConfig(lr=1e-3),
        DistributedConfig(zero_stage=stage, precision="bf16"),
        env,
        micro_batch=2,
        name=f"seg{stage}",
    )
    assert engine.torch_autocast_enabled()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 32, 32, 32, generator=g) * 2 - 1  # (B, 1, X, Y, Z): deepest stage 2x2x2
    y = (torch.rand(2, 1, 32, 32, 32, generator=g) > 0.7).float()
    has = torch.ones(2, dtype=torch.bool)
    losses, norms = [], []
    for _ in range(3):
        with autocast_context(engine, env.device):  # forward, backward and step, as the Trainer does
            loss = dice_loss(engine(x).float(), y, has)
            engine.backward(loss)
            engine.step()
        losses.append(loss.item())
        norms.append(engine.get_global_grad_norm())  # ZeRO 1-3 compute it; None under ZeRO-0
    # a Dice gradient is O(0.1): wrong kernels gave 1e15-1e31 or NaN (a skipped step)
    assert all(n is None or (math.isfinite(float(n)) and float(n) < 2) for n in norms), norms
    assert engine.skipped_steps == 0 and engine.global_steps == 3
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert all(p.dtype == torch.float32 for p in engine.module.parameters() if p.numel())
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in master_weights(engine))
    state = optimizer_state_tensors(engine)
    assert state and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in state)
