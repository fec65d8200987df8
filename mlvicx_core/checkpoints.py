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


def is_checkpoint_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a training checkpoint (``step-XXXXXXXX.pt``)."""
    return bool(_NAME.match(Path(path).name))


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


#: What a training checkpoint must hold for a run to resume from it (and their types).
TRAINING_KEYS: dict[str, type | tuple[type, ...]] = {
    "step": int, "model": dict, "optimizer": dict, "scheduler": dict, "rng": dict,
    "augment_rng": torch.Tensor, "config": dict}


def _some_keys(state: dict, n: int = 6) -> str:
    keys = [str(k) for k in list(state)[:n]]
    return f"{keys}{' ...' if len(state) > n else ''}"


def check_training_checkpoint(state: dict, path: str | os.PathLike) -> dict:
    """``state`` if it holds every entry of :data:`TRAINING_KEYS` with its type, else a
    :class:`CheckpointError` naming ``path``, what is missing and what the file holds (a trunk
    exported over a checkpoint, a model file, someone else's ``torch.save``)."""
    missing = [k for k in TRAINING_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (missing {missing}; it holds "
                              f"{len(state)} entries: {_some_keys(state)})")
    wrong = [f"{k} is {type(state[k]).__name__}" for k, tp in TRAINING_KEYS.items()
             if not isinstance(state[k], tp) or (tp is int and isinstance(state[k], bool))]
    if wrong:
        raise CheckpointError(f"{path} is not a training checkpoint ({', '.join(wrong)})")
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
        """The newest checkpoint that loads and holds what a training checkpoint holds
        (:func:`check_training_checkpoint`), with a warning naming every newer file that does not.

        Returns ``(None, None)`` when there is none; raises :class:`CheckpointError` when
        checkpoints exist but none of them can be used.
        """
        bad: list[str] = []
        for path in reversed(self.checkpoints()):
            try:
                state = check_training_checkpoint(load_checkpoint(path, map_location), path)
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


#: Blocks per stage and block type (bottleneck: ``conv3`` in every block) of each backbone.
_RESNET_LAYOUTS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
                   ((3, 4, 6, 3), True): "resnet50"}
_STEMS = {7: "imagenet", 3: "cifar"}


def is_trunk(state: dict) -> bool:
    """Whether ``state`` looks like an exported trunk (a plain ResNet state dict, maybe with
    ``gates.*``), as :func:`export_trunk` writes it."""
    return "model" not in state and torch.is_tensor(state.get("conv1.weight")) and any(
        isinstance(k, str) and k.startswith("layer4.") for k in state)


def trunk_model_config(weights: dict, source: str):
    """The :class:`~mlvicx_core.config.ModelConfig` of an exported trunk, read from its tensors:
    the backbone from the blocks per stage (``layer<i>.<j>.*``) and their type (``conv3``: a
    bottleneck), ``model.width`` from ``conv1``'s output channels, ``model.stem`` from its kernel
    (7: imagenet, 3: cifar), ``model.context_bottleneck`` from ``gates.*`` entries. No
    multi-level branch and a one-layer projector: a trunk has no heads, and trunk read-outs use
    none."""
    from .config import ConfigError, ModelConfig

    blocks = []
    for i in range(1, 5):
        idx = {int(k.split(".")[1]) for k in weights
               if isinstance(k, str) and k.startswith(f"layer{i}.") and k.split(".")[1].isdigit()}
        if idx != set(range(len(idx))):
            raise CheckpointError(f"{source}: layer{i} has blocks {sorted(idx)}; expected blocks "
                                  "numbered from 0 without gaps (a torchvision ResNet state dict)")
        blocks.append(len(idx))
    bottleneck = any(isinstance(k, str) and k.startswith("layer1.0.conv3.") for k in weights)
    backbone = _RESNET_LAYOUTS.get((tuple(blocks), bottleneck))
    if backbone is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise CheckpointError(
            f"{source}: a ResNet trunk with {tuple(blocks)} {kind} blocks per stage; expected "
            "resnet18 (2, 2, 2, 2 basic), resnet34 (3, 4, 6, 3 basic) or resnet50 (3, 4, 6, 3 "
            "bottleneck)")
    conv1 = weights["conv1.weight"]
    stem = _STEMS.get(int(conv1.shape[-1]))
    if conv1.ndim != 4 or stem is None:
        raise CheckpointError(f"{source}: conv1.weight has shape {tuple(conv1.shape)}; expected a "
                              "7 x 7 (imagenet stem) or 3 x 3 (cifar stem) convolution")
    gates = any(isinstance(k, str) and k.startswith("gates.") for k in weights)
    try:
        return ModelConfig(backbone=backbone, width=int(conv1.shape[0]), stem=stem,
                           context_bottleneck=gates, multilevel=False, projector=(64,))
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from None


def load_trunk(weights: dict, source: str):
    """An MLVICX whose backbone (and gates, if exported ``--with-gates``) hold an exported trunk's
    weights, loaded strictly; its projector stays at init (trunk read-outs do not use it). The
    network is marked ``trunk_only = True``."""
    from .model import MLVICX

    model = MLVICX(trunk_model_config(weights, source))
    gates = {k[len("gates."):]: v for k, v in weights.items() if k.startswith("gates.")}
    load_weights(model.backbone, {k: v for k, v in weights.items() if not k.startswith("gates.")},
                 source)
    if gates:
        load_weights(model.gates, gates, source)
    model.trunk_only = True
    return model.eval()


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               state: dict | None = None, allow_trunk: bool = False):
    """Rebuild the MLVICX network stored in ``path`` (training checkpoint or model file), in eval
    mode; every problem is a :class:`CheckpointError` (or ``FileNotFoundError``) naming the file.
    ``state``: the file's contents when the caller has read them already. ``allow_trunk``: also
    accept an exported trunk (:func:`load_trunk`; for read-outs of the trunk only)."""
    from .model import MLVICX

    state = state if state is not None else load_checkpoint(path, map_location)
    if allow_trunk and is_trunk(state):
        return load_trunk(state, str(path))
    if "model" not in state:
        what = (" (an exported trunk: it has no heads, so it is not a network file)"
                if is_trunk(state) else "")
        raise CheckpointError(f"{path}: expected a 'model' entry; found keys "
                              f"{_some_keys(state)}{what}")
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
