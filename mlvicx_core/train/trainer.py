"""The pretraining loop: two views on the device, MLVICX loss, LARS/AdamW, logs, checkpoints.

One optimizer step (``t`` counts completed steps; the record of the k-th step has ``step = k``)::

    images (B, 1, H, W) from the DataLoader -> device
    view_a, view_b = augment(images, generator=g)              (on the device, seeded generator g)
    z = model(view_a), z' = model(view_b)                      (bf16 autocast on CUDA)
    terms = mlvicx_loss(z, z', gather=all_gather_with_grad)    (float32; global batch under DDP)
    non-finite term -> NonFiniteLossError naming the step and the term; nothing of this step is applied
    backward, optional clipping, optimizer step, scheduler step

Exact resume: the checkpoint holds model, optimizer, scheduler, every RNG, the augmentation generator
and the step; the sampler's permutation depends only on (seed, epoch) and restarts part-way, so on CPU
``N steps + resume + N steps`` equals ``2N`` uninterrupted steps bit for bit (tested). This needs a
dataset whose ``dataset[i]`` depends only on ``i`` (true for the synthetic phantom and image folders).
"""
from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..devices import select_device
from ..loss import mlvicx_loss
from ..model import MLVICX, Embeddings
from . import distributed
from .checkpoint import CheckpointManager, export_trunk, load_checkpoint, rng_state, set_rng_state
from .diagnostics import embedding_diagnostics
from .metrics import MetricsWriter
from .optim import build_optimizer, build_scheduler, peak_lr
from .runconfig import ConfigError, TrainConfig, config_hash, diff_keys, from_dict

#: config keys that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = frozenset({"train.max_steps"})


class NonFiniteLossError(FloatingPointError):
    """A loss term or the gradient norm became NaN/inf; the message names the step and the term."""


@dataclass
class RunResult:
    """What :func:`pretrain` leaves behind. ``losses``: total loss of every step run in this call."""

    run_dir: Path
    model: nn.Module
    step: int
    checkpoint: Path | None
    metrics: Path
    trunk: Path | None
    losses: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_for(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when asked and supported; full precision elsewhere."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TwoViews(nn.Module):
    """``(view_a, view_b) -> (model(view_a), model(view_b))`` as one module, so DDP and
    ``torch.compile`` see one forward per step. Two passes (not one on the concatenated views) keep
    BatchNorm statistics per view, as in VICReg."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[Embeddings, Embeddings]:
        return self.model(a), self.model(b)


def loss_terms(za: Embeddings, zb: Embeddings, config: TrainConfig,
               gather: Callable | None = None) -> dict[str, torch.Tensor]:
    """``mlvicx_loss`` with the model config's weights (finiteness is checked by the caller)."""
    m = config.model
    return mlvicx_loss(za.global_, zb.global_, za.multi, zb.multi, lam=m.lam,
                       sim_coeff=m.sim_coeff, std_coeff=m.std_coeff, cov_coeff=m.cov_coeff,
                       check_finite=False, gather=gather)


def run_dir_for(config: TrainConfig) -> Path:
    """``<train.out_dir>/<train.run_name>`` or ``<train.out_dir>/<preset>-<hash[:10]>``."""
    name = config.train.run_name or f"{config.preset}-{config_hash(config)[:10]}"
    return Path(config.train.out_dir) / name


def _check_resume_config(saved: dict, config: TrainConfig, path: Path) -> None:
    old = from_dict(saved["config"])
    if config_hash(old, RESUMABLE_CHANGES) != config_hash(config, RESUMABLE_CHANGES):
        keys = [k for k in diff_keys(old, config) if k not in RESUMABLE_CHANGES]
        raise ConfigError(
            f"{path} was written by a run with a different configuration (differs in {keys}); "
            "resume with the same configuration or use another train.run_name / train.out_dir"
        )


def pretrain(
    config: TrainConfig,
    *,
    dataset: Dataset | None = None,
    augment: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    model: nn.Module | None = None,
    run_dir: str | Path | None = None,
) -> RunResult:
    """Pretrain (or resume, if ``run_dir`` holds checkpoints) and return a :class:`RunResult`.

    ``dataset`` / ``augment`` default to :func:`mlvicx_core.train.pipeline.build_pretrain_data`;
    ``model`` to ``MLVICX(config.model)`` built after seeding. Under ``torchrun`` every process calls
    this; only rank 0 writes files.
    """
    cfg = config.train
    env = distributed.detect()
    device = select_device(cfg.device, env.local_rank)
    env = distributed.setup(device)
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)

    seed_everything(cfg.seed)
    if dataset is None or augment is None:
        from .pipeline import build_augment, build_pretrain_dataset

        dataset = dataset if dataset is not None else build_pretrain_dataset(config)
        augment = augment if augment is not None else build_augment(config)
    if model is None:
        model = MLVICX(config.model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)

    per_rank = distributed.per_rank_batch(cfg.batch_size, env)
    sampler = distributed.ResumableDistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed)
    spe = distributed.steps_per_epoch(len(dataset), cfg.batch_size, env)
    if spe == 0:
        raise ConfigError(f"the dataset has {len(dataset)} images, fewer than one global batch "
                          f"(train.batch_size={cfg.batch_size}); lower the batch size or add data")
    total = cfg.epochs * spe
    stop_at = min(total, cfg.max_steps) if cfg.max_steps else total
    oc = config.optim
    optimizer = build_optimizer(model, oc.name, peak_lr(oc.base_lr, cfg.batch_size), oc.weight_decay,
                                oc.momentum, oc.trust_coefficient, oc.betas)
    scheduler = build_scheduler(optimizer, round(oc.warmup_epochs * spe), total, oc.final_lr_ratio)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed * 1009 + 17 + env.rank)  # a different stream per rank

    ckpts = CheckpointManager(run_dir / "checkpoints", cfg.keep_last)
    step, last_good = 0, ckpts.latest()
    if last_good is not None:
        state = load_checkpoint(last_good, map_location="cpu")
        _check_resume_config(state, config, last_good)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        generator.set_state(state["augment_rng"])
        step = int(state["step"])
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config.to_yaml())

    net: nn.Module = TwoViews(model)
    if env.is_distributed:
        net = distributed.wrap_ddp(net, device, cfg.sync_batchnorm)
    if cfg.compile:
        net = torch.compile(net)
    gather = distributed.gather_with_grad if env.is_distributed else None
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=True,
                        num_workers=config.data.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    params = [p for p in model.parameters() if p.requires_grad]
    writer = MetricsWriter(run_dir, tensorboard=cfg.tensorboard, enabled=env.is_main,
                           resume_step=step)
    from tqdm.auto import tqdm

    bar = tqdm(total=stop_at, initial=step, unit="step", dynamic_ncols=True, mininterval=1.0,
               disable=not (env.is_main and cfg.progress), desc=f"pretrain {config.preset}")
    losses: list[float] = []
    saved_at = step if last_good is not None else -1
    model.train()

    def save() -> Path | None:
        nonlocal saved_at, last_good
        saved_at = step
        if not env.is_main:
            return None
        last_good = ckpts.save({
            "step": step, "epoch": step // spe, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(), "augment_rng": generator.get_state(),
            "config": config.to_dict(), "config_hash": config_hash(config),
        })
        return last_good

    try:
        tick = time.perf_counter()
        while step < stop_at:
            epoch = step // spe
            sampler.set_epoch(epoch, start=(step % spe) * per_rank)
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True)
                view_a, view_b = augment(images, generator=generator)
                view_a = view_a.contiguous(memory_format=memory_format)
                view_b = view_b.contiguous(memory_format=memory_format)
                with autocast_for(device, cfg.amp):
                    za, zb = net(view_a, view_b)
                terms = loss_terms(za, zb, config, gather)
                names = list(terms)
                values = distributed.all_reduce_mean(torch.stack([terms[k].detach() for k in names]))
                host = values.tolist()  # one sync per step; also keeps all ranks in lockstep on NaN
                bad = [f"{k}={v}" for k, v in zip(names, host) if not np.isfinite(v)]
                if bad:
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step + 1} (epoch {epoch}): {', '.join(bad)}; "
                        f"training stopped before applying this step. Last good checkpoint: "
                        f"{last_good if last_good is not None else 'none saved yet'}"
                    )
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    params, oc.grad_clip if oc.grad_clip else float("inf"), foreach=True)
                if not torch.isfinite(grad_norm):
                    raise NonFiniteLossError(
                        f"non-finite gradient norm at step {step + 1} (epoch {epoch}) with a finite "
                        f"loss ({host[0]}); the step was not applied. Last good checkpoint: "
                        f"{last_good if last_good is not None else 'none saved yet'}"
                    )
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(host[0])
                now = time.perf_counter()
                record: dict[str, Any] = {"step": step, "epoch": epoch}
                if step % cfg.log_every == 0 or step == stop_at:
                    record.update(dict(zip(names, host)))
                    record.update(lr=lr, grad_norm=float(grad_norm),
                                  images_per_s=cfg.batch_size / max(now - tick, 1e-9))
                    bar.set_postfix(loss=f"{host[0]:.3f}", lr=f"{lr:.2e}", refresh=False)
                if env.is_main and (step % cfg.diag_every == 0 or step == 1):
                    for branch, z in (("global", za.global_), ("multi", za.multi)):
                        if z is not None:
                            for k, v in embedding_diagnostics(z).items():
                                record[f"diag/{branch}/{k}"] = v
                if len(record) > 2:
                    writer.write(record)
                bar.update(1)
                if step % cfg.ckpt_every == 0 or step % spe == 0 or step == stop_at:
                    save()
                tick = time.perf_counter()
                if step >= stop_at:
                    break
        if saved_at != step:
            save()
    finally:
        bar.close()
        writer.close()

    trunk = None
    if env.is_main:
        trunk = export_trunk(model, run_dir / "trunk.pt")
        (run_dir / "done.json").write_text(json.dumps({
            "config_hash": config_hash(config), "step": step, "checkpoint": str(last_good),
            "trunk": str(trunk)}, indent=1))
    return RunResult(run_dir=run_dir, model=model, step=step, checkpoint=last_good,
                     metrics=writer.path, trunk=trunk, losses=losses)


__all__ = ["NonFiniteLossError", "RunResult", "TwoViews", "autocast_for", "loss_terms", "pretrain",
           "run_dir_for", "seed_everything", "select_device"]
