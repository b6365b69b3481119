"""`CriticalPeriodArguments`: `TrainingArguments` plus the settings of hf_critical."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .layers import LAYER_SELECTIONS, validate_layer_selection

__all__ = ["METRIC_NAMES", "DEFAULT_EVERY_N_STEPS", "CriticalPeriodArguments", "normalize_metric_names"]

#: The metrics hf_critical can compute, by the name used in arguments, logs and files.
METRIC_NAMES = ("gradient_confusion", "gradient_predictability", "layer_rotation")

#: Measure every 10 optimizer steps by default: overhead at or under 2 % on the benchmarked models
#: (docs/benchmarks.md) while a 3-epoch fine-tuning of a few hundred steps still gets dozens of points.
DEFAULT_EVERY_N_STEPS = 10


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


def validate_every_n_steps(value: object, field_name: str = "dynamics_every_n_steps") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{field_name}` must be an integer >= 1 (measure every N optimizer steps), got {value!r}")
    return value


@dataclass
class CriticalPeriodArguments(TrainingArguments):
    """`transformers.TrainingArguments` plus the settings of the training-dynamics measurement.

    Usable wherever `TrainingArguments` is, including `HfArgumentParser`.
    """

    dynamics_metrics: list[str] = field(
        default_factory=lambda: list(METRIC_NAMES),
        metadata={
            "help": f"Training-dynamics metrics to compute: any of {list(METRIC_NAMES)}, 'all' or 'none'.",
        },
    )
    dynamics_every_n_steps: int = field(
        default=DEFAULT_EVERY_N_STEPS,
        metadata={"help": "Measure the metrics every N optimizer steps."},
    )
    dynamics_layers: str = field(
        default="weights",
        metadata={
            "help": f"Parameters to measure: one of {list(LAYER_SELECTIONS)} ('weights' = weight matrices of "
            "Linear/Conv/Embedding layers, biases and norms excluded) or a regular expression over parameter names."
        },
    )

    dynamics_offload_initial_weights: bool = field(
        default=False,
        metadata={
            "help": "Keep the initial weights used by layer_rotation in host memory instead of on the training "
            "device: saves one copy of the measured weights in accelerator memory, costs a host-to-device copy "
            "per measurement."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.dynamics_metrics = normalize_metric_names(self.dynamics_metrics)
        validate_every_n_steps(self.dynamics_every_n_steps)
        validate_layer_selection(self.dynamics_layers)
        if not isinstance(self.dynamics_offload_initial_weights, bool):
            raise ValueError(
                f"`dynamics_offload_initial_weights` must be True or False, got {self.dynamics_offload_initial_weights!r}"
            )
