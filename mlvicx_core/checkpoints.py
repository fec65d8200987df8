"""Checkpoint files: atomic writes, the last ``k`` kept, strict loading, the trunk export.

Two kinds of file, both ``torch.save``'d dicts:

- a *training checkpoint* (``runs/<run>/checkpoints/step-00000123.pt``, written by
  ``mlvicx_core.train``): ``{"step", "epoch", "model", "optimizer", "scheduler", "rng",
  "augment_rng", "config", "config_hash"}`` where ``config`` is the full :class:`~mlvicx_core.config.Config`
  as a dict;
- a *model file* (:func:`save_model`): ``{"model", "config": {"model": {...}}}``.

:func:`load_model` reads either and is the one place the kit turns a file into a network: strict (a
missing or unexpected weight, an unknown model option or a shape mismatch is an error naming the
file), never a silent fall back to random weights (METHOD.md section 6 lists that trap).

Atomicity: a file is written to a temporary name in the same folder (``.<name>.tmp<pid>``), flushed
and ``fsync``-ed, then ``os.replace``-d over the final name. A crash mid-write leaves only the
temporary file and the previous checkpoints untouched; temporary files of processes that are no
longer alive are removed *before* the next write (so a full disk is not filled twice), those of a
live process are left alone.

Training checkpoints hold NumPy RNG state, so they are loaded with ``weights_only=False``: load only
files you (or this kit) wrote. The exported trunk (:func:`export_trunk`) is plain tensors and loads
with ``weights_only=True``.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

_NAME = re.compile(r"^step-(\d{8})\.pt$")
_TMP = re.compile(r"^\..+\.tmp(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the network (the message names the file)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete ``.<name>.tmp<pid>`` files in ``directory`` whose writer process is gone."""
    removed = []
    folder = Path(directory)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class _Recorder:
    """The file object ``torch.save`` writes to, remembering the ``OSError`` of a failed write:
    torch turns it into ``RuntimeError("[enforce fail at inline_container.cc] ... unexpected pos")``
    and the errno (a full disk, a quota, a file-size limit) would be lost."""

    def __init__(self, f) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._f.flush()


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` via a temporary file + fsync + ``os.replace``.

    A failed write (disk full, quota, permissions) removes its temporary file and raises an
    ``OSError`` that names ``path``, with the errno of the failed write where the system gave one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    recorder = None
    try:
        with open(tmp, "wb") as f:
            recorder = _Recorder(f)
            torch.save(obj, recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        cause = recorder.error if recorder is not None and recorder.error is not None else err
        if isinstance(cause, OSError) and cause.errno is not None:
            raise OSError(cause.errno, f"could not write {path}: {os.strerror(cause.errno)}"
                          ) from err
        if isinstance(err, RuntimeError):  # torch's own writer failed ("enforce fail ...")
            full = "No space left" in str(err)
            detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise OSError(errno.ENOSPC if full else errno.EIO,
                          f"could not write {path}: "
                          f"{os.strerror(errno.ENOSPC) if full else detail}") from err
        raise
    # Persist the rename itself (the directory entry); not supported on every platform.
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a file written by this kit; unreadable files raise :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated zip, garbage bytes, pickle errors, EOF
        detail = str(err).splitlines()[0][:120] if str(err) else "no detail"
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                              f"{detail}); it may be truncated or corrupt") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(state).__name__}")
    return state


class CheckpointManager:
    """``step-XXXXXXXX.pt`` files in ``directory``; :meth:`save` keeps the newest ``keep_last``."""

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"train.keep_last={keep_last}: expected at least 1")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary files are ignored)."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _NAME.match(p.name)]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))

    def latest(self) -> Path | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def load_latest(self, map_location: str | torch.device = "cpu"
                    ) -> tuple[Path, dict] | tuple[None, None]:
        """The newest checkpoint that loads, with a warning naming every unreadable newer one.

        Returns ``(None, None)`` when there is none; raises :class:`CheckpointError` when
        checkpoints exist but none of them can be read.
        """
        bad: list[str] = []
        for path in reversed(self.checkpoints()):
            try:
                state = load_checkpoint(path, map_location)
            except CheckpointError as err:
                bad.append(str(err))
                continue
            if bad:
                warnings.warn("; ".join(bad) + f"; falling back to {path}", stacklevel=2)
            return path, state
        if bad:
            raise CheckpointError("no readable checkpoint in "
                                  f"{self.directory}: " + "; ".join(bad))
        return None, None

    def save(self, state: dict[str, Any]) -> Path:
        path = atomic_save(state, self.directory / f"step-{int(state['step']):08d}.pt")
        for old in self.checkpoints()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path


# -- networks -----------------------------------------------------------------------------------
def save_model(model: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model`` (an MLVICX) as a model file :func:`load_model` reads."""
    model = unwrap(model)
    return atomic_save({"model": model.state_dict(), "config": {"model": model.config.to_dict()},
                        **extra}, path)


def model_config_from(state: dict, source: str):
    """The :class:`~mlvicx_core.config.ModelConfig` stored in a checkpoint or model file."""
    from .config import ConfigError, ModelConfig

    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{source}: expected a 'config' entry with a 'model' section; found "
                              f"keys {sorted(state)}")
    fields = dict(config["model"])
    valid = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise CheckpointError(f"{source}: unknown model option(s) {unknown} (written by another "
                              f"version of the kit?); valid options: {sorted(valid)}")
    fields["pretrained"] = None  # never download ImageNet weights: they are overwritten anyway
    try:
        return ModelConfig(**fields)
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from None


def load_weights(model: nn.Module, weights: dict, source: str) -> nn.Module:
    """``model.load_state_dict(weights)``, strictly, with an error naming ``source`` and the keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: file {tuple(weights[k].shape)} vs network {tuple(own[k].shape)}"
              for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(keys):
            return f"{keys[:5]}{' ...' if len(keys) > 5 else ''}"
        raise CheckpointError(f"{source}: weights do not match the configured network (missing "
                              f"{few(missing)}, unexpected {few(unexpected)}, shape mismatches "
                              f"{few(shapes)})")
    model.load_state_dict(weights)
    return model


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               state: dict | None = None):
    """Rebuild the MLVICX network stored in ``path`` (training checkpoint or model file), in eval
    mode; every problem is a :class:`CheckpointError` (or ``FileNotFoundError``) naming the file.
    ``state``: the file's contents when the caller has read them already."""
    from .model import MLVICX

    state = state if state is not None else load_checkpoint(path, map_location)
    if "model" not in state:
        raise CheckpointError(f"{path}: expected a 'model' entry; found keys {sorted(state)}")
    model = MLVICX(model_config_from(state, str(path)))
    return load_weights(model, state["model"], str(path)).eval()


def export_trunk(model: nn.Module, path: str | os.PathLike, with_gates: bool = False) -> Path:
    """Save the trunk as a plain torchvision ResNet state dict (``model.trunk_state_dict``).

    ``torchvision.models.resnet18().load_state_dict(torch.load(path), strict=False)`` then reports only
    ``fc.weight`` and ``fc.bias`` missing. ``with_gates=True`` adds the context-bottleneck weights under
    ``gates.<level>.*``; a plain ResNet reports those as unexpected keys and ignores them, so the plain
    trunk (the default, as the released code transfers) is what downstream ResNet code should load.
    """
    return atomic_save(unwrap(model).trunk_state_dict(with_gates=with_gates), path)
