"""Experiments built from the kit's engine and evaluation pipeline.

- ``sweeps``: the set-up the notebooks share (their parameters -> configs, evaluation data, papermill
  sweeps and their tables); its public functions are re-exported here, so notebooks write
  ``from mlvicx_core.experiments import pretrain_config``.
- ``results`` (the results experiment, ``mlvicx results``) and ``results_report`` (``RESULTS.md`` and
  figures from its CSVs).
- ``collapse_toy``: collapse in miniature (a toy encoder with and without the variance term).
"""
from .sweeps import (check_dataset, collect_results, diagnostics_table, eval_config, eval_splits,
                     held_out, label_fraction_table, point_folder, pretrain_config, run_sweep, sweep_grid)

__all__ = [
    "check_dataset", "collect_results", "diagnostics_table", "eval_config", "eval_splits",
    "held_out", "label_fraction_table", "point_folder", "pretrain_config", "run_sweep", "sweep_grid",
]
