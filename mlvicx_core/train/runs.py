"""Run folders: where a run lives, who may write it, when it is finished, and what it left behind.

A run folder is ``<train.out_dir>/<train.run_name>``, by default ``<train.out_dir>/<preset>-<hash>``
with the first 10 hex digits of :func:`~mlvicx_core.config.config_hash` (``train.max_steps`` is not
part of it: asking for more steps continues the same run). It holds ``config.yaml``,
``metrics.jsonl``, ``checkpoints/``, ``trunk.pt`` and, once the run reached the steps it was asked
for, ``done.json`` (content hash, steps reached, steps the schedule spans).

One process writes a folder at a time: :class:`RunLock` (an ``flock`` on ``<folder>/.lock``) is held
by :func:`~mlvicx_core.train.trainer.pretrain` for the whole run. A second ``pretrain`` on the same
folder stops at once with an error naming the holder; :func:`~mlvicx_core.train.trainer.train_or_load`
waits for the holder and then loads what it finished (two notebooks asking for the same run train it
once).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

try:  # POSIX; elsewhere one run folder is not protected against a second process
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

from torch import nn

from ..checkpoints import CheckpointManager, load_model
from ..config import Config, ConfigError, config_hash


@dataclass
class RunResult:
    """What a run folder holds for its caller (:func:`~mlvicx_core.train.trainer.pretrain`,
    :func:`load_run`). ``losses``: total loss of every step run in this call (empty when loaded)."""

    run_dir: Path
    model: nn.Module
    step: int
    checkpoint: Path | None
    metrics: Path
    trunk: Path | None
    losses: list[float] = field(default_factory=list)


class RunBusyError(ConfigError):
    """Another process is writing this run folder."""


def _fingerprints(fps: list[str] | None) -> str:
    return (", then ".join(f[:12] for f in fps) if fps
            else "unknown: written before the kit recorded it")


class CodeChangedError(ConfigError):
    """A run folder holds this configuration trained (or partly trained) by other code: its
    ``code_fingerprints`` are not just this code's (:mod:`mlvicx_core.train.fingerprint`)."""

    def __init__(self, run_dir: Path, source: Path, old: list[str] | None, old_kit: str | None,
                 new: str, new_kit: str) -> None:
        self.run_dir, self.source, self.old, self.new = Path(run_dir), Path(source), old, new
        self.described = (f"code fingerprint {_fingerprints(old)}, kit {old_kit or 'unknown'}; "
                          f"this code is {new[:12]}, kit {new_kit}")
        super().__init__(f"{source} was written by other code ({self.described})")


def run_dir_for(config: Config) -> Path:
    """``<train.out_dir>/<train.run_name>`` or ``<train.out_dir>/<preset>-<hash[:10]>``."""
    name = config.train.run_name or f"{config.preset}-{config_hash(config)[:10]}"
    return Path(config.train.out_dir) / name


# (folder, thread) pairs holding the lock: re-entrant within one thread (train_or_load -> pretrain),
# exclusive between threads and processes (flock locks of separate open() calls conflict)
_HELD: dict[tuple[str, int], int] = {}


@contextlib.contextmanager
def RunLock(folder: str | Path, wait: bool = False):
    """Hold ``<folder>/.lock`` exclusively; ``wait=False`` raises :class:`RunBusyError` if another
    process holds it, ``wait=True`` blocks until it is free."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = (str(folder.resolve()), threading.get_ident())
    if key in _HELD or fcntl is None:
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    with open(folder / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            if not wait:
                raise RunBusyError(
                    f"run folder {folder} is in use by another process (pid {holder}); wait for it "
                    "to finish, or use another train.run_name / train.out_dir") from None
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_done(run_dir: str | Path) -> dict | None:
    done = Path(run_dir) / "done.json"
    if not done.is_file():
        return None
    try:
        return json.loads(done.read_text())
    except json.JSONDecodeError:
        return None  # torn by a crash: not finished


def requested_steps(config: Config, total_steps: int) -> int:
    """The step a run of ``config`` stops at, given the steps its schedule spans."""
    m = config.train.max_steps
    return min(total_steps, m) if m else total_steps


def finished_run(config: Config, run_dir: str | Path | None = None,
                 fingerprint: str | None = None) -> Path | None:
    """The run folder if it holds a run of this configuration finished at the requested step.

    Raises :class:`ConfigError` if the folder's run went *further* than ``train.max_steps`` asks
    (a run cannot be rewound), and :class:`CodeChangedError` if ``fingerprint`` (the current
    :func:`~mlvicx_core.train.fingerprint.code_fingerprint`) is given and the run was trained by
    other code.
    """
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)
    done = read_done(run_dir)
    if done is None or done.get("config_hash") != config_hash(config):
        return None
    wanted = requested_steps(config, int(done.get("total_steps", done["step"])))
    if int(done["step"]) > wanted:
        raise ConfigError(f"{run_dir} holds this configuration trained to step {done['step']}; "
                          f"train.max_steps={config.train.max_steps} asks for {wanted}. A run cannot "
                          "be rewound: use another train.run_name for the shorter run")
    if fingerprint is not None and done.get("code_fingerprints") != [fingerprint]:
        from .fingerprint import kit_version

        raise CodeChangedError(run_dir, run_dir / "done.json", done.get("code_fingerprints"),
                               done.get("kit_version"), fingerprint, kit_version())
    return run_dir if int(done["step"]) == wanted else None


def load_run(run_dir: str | Path, config: Config, device: str = "cpu"):
    """Rebuild the model of a finished run from its newest readable checkpoint (in eval mode)."""
    run_dir = Path(run_dir)
    ckpt, state = CheckpointManager(run_dir / "checkpoints").load_latest()
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (expected checkpoints/step-*.pt)")
    model = load_model(ckpt, state=state)
    if model.config != config.model.replace(pretrained=None):  # load_model never downloads
        raise ConfigError(f"{ckpt} holds a network configured differently from model.* of this "
                          "run's configuration")
    model.to(device).eval()
    trunk = run_dir / "trunk.pt"
    return RunResult(run_dir=run_dir, model=model, step=int(state["step"]), checkpoint=ckpt,
                     metrics=run_dir / "metrics.jsonl", trunk=trunk if trunk.is_file() else None)
