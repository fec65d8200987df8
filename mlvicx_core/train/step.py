"""One optimizer step of pretraining: what :func:`~mlvicx_core.train.trainer.pretrain` repeats and
``benchmarks/step_time.py`` times (the benchmark calls this very function)::

    z = model(view_a), z' = model(view_b)    (bf16 autocast: autocast_dtype, train.amp / amp_cpu)
    terms = method.loss(z, z', loss.*, gather)    (model.method, mlvicx_core.methods; float32;
                                                   global batch under DDP)
    non-finite term -> NonFiniteLossError naming the step and the term; nothing of this step applied
    backward, optional clipping, non-finite gradient norm -> NonFiniteLossError
    optimizer step, scheduler step
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Config, ConfigError, LoopConfig, LossConfig
from ..methods import Method, get_method
from ..model import Embeddings
from . import distributed
from .optim import build_optimizer, build_scheduler, peak_lr


class NonFiniteLossError(FloatingPointError):
    """A loss term, the gradient norm or a parameter became NaN/inf; the message names the step."""


def autocast_dtype(device: torch.device, amp: bool, amp_cpu: bool = False) -> torch.dtype | None:
    """The dtype the forward pass autocasts to on ``device``, or None for full precision.

    bfloat16 on CUDA when ``amp`` (``train.amp``) and the GPU supports it; bfloat16 on CPU when
    ``amp`` and ``amp_cpu`` (``train.amp_cpu``); full precision on any other device (MPS included).
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and amp_cpu:
        return torch.bfloat16
    return None


@dataclass(frozen=True)
class DeviceChoices:
    """What a run does differently on its device, decided from ``train.*`` in one place (and so
    testable without the device): the forward's autocast dtype, the memory format of the model and
    the views, pinned host memory in the DataLoader, BatchNorm -> SyncBatchNorm under DDP."""

    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    pin_memory: bool
    sync_batchnorm: bool


def device_choices(train: LoopConfig, device: torch.device) -> DeviceChoices:
    """``train.amp`` / ``amp_cpu`` (:func:`autocast_dtype`), ``train.channels_last`` (any device),
    pinned memory on CUDA only (it speeds host-to-GPU copies and costs page-locked memory
    elsewhere), ``train.sync_batchnorm`` on CUDA only (SyncBatchNorm needs NCCL; under gloo on CPU
    the statistics stay per rank)."""
    cuda = device.type == "cuda"
    return DeviceChoices(
        amp_dtype=autocast_dtype(device, train.amp, train.amp_cpu),
        memory_format=torch.channels_last if train.channels_last else torch.contiguous_format,
        pin_memory=cuda, sync_batchnorm=cuda and train.sync_batchnorm)


def autocast_for(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device.type`` to ``dtype`` (from :func:`autocast_dtype`), or a
    no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class TwoViewForward(nn.Module):
    """``(view_a, view_b) -> (model(view_a), model(view_b))`` as one module, so DDP and
    ``torch.compile`` see one forward per step. Two passes (not one on the concatenated views) keep
    BatchNorm statistics per view, as in VICReg."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[Embeddings, Embeddings]:
        return self.model(a), self.model(b)


def loss_terms(za: Embeddings, zb: Embeddings, loss: LossConfig, gather: Callable | None = None,
               method: Method | str = "mlvicx") -> dict[str, torch.Tensor]:
    """The terms of ``method`` (a registered name or a :class:`~mlvicx_core.methods.Method`) with
    the ``loss.*`` weights; every name the method declares, nothing else (finiteness is checked by
    the caller)."""
    method = get_method(method) if isinstance(method, str) else method
    terms = method.loss(za, zb, loss, gather)
    if set(terms) != set(method.names()):
        raise ValueError(f"method {method.name!r} returned the terms {list(terms)}; it declares "
                         f"{method.names()}")
    return terms


@dataclass
class StepState:
    """Everything one step touches. ``step`` counts completed optimizer steps."""

    model: nn.Module  # the plain MLVICX (what is checkpointed)
    net: nn.Module  # TwoViewForward(model), possibly DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss: LossConfig
    device: torch.device
    method: Method  # model.method: its loss, heads and term names
    amp_dtype: torch.dtype | None = None  # autocast dtype of the forward (None: full precision)
    memory_format: torch.memory_format = torch.contiguous_format
    grad_clip: float | None = None
    gather: Callable | None = None
    step: int = 0
    last_good: Path | None = None  # the newest checkpoint, named in errors
    params: list[nn.Parameter] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.params:
            self.params = [p for p in self.model.parameters() if p.requires_grad]


@dataclass
class StepResult:
    """What one step produced: host values of every loss term, the gradient norm, the learning
    rate used, and the embeddings of both views (for diagnostics)."""

    terms: dict[str, float]
    grad_norm: float
    lr: float
    za: Embeddings
    zb: Embeddings


def build_step(config: Config, model: nn.Module, device: torch.device, steps_per_epoch: int,
               env: distributed.DistEnv | None = None) -> StepState:
    """The optimizer, schedule and (DDP / compiled) two-view module for ``model`` (already on
    ``device``) under ``config``; the schedule spans ``train.epochs * steps_per_epoch`` steps."""
    cfg, oc = config.train, config.optim
    method = get_method(config.model.method)
    mismatch = method.head_mismatch(config.model.multilevel)
    if mismatch:
        raise ConfigError(mismatch)
    env = env or distributed.detect()
    optimizer = build_optimizer(model, oc.name, peak_lr(oc.base_lr, cfg.batch_size),
                                oc.weight_decay, oc.momentum, oc.trust_coefficient, oc.betas)
    total = cfg.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, round(oc.warmup_epochs * steps_per_epoch), total,
                                oc.final_lr_ratio)
    choices = device_choices(cfg, device)
    net: nn.Module = TwoViewForward(model)
    if env.is_distributed:
        net = distributed.wrap_ddp(net, device, choices.sync_batchnorm)
    if cfg.compile:
        net = torch.compile(net)
    return StepState(model=model, net=net, optimizer=optimizer, scheduler=scheduler,
                     loss=config.loss, device=device, method=method,
                     amp_dtype=choices.amp_dtype,
                     memory_format=choices.memory_format, grad_clip=oc.grad_clip,
                     gather=distributed.gather_with_grad if env.is_distributed else None)


def _where(state: StepState) -> str:
    last = state.last_good if state.last_good is not None else "none saved yet"
    return f"Last good checkpoint: {last}"


def train_step(state: StepState, view_a: torch.Tensor, view_b: torch.Tensor) -> StepResult:
    """One optimizer step on two views (B, 1, S, S) already on ``state.device``."""
    view_a = view_a.contiguous(memory_format=state.memory_format)
    view_b = view_b.contiguous(memory_format=state.memory_format)
    with autocast_for(state.device, state.amp_dtype):
        za, zb = state.net(view_a, view_b)
    terms = loss_terms(za, zb, state.loss, state.gather, state.method)
    names = list(terms)
    values = distributed.all_reduce_mean(torch.stack([terms[k].detach() for k in names]))
    host = values.tolist()  # one sync per step; also keeps all ranks in lockstep on NaN
    bad = [f"{k}={v}" for k, v in zip(names, host) if not np.isfinite(v)]
    if bad:
        raise NonFiniteLossError(f"non-finite loss at step {state.step + 1}: {', '.join(bad)}; "
                                 f"training stopped before applying this step. {_where(state)}")
    lr = state.optimizer.param_groups[0]["lr"]
    if not math.isfinite(lr):
        raise NonFiniteLossError(f"non-finite learning rate {lr} at step {state.step + 1}; "
                                 f"check optim.base_lr. {_where(state)}")
    state.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    clip = state.grad_clip if state.grad_clip else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(state.params, clip, foreach=True)
    if not torch.isfinite(grad_norm):
        raise NonFiniteLossError(f"non-finite gradient norm at step {state.step + 1} with a finite "
                                 f"loss ({host[0]}); the step was not applied. {_where(state)}")
    state.optimizer.step()
    state.scheduler.step()
    state.step += 1
    return StepResult(dict(zip(names, host)), float(grad_norm), lr, za, zb)


def check_parameters(state: StepState) -> None:
    """Raise :class:`NonFiniteLossError` if any parameter or buffer of the model is NaN/inf (run
    before every checkpoint, so a saved checkpoint never holds non-finite weights)."""
    tensors = [t for t in state.model.state_dict().values() if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
    if not bool(finite):
        names = [k for k, t in state.model.state_dict().items()
                 if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        raise NonFiniteLossError(
            f"non-finite weights after step {state.step} ({len(names)} tensors, e.g. "
            f"{names[:3]}); not checkpointed. {_where(state)}")
