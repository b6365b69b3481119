"""The vocabulary of hf_critical, importing nothing heavy: metric names and their parsing.

`hf_critical.detectors` and `hf_critical.arguments` both read it, so neither imports the other's
dependencies (the detectors import no torch or transformers).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["AUGMENT_MODES", "COPY_INDEX_KEY", "METRIC_NAMES", "normalize_metric_names"]

#: The metrics hf_critical can compute, by the name used in arguments, logs and files.
METRIC_NAMES = ("gradient_confusion", "gradient_predictability", "layer_rotation")

#: How k copies are made: "batch" (B*k rows per step, the default) or "repeat" (k passes per epoch).
AUGMENT_MODES = ("batch", "repeat")

#: Key a training row gets in augment_mode="repeat": which of the k passes of its epoch it belongs to.
#: The augmentation collators fold it into the batch's seed (the k copies of a sample differ) and drop it.
COPY_INDEX_KEY = "hf_critical_copy"

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
