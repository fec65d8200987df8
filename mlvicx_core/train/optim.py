"""Optimisers and the learning-rate schedule of the pretraining recipe (METHOD.md section 4).

LARS (You et al. 2017, as used by VICReg): for a parameter ``w`` with gradient ``g``

    d = g + wd * w                                   (weight decay folded into the update)
    q = eta * ||w|| / ||d||   if ||w|| > 0 and ||d|| > 0, else 1     (trust ratio, eta = 0.001)
    m = mu * m + q * d                               (momentum buffer, m = q * d on the first step)
    w = w - lr * m

Biases and normalisation parameters (every parameter with ``ndim == 1``: Linear/conv biases, BatchNorm
weights and biases) get neither weight decay nor the trust ratio (``wd = 0`` and ``q = 1``), as in
VICReg; they are plain SGD with momentum.

Learning rate: ``peak = base_lr * batch_size / 256`` (global batch), a linear warmup over the first
``warmup_steps`` steps (``lr_t = peak * (t + 1) / warmup_steps``, so the very first step already moves
the weights), then a half cosine from ``peak`` down to ``final_lr_ratio * peak`` at the last step.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def trust_ratio(w: torch.Tensor, d: torch.Tensor, eta: float) -> torch.Tensor:
    """``eta * ||w|| / ||d||``, or 1 where either norm is 0 (a 0-d tensor; no host sync)."""
    w_norm, d_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(d)
    one = torch.ones_like(w_norm)
    return torch.where(w_norm > 0, torch.where(d_norm > 0, eta * w_norm / d_norm, one), one)


class LARS(Optimizer):
    """Layer-wise adaptive rate scaling with momentum (see the module docstring for the update).

    Each param group may set ``lars_adaptation=False`` (no trust ratio) and its own ``weight_decay``;
    :func:`param_groups` builds the two groups of the recipe.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(
                f"LARS: expected lr >= 0, momentum >= 0, weight_decay >= 0, trust_coefficient > 0; got "
                f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}, "
                f"trust_coefficient={trust_coefficient}"
            )
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient, "lars_adaptation": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Apply the update to every parameter with a gradient.

        The update ``d`` is built in the gradient's own storage (``p.grad`` holds ``q * d`` after
        the step, not the gradient), so a step allocates nothing beyond the first step's momentum
        buffers: at the paper's widths (4096 x 4096 and 8192 x 4096 weights) each temporary is a
        64-128 MB fresh allocation, which on glibc means an mmap and page faults every step. The
        arithmetic, and so every float, is that of the plain form in the module docstring
        (tests/test_train_optim.py holds the two equal bit for bit).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["weight_decay"] != 0:
                    d.add_(p, alpha=group["weight_decay"])
                if group["lars_adaptation"]:
                    d.mul_(trust_ratio(p, d, group["trust_coefficient"]))
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss


def is_excluded(param: torch.Tensor) -> bool:
    """Biases and normalisation parameters: every 1-D parameter (no decay, no LARS adaptation)."""
    return param.ndim <= 1


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups over the trainable parameters: weights (decay + adaptation), biases/norms (neither)."""
    decay, excluded = [], []
    for p in model.parameters():
        if p.requires_grad:
            (excluded if is_excluded(p) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_adaptation": True},
        {"params": excluded, "weight_decay": 0.0, "lars_adaptation": False},
    ]


def peak_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule: ``base_lr * batch_size / 256`` (global batch)."""
    return base_lr * batch_size / 256


def _fused_ok(model: nn.Module) -> bool | None:
    """``fused=True`` for AdamW where torch has the fused kernel for every parameter's device
    (float CPU and CUDA tensors): one kernel over all tensors instead of a dozen small ops per
    parameter, 4x faster on the teaching network's CPU step (docs/TRAINING.md, "Speed on a CPU").
    None (torch's default choice) elsewhere."""
    params = [p for p in model.parameters() if p.requires_grad]
    ok = params and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                        for p in params)
    if not ok:
        return None
    try:  # torch < 2.4 has no fused AdamW on the CPU
        torch.optim.AdamW([torch.zeros(1, device=params[0].device, requires_grad=True)],
                          fused=True)
    except (RuntimeError, TypeError, ValueError):
        return None
    return True


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    trust_coefficient: float = 0.001,
    betas: tuple[float, float] = (0.9, 0.999),
) -> Optimizer:
    """``name="lars"`` (the recipe), ``"adamw"`` or ``"sgd"`` (momentum, no trust ratio); the same
    two param groups (1-D parameters get no weight decay) for all three."""
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    trust_coefficient=trust_coefficient)
    if name == "adamw":
        for g in groups:  # AdamW has no trust ratio; drop the key it does not know
            g.pop("lars_adaptation")
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                 fused=_fused_ok(model))
    if name == "sgd":
        for g in groups:
            g.pop("lars_adaptation")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optim.name={name!r}: expected 'lars', 'adamw' or 'sgd'")


class WarmupCosine:
    """Multiplier of the peak learning rate at optimizer step ``t`` (0-based).

    ``t < W``: ``(t + 1) / W``; afterwards ``r + (1 - r) * (1 + cos(pi * (t - W) / (T - W))) / 2`` with
    ``r = final_ratio``, ``W = warmup_steps``, ``T = total_steps``; steps past ``T`` stay at ``r``.
    A class (not a lambda) so that ``LambdaLR.state_dict()`` can save it.
    """

    def __init__(self, warmup_steps: int, total_steps: int, final_ratio: float = 0.001) -> None:
        if total_steps < 1 or warmup_steps < 0 or not 0 <= final_ratio <= 1:
            raise ValueError(
                f"schedule: expected total_steps >= 1, warmup_steps >= 0, 0 <= final_ratio <= 1; got "
                f"{total_steps}, {warmup_steps}, {final_ratio}"
            )
        self.warmup_steps = min(warmup_steps, total_steps)
        self.total_steps = total_steps
        self.final_ratio = final_ratio

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return (t + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((t - self.warmup_steps) / span, 1.0)
        r = self.final_ratio
        return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: Optimizer, warmup_steps: int, total_steps: int,
                    final_ratio: float = 0.001) -> LambdaLR:
    """``LambdaLR`` over :class:`WarmupCosine`; call ``.step()`` once after every optimizer step."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, final_ratio))
