"""Pretraining engine: configuration, optimisation, the loop, checkpoints, logs and multi-GPU.

Modules: ``runconfig`` (TrainConfig, presets, overrides, content hash), ``optim`` (LARS, schedule),
``trainer`` (the loop), ``checkpoint`` (atomic save, resume, trunk export), ``diagnostics`` (collapse
measures), ``metrics`` (JSONL + TensorBoard), ``distributed`` (torchrun/DDP), ``pipeline`` (datasets and
the two-view augmenter), ``runs`` (train_or_load), ``figures`` (the training-curve figure).
"""
from .checkpoint import CheckpointManager, export_trunk, load_checkpoint
from .diagnostics import embedding_diagnostics
from .metrics import read_metrics
from .optim import LARS, WarmupCosine, build_optimizer, build_scheduler, param_groups, peak_lr
from .runconfig import ConfigError, TrainConfig, apply_overrides, config_hash, load_config
from .runs import train_or_load
from .trainer import NonFiniteLossError, RunResult, pretrain

__all__ = [
    "LARS", "CheckpointManager", "ConfigError", "NonFiniteLossError", "RunResult", "TrainConfig",
    "WarmupCosine", "apply_overrides", "build_optimizer", "build_scheduler", "config_hash",
    "embedding_diagnostics", "export_trunk", "load_checkpoint", "load_config", "param_groups",
    "peak_lr", "pretrain", "read_metrics", "train_or_load",
]
