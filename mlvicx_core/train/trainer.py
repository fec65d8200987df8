"""The pretraining loop, in four readable pieces: set up, resume, step, record.

    run = setup(config)                      # data, model, optimizer, schedule, run folder
    resume(run)                              # newest readable checkpoint, if any
    for images in batches(run):              # the sampler restarts part-way after a resume
        view_a, view_b = run.augment(images, generator=run.generator)
        result = train_step(run.state, view_a, view_b)        # mlvicx_core.train.step
        record(run, result)                  # metrics.jsonl / TensorBoard, diagnostics, probe
        checkpoint when due
    finish(run)                              # last checkpoint, trunk.pt, done.json

:func:`pretrain` is exactly that, plus the run-folder lock (``mlvicx_core.train.runs``);
:func:`train_or_load` returns the finished run of a configuration, or pretrains it.

Exact resume: the checkpoint holds model, optimizer, scheduler, every RNG, the augmentation generator
and the step; the sampler's permutation depends only on (seed, epoch) and restarts part-way, so on CPU
``N steps + resume + N steps`` equals ``2N`` uninterrupted steps bit for bit (tested). This needs a
dataset whose ``dataset[i]`` depends only on ``i`` (true for every dataset of the registry).
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoints import CheckpointManager, export_trunk, load_weights
from ..config import NON_RESULT_KEYS, Config, ConfigError, config_hash, diff_keys, from_dict
from ..devices import select_device
from ..methods import embedding
from ..model import MLVICX
from . import distributed
from .diagnostics import embedding_diagnostics
from .metrics_log import MetricsWriter
from .online_probe import OnlineProbe
from .runs import RunLock, RunResult, finished_run, load_run, requested_steps, run_dir_for
from .step import (NonFiniteLossError, StepResult, StepState, build_step, check_parameters,
                   device_choices, train_step)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (if present) all CUDA generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where CUDA is present)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Run:
    """A set-up run: everything the loop needs (built by :func:`setup`)."""

    config: Config
    env: distributed.DistEnv
    run_dir: Path
    dataset: Dataset
    augment: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    state: StepState
    sampler: distributed.ResumableDistributedSampler
    loader: DataLoader
    generator: torch.Generator
    steps_per_epoch: int
    total_steps: int
    stop_at: int
    checkpoints: CheckpointManager
    probe: OnlineProbe | None = None
    writer: MetricsWriter | None = None
    resumed_from: Path | None = None
    losses: list[float] = field(default_factory=list)
    saved_at: int = -1
    tick: float = 0.0

    @property
    def step(self) -> int:
        return self.state.step


def default_augment(config: Config):
    """The batch two-view augmenter ``aug.*`` describes, views of ``data.view_size``."""
    from ..data.augment import BatchTwoViews

    return BatchTwoViews(config.aug, config.data.view_size)


def setup(config: Config, *, dataset: Dataset | None = None, augment: Callable | None = None,
          model: nn.Module | None = None, run_dir: str | Path | None = None,
          probe: OnlineProbe | None | bool = True) -> Run:
    """Build the run ``config`` describes (nothing is trained or loaded yet).

    ``dataset`` defaults to ``data.*`` through the registry (labels hidden), ``augment`` to
    :func:`default_augment`, ``model`` to ``MLVICX(config.model)`` built after seeding. ``probe``:
    ``True`` builds the online probe from ``data.*`` when ``train.eval_every > 0``; an
    :class:`OnlineProbe` is used as given; ``False``/``None``: none.
    """
    cfg = config.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = distributed.detect()
    device = select_device(cfg.device, env.local_rank)
    env = distributed.setup(device)
    seed_everything(cfg.seed)
    if dataset is None:
        from ..data.registry import dataset_from_config

        dataset = dataset_from_config(config.data, labelled=False,
                                      in_memory=config.data.in_memory)
    augment = augment if augment is not None else default_augment(config)
    model = model if model is not None else MLVICX(config.model)
    choices = device_choices(cfg, device)
    model = model.to(device, memory_format=choices.memory_format)
    spe = distributed.steps_per_epoch(len(dataset), cfg.batch_size, env)
    if spe == 0:
        raise ConfigError(f"the dataset has {len(dataset)} images, fewer than one global batch "
                          f"(train.batch_size={cfg.batch_size}); lower the batch size or add data")
    state = build_step(config, model, device, spe, env)
    sampler = distributed.ResumableDistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=distributed.per_rank_batch(cfg.batch_size, env),
                        sampler=sampler, drop_last=True, num_workers=config.data.num_workers,
                        pin_memory=choices.pin_memory, persistent_workers=False)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed * 1009 + 17 + env.rank)  # a different stream per rank
    if probe is True:
        probe = OnlineProbe.from_config(config) if cfg.eval_every and env.is_main else None
    total = cfg.epochs * spe
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)
    return Run(config=config, env=env, run_dir=run_dir, dataset=dataset, augment=augment,
               state=state, sampler=sampler, loader=loader, generator=generator,
               steps_per_epoch=spe, total_steps=total, stop_at=requested_steps(config, total),
               checkpoints=CheckpointManager(run_dir / "checkpoints", cfg.keep_last),
               probe=probe or None)


def _check_resume_config(saved: dict, config: Config, path: Path) -> None:
    try:
        old = from_dict(saved["config"])
    except ConfigError as err:
        raise ConfigError(f"{path} was written with a configuration this kit cannot read ({err}); "
                          "use another train.run_name / train.out_dir") from None
    if config_hash(old) != config_hash(config):
        keys = [k for k in diff_keys(old, config)
                if not k.startswith("eval.") and k not in NON_RESULT_KEYS]
        raise ConfigError(
            f"{path} was written by a run with a different configuration (differs in {keys}); "
            "resume with the same configuration or use another train.run_name / train.out_dir")


def resume(run: Run) -> bool:
    """Load the newest readable checkpoint of the run folder into ``run``; False if there is none."""
    path, saved = run.checkpoints.load_latest()
    if path is None:
        return False
    _check_resume_config(saved, run.config, path)
    step = int(saved["step"])
    if step > run.stop_at:
        raise ConfigError(f"{path} is at step {step}, past the requested stop at step "
                          f"{run.stop_at} (train.max_steps); a run cannot be rewound: use another "
                          "train.run_name")
    s = run.state
    load_weights(s.model, saved["model"], str(path))
    s.optimizer.load_state_dict(saved["optimizer"])
    s.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    run.generator.set_state(saved["augment_rng"])
    s.step, s.last_good, run.saved_at, run.resumed_from = step, path, step, path
    return True


def batches(run: Run) -> Iterator[torch.Tensor]:
    """Image batches on the device, from the current step to ``run.stop_at`` (epoch-aware)."""
    while run.step < run.stop_at:
        spe = run.steps_per_epoch
        run.sampler.set_epoch(run.step // spe, start=(run.step % spe) * run.loader.batch_size)
        for batch in run.loader:
            yield batch["image"].to(run.state.device, non_blocking=True)
            if run.step >= run.stop_at:
                return


def save_checkpoint(run: Run) -> Path | None:
    """Checkpoint the current step (rank 0 writes; weights are checked finite first)."""
    s = run.state
    check_parameters(s)
    run.saved_at = s.step
    if not run.env.is_main:
        return None
    s.last_good = run.checkpoints.save({
        "step": s.step, "epoch": s.step // run.steps_per_epoch, "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
        "rng": rng_state(), "augment_rng": run.generator.get_state(),
        "config": run.config.to_dict(), "config_hash": config_hash(run.config),
    })
    return s.last_good


def record(run: Run, result: StepResult) -> dict[str, Any]:
    """The metrics record of the step just taken (written to metrics.jsonl / TensorBoard)."""
    cfg, step = run.config.train, run.step
    now = time.perf_counter()
    rec: dict[str, Any] = {"step": step, "epoch": (step - 1) // run.steps_per_epoch}
    if step % cfg.log_every == 0 or step == run.stop_at:
        rec.update(result.terms)
        rec.update(lr=result.lr, grad_norm=result.grad_norm,
                   images_per_s=cfg.batch_size / max(now - run.tick, 1e-9))
    if run.env.is_main and (step % cfg.diag_every == 0 or step == 1):
        for head in run.state.method.heads:
            for k, v in embedding_diagnostics(embedding(result.za, head)).items():
                rec[f"diag/{head}/{k}"] = v
    if run.probe is not None and (step % cfg.eval_every == 0 or step == run.stop_at):
        rec.update(probe_record(run))
    if len(rec) > 2 and run.writer is not None:
        run.writer.write(rec)
    return rec


def probe_record(run: Run) -> dict[str, float]:
    """The online probe's read-outs of the current model, with their cost in seconds."""
    t0 = time.perf_counter()
    out = run.probe(run.state.model)
    out["probe/seconds"] = time.perf_counter() - t0
    return out


def finish(run: Run) -> RunResult:
    """Checkpoint the last step if needed, export the trunk, write ``done.json``."""
    if run.saved_at != run.step:
        save_checkpoint(run)
    trunk = None
    if run.env.is_main:
        trunk = export_trunk(run.state.model, run.run_dir / "trunk.pt")
        (run.run_dir / "done.json").write_text(json.dumps({
            "config_hash": config_hash(run.config), "step": run.step,
            "total_steps": run.total_steps, "checkpoint": str(run.state.last_good),
            "trunk": str(trunk)}, indent=1))
    return RunResult(run_dir=run.run_dir, model=run.state.model, step=run.step,
                     checkpoint=run.state.last_good, metrics=run.run_dir / "metrics.jsonl",
                     trunk=trunk, losses=run.losses)


def _say(run: Run, text: str) -> None:
    """One line on stdout from rank 0, whatever ``train.progress`` says: whether a run starts or
    resumes (and where) is never silent."""
    if run.env.is_main:
        print(text, flush=True)


def pretrain(config: Config, *, dataset: Dataset | None = None, augment: Callable | None = None,
             model: nn.Module | None = None, run_dir: str | Path | None = None,
             probe: OnlineProbe | None | bool = True) -> RunResult:
    """Pretrain (or resume, if the run folder holds checkpoints) and return a :class:`RunResult`.

    Arguments as in :func:`setup`. Under ``torchrun`` every process calls this; only rank 0 writes.
    """
    from tqdm.auto import tqdm

    run = setup(config, dataset=dataset, augment=augment, model=model, run_dir=run_dir,
                probe=probe)
    lock = RunLock(run.run_dir) if run.env.is_main else _no_lock()
    with lock:
        if resume(run):
            _say(run, f"resuming {run.run_dir} from step {run.step} ({run.resumed_from.name}) "
                      f"to step {run.stop_at}")
        else:
            _say(run, f"starting a new run in {run.run_dir} ({run.stop_at} steps)")
        if run.env.is_main:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / "config.yaml").write_text(config.to_yaml())
        run.writer = MetricsWriter(run.run_dir, tensorboard=config.train.tensorboard,
                                   enabled=run.env.is_main, resume_step=run.step)
        bar = tqdm(total=run.stop_at, initial=run.step, unit="step", dynamic_ncols=True,
                   mininterval=1.0, desc=f"pretrain {config.model.method} ({config.preset})",
                   disable=not (run.env.is_main and config.train.progress))
        try:
            if run.probe is not None and run.step == 0:  # the random-init level
                run.writer.write({"step": 0, "epoch": 0, **probe_record(run)})
            run.state.model.train()
            run.tick = time.perf_counter()
            for images in batches(run):
                view_a, view_b = run.augment(images, generator=run.generator)
                result = train_step(run.state, view_a, view_b)
                run.losses.append(result.terms["loss"])
                record(run, result)
                bar.set_postfix(loss=f"{result.terms['loss']:.3f}", refresh=False)
                bar.update(1)
                step, cfg = run.step, config.train
                if step % cfg.ckpt_every == 0 or step == run.stop_at:
                    save_checkpoint(run)
                run.tick = time.perf_counter()
            return finish(run)
        finally:
            bar.close()
            run.writer.close()


def train_or_load(config: Config, run_dir: str | Path | None = None, **pretrain_kwargs):
    """The finished run of ``config`` if there is one, otherwise :func:`pretrain` it (resuming
    from the folder's checkpoints, or continuing a shorter finished run).

    ``pretrain_kwargs`` (``dataset``, ``augment``, ``model``, ``probe``) are only used when training
    happens. Concurrent callers wait for each other (see the module docstring). Meant for
    single-process use; under ``torchrun`` call ``pretrain`` on every rank instead.
    """
    folder = Path(run_dir) if run_dir is not None else run_dir_for(config)
    found = finished_run(config, folder)
    if found is not None:
        return load_run(found, config)
    with RunLock(folder, wait=True):
        # Another process (a second notebook, a parallel test) may have finished it meanwhile.
        found = finished_run(config, folder)
        if found is not None:
            return load_run(found, config)
        return pretrain(config, run_dir=folder, **pretrain_kwargs)


class _no_lock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


__all__ = ["NonFiniteLossError", "Run", "RunResult", "batches", "default_augment", "finish",
           "pretrain", "probe_record", "record", "resume", "rng_state", "run_dir_for",
           "save_checkpoint", "seed_everything", "set_rng_state", "setup", "train_or_load"]
