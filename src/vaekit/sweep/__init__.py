"""Hyperparameter sweeps with Optuna: ``spec`` (what is searched, checked up front), ``runner`` (the study, trials
as ``vaekit train`` subprocesses, pruning, continuing a killed sweep), ``report`` (tables and the plot)."""
