"""Run folders: where a run lives, who may write it, when it is finished, and ``train_or_load``.

A run folder is ``<train.out_dir>/<train.run_name>``, by default ``<train.out_dir>/<preset>-<hash>``
with the first 10 hex digits of :func:`~mlvicx_core.config.config_hash` (``train.max_steps`` is not
part of it: asking for more steps continues the same run). It holds ``config.yaml``,
``metrics.jsonl``, ``checkpoints/``, ``trunk.pt`` and, once the run reached the steps it was asked
for, ``done.json`` (content hash, steps reached, steps the schedule spans).

One process writes a folder at a time: :class:`RunLock` (an ``flock`` on ``<folder>/.lock``) is held
by :func:`~mlvicx_core.train.trainer.pretrain` for the whole run. A second ``pretrain`` on the same
folder stops at once with an error naming the holder; :func:`train_or_load` waits for the holder
and then loads what it finished (two notebooks asking for the same run train it once).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

try:  # POSIX; elsewhere one run folder is not protected against a second process
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

from ..checkpoints import CheckpointManager, load_model
from ..config import Config, ConfigError, config_hash


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
    from .trainer import RunResult

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
    from .trainer import pretrain

    found = finished_run(config, folder, fingerprint)
    if found is not None:
        return load_run(found, config)
    with RunLock(folder, wait=True):
        # Another process (a second notebook, a parallel test) may have finished it meanwhile.
        found = finished_run(config, folder, fingerprint)
        if found is not None:
            return load_run(found, config)
        return pretrain(config, run_dir=folder, on_code_change="refuse", **pretrain_kwargs)
