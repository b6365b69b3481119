"""Local `evaluate` metric modules (loaded by path with `hf_critical.experiments.evaluation.load_local_metric`, never imported)."""
