"""Experiments built from the kit's engine and evaluation package.

``results`` (the experiment: methods, budget, pretraining and read-outs), ``results_data`` (its
three datasets in memory), ``results_report`` (``RESULTS.md`` and figures from the CSVs). The command
line is ``python -m mlvicx_core.results_experiment``.
"""
