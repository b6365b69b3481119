"""The vocabulary of hf_critical, importing nothing heavy: names every component agrees on.

Metric and mode names, the log keys of each metric, the files a run writes, the keys of the
Trainer state entries, and the reserved keys an augmentation collator adds to a batch. Every module
reads them from here, so a name is spelled once; this module imports only the standard library
(`hf_critical.detectors` imports no torch or transformers through it).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AFTER_SWITCH_MODES",
    "DEFAULT_AFTER_SWITCH",
    "AUGMENT_MODES",
    "AUGMENT_ON_DEVICE_KEY",
    "COPY_INDEX_KEY",
    "CURRENT_COPIES_FIELD",
    "CURRENT_COPIES_LOG_KEY",
    "LEGACY_CURRENT_COPIES_FIELD",
    "DYNAMICS_FILE",
    "DYNAMICS_STATE_KEY",
    "GRAD_SNAPSHOT_FILE",
    "INITIAL_WEIGHTS_FILE",
    "INITIAL_WEIGHTS_STORAGE",
    "METRIC_LOG_KEYS",
    "METRIC_NAMES",
    "RESERVED_KEYS",
    "RUN_STATE_KEY",
    "ROWS_PER_SAMPLE_KEY",
    "SEED_KEY",
    "SINGLE_KEY",
    "SWITCH_STATE_KEY",
    "normalize_metric_names",
]

#: The metrics hf_critical can compute, by the name used in arguments, logs and files.
METRIC_NAMES = ("gradient_confusion", "gradient_predictability", "layer_rotation")

#: How k copies are made: "batch" (B*k rows per step, the default) or "repeat" (k passes per epoch).
AUGMENT_MODES = ("batch", "repeat")

#: Key a training row gets in augment_mode="repeat": which of the k passes of its epoch it belongs to.
#: The augmentation collators fold it into the batch's seed (the k copies of a sample differ) and drop it.
COPY_INDEX_KEY = "hf_critical_copy"

#: What a sample becomes after the switch (k = 1): the clean sample, or one augmented copy.
AFTER_SWITCH_MODES = ("clean", "augmented")
#: The collators' default (the oracle sweeps behind it: docs/results.md, "The default after the switch").
DEFAULT_AFTER_SWITCH = "augmented"

#: Where layer rotation keeps the initial weights.
INITIAL_WEIGHTS_STORAGE = ("disk", "host", "device")

#: Log key of the copies of each sample training sees at this step (k before the switch, 1 after).
CURRENT_COPIES_LOG_KEY = "augment/current_copies"
#: The same, in every dynamics.jsonl record (written as ``augment_copies`` before 0.2: read both).
CURRENT_COPIES_FIELD = "current_copies"
LEGACY_CURRENT_COPIES_FIELD = "augment_copies"

#: Per metric: (field of its `MetricResult` record, key of the global value in the training logs).
#: The switch callback feeds a detector these values without the ``dynamics/`` prefix.
METRIC_LOG_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "gradient_confusion": (("value", "dynamics/gradient_confusion"), ("min", "dynamics/gradient_confusion_min")),
    "gradient_predictability": (("value", "dynamics/gradient_predictability"),),
    "layer_rotation": (("value", "dynamics/layer_rotation"), ("weighted_mean", "dynamics/layer_rotation_weighted")),
}

# ---- files a run writes in output_dir (and checkpoints) -----------------------------------------

#: One JSON record per measurement, with the per-layer values.
DYNAMICS_FILE = "dynamics.jsonl"
#: The weights at the start of training, for layer rotation (linked into every checkpoint).
INITIAL_WEIGHTS_FILE = "critical_period_initial_weights.safetensors"
#: The gradient kept for the next measurement's predictability, when a checkpoint falls between the two.
GRAD_SNAPSHOT_FILE = "critical_period_grad_snapshot.safetensors"

# ---- entries in TrainerState.stateful_callbacks (inside trainer_state.json) ----------------------

DYNAMICS_STATE_KEY = "hf_critical.DynamicsCallback"
SWITCH_STATE_KEY = "hf_critical.CriticalPeriodCallback"
#: The state the trainer and the callbacks share (`hf_critical.state.RunState`).
RUN_STATE_KEY = "hf_critical.RunState"

# ---- reserved keys an hf_critical augmentation collator adds to a batch (the trainer removes them) --

#: Rows each sample occupies in this batch (k, or 1 after the switch).
ROWS_PER_SAMPLE_KEY = "hf_critical_rows_per_sample"
#: The batch's one-row-per-sample view, for a batch collated before the switch and trained after it.
SINGLE_KEY = "hf_critical_single"
#: Images to be augmented on the training device, in `training_step`.
AUGMENT_ON_DEVICE_KEY = "hf_critical_augment_on_device"
#: The batch's augmentation seed.
SEED_KEY = "hf_critical_seed"
RESERVED_KEYS = (ROWS_PER_SAMPLE_KEY, SINGLE_KEY, AUGMENT_ON_DEVICE_KEY, SEED_KEY)


def normalize_metric_names(metrics: str | Iterable[str] | None, field_name: str = "dynamics_metrics") -> list[str]:
    """Turn ``"a,b"``, ``["a", "b"]`` or ``"all"`` into a checked list of metric names."""
    if metrics is None:
        return []
    if isinstance(metrics, str):
        items = [m.strip() for m in metrics.split(",")]
    else:
        items = []
        for m in metrics:
            if not isinstance(m, str):
                raise ValueError(f"`{field_name}` must hold metric names (strings), got {m!r}")
            items.extend(part.strip() for part in m.split(","))
    items = [m for m in items if m]
    if items in (["all"], ["ALL"]):
        return list(METRIC_NAMES)
    if items in (["none"], ["NONE"]):
        return []
    unknown = [m for m in items if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"`{field_name}` has unknown metric(s) {unknown}; allowed: {list(METRIC_NAMES)}, 'all' or 'none'")
    return list(dict.fromkeys(items))
