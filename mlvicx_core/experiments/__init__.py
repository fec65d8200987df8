"""Experiments built from the kit's engine and evaluation package.

- ``sweeps``: the set-up the notebooks share (one pretraining recipe per variant, the evaluation
  data, papermill sweeps and their tables); its public functions are re-exported here, so notebooks
  write ``from mlvicx_core.experiments import pretrain_config``.
- ``results`` (the results experiment: methods, budget, pretraining and read-outs), ``results_data``
  (its three datasets in memory), ``results_report`` (``RESULTS.md`` and figures from the CSVs). The
  command line is ``python -m mlvicx_core.results_experiment``.
"""
from .sweeps import (DATASETS, VARIANTS, check_dataset, collect_results, diagnostics_table,
                     eval_dataset, label_fraction_table, point_folder, pretrain_config, run_sweep,
                     sweep_grid)

__all__ = [
    "DATASETS", "VARIANTS", "check_dataset", "collect_results", "diagnostics_table",
    "eval_dataset", "label_fraction_table", "point_folder", "pretrain_config", "run_sweep",
    "sweep_grid",
]
