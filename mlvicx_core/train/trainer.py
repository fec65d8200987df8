"""The pretraining loop, in four readable pieces: set up, resume, step, record.

    run = setup(config)                      # data, model, optimizer, schedule, run folder
    resume(run)                              # newest readable checkpoint, if any
    for images in batches(run):              # the sampler restarts part-way after a resume
        view_a, view_b = run.augment(images, generator=run.generator)
        result = train_step(run.state, view_a, view_b)        # mlvicx_core.train.step
        record(run, result)                  # metrics.jsonl / TensorBoard, diagnostics, probe
        checkpoint when due
    finish(run)                              # last checkpoint, trunk.pt, done.json

:func:`pretrain` is exactly that, plus the run-folder lock (``mlvicx_core.train.runs``) and the
interruption rule: while it runs, SIGTERM and SIGINT (Ctrl-C, a notebook's interrupt) do not stop
the process where it is; the current step is finished, checkpointed (atomically, like every
checkpoint) and :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised, saying which step
was saved where; ``mlvicx`` prints that one line and exits 128 + the signal (143 for SIGTERM, 130
for SIGINT). A second signal acts as it would without the kit (a second Ctrl-C stops at once; the
checkpoints already written stay intact). The previous handlers are restored when ``pretrain``
returns. Under ``torchrun`` the ranks agree after every step (one all-reduce of the signal) so that
all of them stop after the same step, and rank 0 writes the checkpoint.
:func:`train_or_load` returns the finished run of a configuration trained by this code, or
pretrains it.

Exact resume: the checkpoint holds model, optimizer, scheduler, every RNG, the augmentation generator
and the step; the sampler's permutation depends only on (seed, epoch) and restarts part-way, so on CPU
``N steps + resume + N steps`` equals ``2N`` uninterrupted steps bit for bit (tested). This needs a
dataset whose ``dataset[i]`` depends only on ``i`` (true for every dataset of the registry).
"""
from __future__ import annotations

import json
import random
import signal
import threading
import time
import warnings
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
from .fingerprint import provenance
from .runs import (CodeChangedError, RunLock, RunResult, finished_run, load_run, requested_steps,
                   run_dir_for)
from .step import (NonFiniteLossError, StepResult, StepState, build_step, check_parameters,
                   device_choices, train_step)


class TrainingInterrupted(KeyboardInterrupt):
    """:func:`pretrain` stopped by SIGTERM or SIGINT after finishing and checkpointing a step.

    ``signum``, ``step`` (the last step taken and saved), ``checkpoint`` (its file, None on ranks
    other than 0 or when the signal came before any step of this call); ``exit_status`` is the
    shell's convention, 128 + the signal number."""

    def __init__(self, signum: int, step: int, stop_at: int, checkpoint: Path | None,
                 saved: bool) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        if saved:
            what = f"after step {step} of {stop_at}; checkpoint written: {checkpoint}"
        else:
            what = (f"at step {step} of {stop_at}, before any new step (nothing new to save; last "
                    f"checkpoint: {checkpoint or 'none'})")
        super().__init__(f"interrupted by {name} {what}. The same command (or the same "
                         "pretrain / train_or_load call) resumes from it")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopSignals:
    """While entered (in the main thread only: Python handles signals there), the first SIGTERM or
    SIGINT is recorded in :attr:`signum` instead of stopping the process; the previous handlers
    come back with that first signal (so a second one acts as it would without the kit) and on
    exit. A signal the process ignores (``SIG_IGN``, e.g. SIGINT of a background job) stays
    ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:  # noqa: PYI034 (a final class; Self needs 3.11)
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous is signal.SIG_IGN or previous is None:
                    continue
                self._previous[sig] = previous
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM and SIGINT to the main process, which finishes the step and
    checkpoints it: a worker killed by a signal sent to the whole process group (Ctrl-C in a
    terminal, a job scheduler) would otherwise make the main process fail with "DataLoader worker
    ... killed by signal" wherever it is. A worker still exits when the main process dies."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
    #: this code: ``kit_version``, ``code_fingerprint``, ``torch_version`` (:mod:`.fingerprint`)
    code: dict[str, str] = field(default_factory=dict)
    #: fingerprints of the code that took this run's steps before this call, oldest first
    code_history: list[str] = field(default_factory=list)

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
                        pin_memory=choices.pin_memory, persistent_workers=False,
                        worker_init_fn=_ignore_stop_signals if config.data.num_workers else None,
                        # each epoch's iterator draws its workers' base seed from this generator,
                        # not from the global torch RNG the checkpoint holds: a run resumed
                        # part-way through an epoch starts one more iterator than the run it
                        # continues, and would otherwise save a different global RNG state
                        generator=torch.Generator().manual_seed(cfg.seed))
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
               probe=probe or None, code=provenance(config.data.dataset))


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


def _check_resume_code(run: Run, saved: dict, path: Path, on_code_change: str) -> None:
    """Whether the checkpoint was written by this code (:mod:`.fingerprint`); ``on_code_change``:
    ``"warn"`` resumes anyway with a warning naming both fingerprints (``mlvicx pretrain``, whose
    run folder the user chose), ``"refuse"`` raises :class:`CodeChangedError` (``train_or_load``
    then trains afresh in another folder)."""
    history = list(saved.get("code_fingerprints") or [])
    run.code_history = history or ["unknown"]
    current = run.code["code_fingerprint"]
    if history == [current]:
        return
    err = CodeChangedError(run.run_dir, path, history, saved.get("kit_version"), current,
                           run.code["kit_version"])
    if on_code_change == "refuse":
        raise err
    if run.env.is_main:
        warnings.warn(f"{err}: resuming anyway, so this run mixes both (another train.run_name "
                      "trains it afresh)", stacklevel=3)


def resume(run: Run, on_code_change: str = "warn") -> bool:
    """Load the newest readable checkpoint of the run folder into ``run``; False if there is none.
    ``on_code_change``: see :func:`_check_resume_code`."""
    path, saved = run.checkpoints.load_latest()
    if path is None:
        return False
    _check_resume_config(saved, run.config, path)
    _check_resume_code(run, saved, path, on_code_change)
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
    run.generator.set_state(_own_augment_state(run, saved, path))
    s.step, s.last_good, run.saved_at, run.resumed_from = step, path, step, path
    return True


def _own_augment_state(run: Run, saved: dict, path: Path) -> torch.Tensor:
    """This rank's augmentation generator state: under torchrun every rank has its own stream and
    the checkpoint holds all of them (``augment_rng_ranks``); a checkpoint of another number of
    processes (or written before the kit kept them) gives every rank rank 0's, with a warning."""
    ranks = saved.get("augment_rng_ranks")
    if ranks is not None and len(ranks) == run.env.world_size:
        return ranks[run.env.rank]
    if run.env.is_distributed and run.env.is_main:
        warnings.warn(f"{path} holds the augmentation stream of {len(ranks or [0])} process(es), "
                      f"this run has {run.env.world_size}: every rank continues rank 0's stream, "
                      "so the resumed run is not the one an uninterrupted run would have been",
                      stacklevel=3)
    return saved["augment_rng"]


def batches(run: Run) -> Iterator[torch.Tensor]:
    """Image batches on the device, from the current step to ``run.stop_at`` (epoch-aware)."""
    while run.step < run.stop_at:
        spe = run.steps_per_epoch
        run.sampler.set_epoch(run.step // spe, start=(run.step % spe) * run.loader.batch_size)
        for batch in run.loader:
            yield batch["image"].to(run.state.device, non_blocking=True)
            if run.step >= run.stop_at:
                return


def code_record(run: Run) -> dict[str, Any]:
    """What a checkpoint and ``done.json`` record about the code: this code's ``kit_version``,
    ``code_fingerprint`` and ``torch_version``, and ``code_fingerprints``, every code that took
    steps of the run (this one included once it took a step)."""
    history = list(run.code_history)
    if run.losses and run.code["code_fingerprint"] not in history:
        history.append(run.code["code_fingerprint"])
    return {**run.code, "code_fingerprints": history}


def save_checkpoint(run: Run) -> Path | None:
    """Checkpoint the current step (rank 0 writes; weights are checked finite first)."""
    s = run.state
    check_parameters(s)
    run.saved_at = s.step
    augment_states = distributed.gather_objects(run.generator.get_state())  # every rank's stream
    if not run.env.is_main:
        return None
    s.last_good = run.checkpoints.save({
        "step": s.step, "epoch": s.step // run.steps_per_epoch, "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
        "rng": rng_state(), "augment_rng": augment_states[0],
        "augment_rng_ranks": augment_states,
        "config": run.config.to_dict(), "config_hash": config_hash(run.config),
        **code_record(run),
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
            "trunk": str(trunk), **code_record(run)}, indent=1))
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
             probe: OnlineProbe | None | bool = True, on_code_change: str = "warn") -> RunResult:
    """Pretrain (or resume, if the run folder holds checkpoints) and return a :class:`RunResult`.

    Arguments as in :func:`setup`; ``on_code_change``: what to do when the checkpoint it resumes
    from was written by other code (:func:`_check_resume_code`). Under ``torchrun`` every process
    calls this; only rank 0 writes.
    """
    if on_code_change not in ("warn", "refuse"):
        raise ValueError(f"on_code_change={on_code_change!r}: expected 'warn' or 'refuse'")
    threads = torch.get_num_threads()  # train.threads acts for this call only
    try:
        with StopSignals() as stops:
            return _pretrain(config, stops, on_code_change, dataset=dataset, augment=augment,
                             model=model, run_dir=run_dir, probe=probe)
    finally:
        torch.set_num_threads(threads)


def _stop_requested(run: Run, stops: StopSignals) -> int:
    """The signal that asks this run to stop (0: none), agreed by every rank."""
    return distributed.agree_max(stops.signum or 0, run.state.device)


def _interrupt(run: Run, signum: int, stepped: bool) -> TrainingInterrupted:
    """Checkpoint the step just finished (if not saved yet) and build the exception to raise."""
    saved = stepped and run.saved_at != run.step
    if saved:
        save_checkpoint(run)
    path = run.state.last_good if run.env.is_main else None
    return TrainingInterrupted(signum, run.step, run.stop_at, path, saved=stepped)


def _pretrain(config: Config, stops: StopSignals, on_code_change: str, **kwargs) -> RunResult:
    from tqdm.auto import tqdm

    run = setup(config, **kwargs)
    lock = RunLock(run.run_dir) if run.env.is_main else _no_lock()
    with lock:
        if resume(run, on_code_change):
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
            if run.step < run.stop_at and (signum := _stop_requested(run, stops)):
                raise _interrupt(run, signum, stepped=False)  # during set-up: nothing new
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
                # a signal after the last step lets the run finish (its checkpoint is written)
                if step < run.stop_at and (signum := _stop_requested(run, stops)):
                    raise _interrupt(run, signum, stepped=True)
                run.tick = time.perf_counter()
            return finish(run)
        finally:
            bar.close()
            run.writer.close()


def fresh_run_dir(folder: str | Path, fingerprint: str) -> Path:
    """Where :func:`train_or_load` trains a configuration whose folder holds other code's run:
    ``<folder>-code<first 8 hex digits of this code's fingerprint>``, next to it."""
    folder = Path(folder)
    return folder.with_name(f"{folder.name}-code{fingerprint[:8]}")


def train_or_load(config: Config, run_dir: str | Path | None = None, **pretrain_kwargs):
    """The finished run of ``config`` if there is one, otherwise :func:`pretrain` it (resuming
    from the folder's checkpoints, or continuing a shorter finished run).

    Only a run trained by this very code is reused or resumed (:mod:`.fingerprint`): when the
    folder holds this configuration trained, finished or not, by other code (another
    ``code_fingerprint``, or none recorded), the run is trained afresh in :func:`fresh_run_dir`
    with one line naming both fingerprints; the old folder is left as it is.

    ``pretrain_kwargs`` (``dataset``, ``augment``, ``model``, ``probe``) are only used when training
    happens. Concurrent callers wait for each other (see the module docstring). Meant for
    single-process use; under ``torchrun`` call ``pretrain`` on every rank instead.
    """
    from .fingerprint import code_fingerprint

    folder = Path(run_dir) if run_dir is not None else run_dir_for(config)
    fingerprint = code_fingerprint(config.data.dataset)
    try:
        return _train_or_load(config, folder, fingerprint, pretrain_kwargs)
    except CodeChangedError as err:
        fresh = fresh_run_dir(folder, fingerprint)
        what = (f"reusing this code's run in {fresh}" if finished_run(config, fresh, fingerprint)
                else f"training afresh in {fresh}")
        print(f"{folder} holds this configuration trained by other code ({err.described}): "
              f"{what} (the old run is kept)", flush=True)
        return _train_or_load(config, fresh, fingerprint, pretrain_kwargs)


def _train_or_load(config: Config, folder: Path, fingerprint: str, pretrain_kwargs: dict):
    found = finished_run(config, folder, fingerprint)
    if found is not None:
        return load_run(found, config)
    with RunLock(folder, wait=True):
        # Another process (a second notebook, a parallel test) may have finished it meanwhile.
        found = finished_run(config, folder, fingerprint)
        if found is not None:
            return load_run(found, config)
        return pretrain(config, run_dir=folder, on_code_change="refuse", **pretrain_kwargs)


class _no_lock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


__all__ = ["NonFiniteLossError", "Run", "RunResult", "StopSignals", "TrainingInterrupted",
           "batches", "default_augment", "finish", "fresh_run_dir", "pretrain", "probe_record",
           "record", "resume", "rng_state", "run_dir_for", "save_checkpoint", "seed_everything",
           "set_rng_state", "setup", "train_or_load"]
