"""Pretraining engine: optimisation, the loop, run folders, logs, the online probe and multi-GPU.

Modules: ``optim`` (LARS, schedule), ``step`` (one optimizer step: ``train_step``), ``trainer`` (the
loop: set up, resume, step, record; ``train_or_load``), ``runs`` (run folders, the lock),
``online_probe`` (read-outs of the frozen trunk during training), ``diagnostics`` (collapse
measures), ``metrics_log`` (the run's metrics.jsonl + TensorBoard), ``distributed`` (torchrun/DDP). The configuration is
``mlvicx_core.config``; checkpoint files are ``mlvicx_core.checkpoints``.
"""
from .diagnostics import embedding_diagnostics
from .metrics_log import read_metrics
from .online_probe import OnlineProbe
from .optim import LARS, WarmupCosine, build_optimizer, build_scheduler, param_groups, peak_lr
from .runs import RunBusyError, RunResult, finished_run, load_run, run_dir_for
from .step import NonFiniteLossError, StepState, build_step, train_step
from .trainer import pretrain, setup, train_or_load

__all__ = [
    "LARS", "NonFiniteLossError", "OnlineProbe", "RunBusyError", "RunResult", "StepState",
    "WarmupCosine", "build_optimizer", "build_scheduler", "build_step", "embedding_diagnostics",
    "finished_run", "load_run", "param_groups", "peak_lr", "pretrain", "read_metrics",
    "run_dir_for", "setup", "train_or_load", "train_step",
]
