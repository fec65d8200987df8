"""Checkpoints: atomic writes, the last ``k`` kept, every RNG state, and the trunk export.

A checkpoint (``step-00000123.pt``) is a dict::

    {"step", "epoch", "model", "optimizer", "scheduler", "rng", "augment_rng", "config", "config_hash"}

``model`` is the unwrapped module's state dict (no ``module.`` prefix from DDP, no ``_orig_mod.`` from
``torch.compile``). ``rng`` holds the Python, NumPy, torch CPU and every CUDA generator, so resuming on
CPU replays the uninterrupted run bit for bit.

Atomicity: the file is written to a temporary name in the same folder, flushed and ``fsync``-ed, then
``os.replace``-d over the final name (atomic on POSIX and Windows). A crash mid-write leaves only the
temporary file (removed on the next save) and the previous checkpoints untouched.

Checkpoints hold NumPy RNG state, so they are loaded with ``weights_only=False``: load only files you
(or this kit) wrote. The exported trunk (:func:`export_trunk`) is plain tensors and loads with
``weights_only=True``.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (if present) all CUDA generator states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
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


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` via a temporary file + fsync + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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

    def save(self, state: dict[str, Any]) -> Path:
        path = atomic_save(state, self.directory / f"step-{int(state['step']):08d}.pt")
        for old in self.checkpoints()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        for stale in self.directory.glob(".step-*.pt.tmp*"):  # left by an earlier crash
            stale.unlink(missing_ok=True)
        return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by this kit (see the module note on ``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=False)


def export_trunk(model: nn.Module, path: str | os.PathLike, with_gates: bool = False) -> Path:
    """Save the trunk as a plain torchvision ResNet state dict (``model.trunk_state_dict``).

    ``torchvision.models.resnet18().load_state_dict(torch.load(path), strict=False)`` then reports only
    ``fc.weight`` and ``fc.bias`` missing. ``with_gates=True`` adds the context-bottleneck weights under
    ``gates.<level>.*``; a plain ResNet reports those as unexpected keys and ignores them, so the plain
    trunk (the default, as the released code transfers) is what downstream ResNet code should load.
    """
    return atomic_save(unwrap(model).trunk_state_dict(with_gates=with_gates), path)
