"""``train_or_load``: reuse a finished run with the same configuration, so notebooks run in any order.

A run folder (``mlvicx_core.train.trainer.run_dir_for``: ``<out_dir>/<preset>-<hash[:10]>`` unless
``train.run_name`` is set) is *finished* when it holds ``done.json`` with the same content hash
(``mlvicx_core.train.runconfig.config_hash``). Then the model is rebuilt from its last checkpoint and
nothing is trained. Otherwise training starts, or resumes from the folder's last checkpoint.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

try:  # POSIX; elsewhere concurrent train_or_load calls on one run folder are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

from ..model import MLVICX
from .checkpoint import CheckpointManager, load_checkpoint
from .runconfig import TrainConfig, config_hash
from .trainer import RunResult, pretrain, run_dir_for


def finished_run(config: TrainConfig, run_dir: str | Path | None = None) -> Path | None:
    """The run folder if it holds a finished run of exactly this configuration, else ``None``."""
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)
    done = run_dir / "done.json"
    if not done.is_file():
        return None
    return run_dir if json.loads(done.read_text())["config_hash"] == config_hash(config) else None


def load_run(run_dir: str | Path, config: TrainConfig, device: str = "cpu") -> RunResult:
    """Rebuild the model of a finished run from its last checkpoint (in eval mode)."""
    run_dir = Path(run_dir)
    ckpt = CheckpointManager(run_dir / "checkpoints").latest()
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (expected checkpoints/step-*.pt)")
    state = load_checkpoint(ckpt, map_location="cpu")
    model = MLVICX(config.model)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    trunk = run_dir / "trunk.pt"
    return RunResult(run_dir=run_dir, model=model, step=int(state["step"]), checkpoint=ckpt,
                     metrics=run_dir / "metrics.jsonl", trunk=trunk if trunk.is_file() else None)


def train_or_load(config: TrainConfig, run_dir: str | Path | None = None, **pretrain_kwargs
                  ) -> RunResult:
    """Return the finished run of ``config`` if there is one, otherwise :func:`pretrain` it.

    ``pretrain_kwargs`` (``dataset``, ``augment``, ``model``) are only used when training happens.
    Concurrent callers (two notebooks, parallel tests) are serialised by a lock file in the run
    folder: one trains, the other then loads. Meant for single-process use; under ``torchrun`` call
    :func:`~mlvicx_core.train.trainer.pretrain` on every rank instead.
    """
    found = finished_run(config, run_dir)
    if found is not None:
        return load_run(found, config)
    folder = Path(run_dir) if run_dir is not None else run_dir_for(config)
    with _run_lock(folder):
        # Another process (a second notebook, a parallel test) may have finished it meanwhile.
        found = finished_run(config, folder)
        if found is not None:
            return load_run(found, config)
        return pretrain(config, run_dir=run_dir, **pretrain_kwargs)


@contextlib.contextmanager
def _run_lock(folder: Path):
    """Hold an exclusive lock on ``folder/.lock`` so one run folder is trained by one process."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)
