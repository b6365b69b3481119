"""hf_critical.experiments: what the recipes, the study and the benchmarks need beyond the core (the core never imports it)."""
