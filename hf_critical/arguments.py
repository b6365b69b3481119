"""`CriticalPeriodArguments`: `TrainingArguments` plus the settings of hf_critical."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .layers import LAYER_SELECTIONS, validate_layer_selection

__all__ = [
    "METRIC_NAMES",
    "DEFAULT_EVERY_N_STEPS",
    "DETECTOR_NAMES",
    "CriticalPeriodArguments",
    "normalize_metric_names",
]

#: The metrics hf_critical can compute, by the name used in arguments, logs and files.
METRIC_NAMES = ("gradient_confusion", "gradient_predictability", "layer_rotation")

#: Measure every 10 optimizer steps by default: a measurement costs about 0.2 s on MiniLM on 2 CPU cores,
#: about 2 % of the step time amortised over 10 steps (docs/benchmarks.md), while a 3-epoch fine-tuning of
#: a few hundred steps still gets dozens of points.
DEFAULT_EVERY_N_STEPS = 10

#: Detectors selectable by name (see hf_critical.detectors).
DETECTOR_NAMES = ("stability", "fukase_confusion_iqr", "fukase_rotation_angle", "fixed", "never")
AFTER_SWITCH_MODES = ("clean", "augmented")
INITIAL_WEIGHTS_STORAGE = ("disk", "host", "device")


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

    dynamics_initial_weights: str = field(
        default="disk",
        metadata={
            "help": "Where layer_rotation keeps the initial weights: 'disk' (streamed one layer at a time from "
            "output_dir/critical_period_initial_weights.safetensors at each measurement: no extra memory), 'host' "
            "(host memory) or 'device' (the training device: fastest, one more copy of the measured weights there)."
        },
    )

    detector: str = field(
        default="stability",
        metadata={"help": f"When the critical period ends: one of {list(DETECTOR_NAMES)}."},
    )
    detector_metrics: list[str] = field(
        default_factory=lambda: ["layer_rotation"],
        metadata={"help": "Metric(s) the stability detector watches."},
    )
    detector_threshold: float = field(
        default=0.05, metadata={"help": "Stability: relative change between consecutive windows counted as stable."}
    )
    detector_patience: int = field(
        default=2, metadata={"help": "Stability: consecutive stable windows needed to fire."}
    )
    detector_window: str = field(
        default="0.25ep",
        metadata={"help": "Stability: window length, in optimizer steps ('200') or epochs ('0.25ep')."},
    )
    detector_warmup: str = field(
        default="0.5ep", metadata={"help": "Stability: no decision before this many steps ('100') or epochs ('0.5ep')."}
    )
    detector_mode: str = field(
        default="any", metadata={"help": "Stability with several metrics: fire when 'any' or 'all' are stable."}
    )
    detector_switch_step: int | None = field(
        default=None, metadata={"help": "Fixed detector: switch after this many optimizer steps."}
    )
    detector_switch_epoch: float | None = field(
        default=None, metadata={"help": "Fixed detector: switch after this many epochs."}
    )
    fukase_check_every_epochs: int = field(
        default=10,
        metadata={"help": "Fukase et al. confusion rule: check every N epochs (10 in their reference code)."},
    )
    augment_copies: int | None = field(
        default=None,
        metadata={"help": "Copies per sample before the switch (overrides the augmentation collator's `copies`)."},
    )
    augment_after_switch: str | None = field(
        default=None,
        metadata={"help": f"After the switch: one of {list(AFTER_SWITCH_MODES)} (overrides the collator's setting)."},
    )

    def __post_init__(self):
        from .launch import check_accelerate_cpu_launch

        check_accelerate_cpu_launch()  # before TrainingArguments sets up devices (which fails unclearly then)
        super().__post_init__()
        self.dynamics_metrics = normalize_metric_names(self.dynamics_metrics)
        validate_every_n_steps(self.dynamics_every_n_steps)
        validate_layer_selection(self.dynamics_layers)
        if self.detector not in DETECTOR_NAMES:
            raise ValueError(f"`detector` must be one of {list(DETECTOR_NAMES)}, got {self.detector!r}")
        self.detector_metrics = normalize_metric_names(self.detector_metrics, "detector_metrics")
        if self.detector == "stability" and not self.detector_metrics:
            raise ValueError("`detector_metrics` must name at least one metric for the stability detector")
        missing = [m for m in self.detector_metrics if m not in self.dynamics_metrics]
        if self.detector == "stability" and missing:
            raise ValueError(
                f"`detector_metrics` {missing} must also be in `dynamics_metrics` to be measured "
                "(or choose another `detector`, e.g. 'never' or 'fixed')"
            )
        if self.augment_copies is not None and (
            isinstance(self.augment_copies, bool) or not isinstance(self.augment_copies, int) or self.augment_copies < 1
        ):
            raise ValueError(f"`augment_copies` must be an integer >= 1, got {self.augment_copies!r}")
        if self.augment_after_switch is not None and self.augment_after_switch not in AFTER_SWITCH_MODES:
            raise ValueError(
                f"`augment_after_switch` must be one of {list(AFTER_SWITCH_MODES)}, got {self.augment_after_switch!r}"
            )
        # Detector hyper-parameters are checked by the detector itself (one place for the rules).
        from .detectors import build_detector

        try:
            build_detector(**detector_kwargs(self))
        except ValueError as err:
            raise ValueError(f"invalid `detector_*` arguments for detector {self.detector!r}: {err}") from None
        if self.dynamics_initial_weights not in INITIAL_WEIGHTS_STORAGE:
            raise ValueError(
                f"`dynamics_initial_weights` must be one of {list(INITIAL_WEIGHTS_STORAGE)}, "
                f"got {self.dynamics_initial_weights!r}"
            )


def detector_kwargs(args) -> dict:
    """Keyword arguments of `build_detector` for the detector named in ``args``."""
    name = getattr(args, "detector", "stability")
    if name == "stability":
        return dict(
            name=name,
            metrics=list(args.detector_metrics),
            threshold=args.detector_threshold,
            patience=args.detector_patience,
            window=args.detector_window,
            warmup=args.detector_warmup,
            mode=args.detector_mode,
        )
    if name == "fukase_confusion_iqr":
        return dict(name=name, check_every_epochs=args.fukase_check_every_epochs)
    if name == "fixed":
        return dict(name=name, step=args.detector_switch_step, epoch=args.detector_switch_epoch)
    return dict(name=name)
