"""``train_or_load``: reuse a finished run with the same configuration, so notebooks run in any order.

A run folder (``mlvicx_core.train.trainer.run_dir_for``: ``<out_dir>/<preset>-<hash[:10]>`` unless
``train.run_name`` is set) is *finished* when it holds ``done.json`` with the same content hash
(``mlvicx_core.train.runconfig.config_hash``). Then the model is rebuilt from its last checkpoint and
nothing is trained. Otherwise training starts, or resumes from the folder's last checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

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
    """
    found = finished_run(config, run_dir)
    if found is not None:
        return load_run(found, config)
    return pretrain(config, run_dir=run_dir, **pretrain_kwargs)
