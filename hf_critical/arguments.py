"""`CriticalPeriodArguments`: `TrainingArguments` plus the settings of hf_critical."""

from __future__ import annotations

import warnings
from dataclasses import MISSING, dataclass, field, fields

from transformers import TrainingArguments

from .detectors import DETECTORS, build_detector, detector_options_of, parse_detector_options
from .detectors.stability import DEFAULT_METRICS as STABILITY_DEFAULT_METRICS
from .metrics.layers import LAYER_SELECTIONS, validate_layer_selection
from .names import AFTER_SWITCH_MODES, AUGMENT_MODES, INITIAL_WEIGHTS_STORAGE, METRIC_NAMES, normalize_metric_names

__all__ = [
    "METRIC_NAMES",
    "DEFAULT_EVERY_N_STEPS",
    "DETECTOR_NAMES",
    "CriticalPeriodArguments",
    "normalize_metric_names",
]

#: Measure every 10 optimizer steps by default: a measurement costs about 0.2 s on MiniLM on 2 CPU cores,
#: about 2 % of the step time amortised over 10 steps (docs/benchmarks.md), while a 3-epoch fine-tuning of
#: a few hundred steps still gets dozens of points.
DEFAULT_EVERY_N_STEPS = 10

#: Detectors selectable by name: the registry of hf_critical.detectors.
DETECTOR_NAMES = tuple(DETECTORS)


def validate_every_n_steps(value: object, field_name: str = "dynamics_every_n_steps") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{field_name}` must be an integer >= 1 (measure every N optimizer steps), got {value!r}")
    return value


def validate_confusion_chunks(value: object, field_name: str = "dynamics_confusion_chunks") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(
            f"`{field_name}` must be an integer >= 2 (chunks of the measured batch for gradient confusion), got {value!r}"
        )
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

    dynamics_confusion_chunks: int = field(
        default=2,
        metadata={
            "help": "Gradient confusion without gradient accumulation: split the measured step's batch into this many "
            "chunks of distinct samples (one backward each, no extra samples) and compare all m(m-1)/2 pairs; "
            "logged as the mean and the minimum. More chunks: less noise, m-1 gradient copies held on that step."
        },
    )
    dynamics_sketch_dim: int | None = field(
        default=None,
        metadata={
            "help": "Bounded memory for large models: keep a fixed random sketch (CountSketch) of this many floats per "
            "layer instead of the full gradient (predictability) and initial weights (rotation); errors of order "
            "sqrt(2/d) (hf_critical.metrics.sketch). Default None: exact metrics."
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
        default="rate",
        metadata={
            "help": f"When the critical period ends: one of {list(DETECTOR_NAMES)} (docs/detectors.md). The default, "
            "'rate', fires when layer rotation's rate per unit of learning rate has fallen below 25 % of its peak."
        },
    )
    detector_options: str | None = field(
        default=None,
        metadata={
            "help": "Options of the chosen detector, as a JSON object or 'key=value,key=value' (e.g. "
            "'metric=gradient_confusion,peak_fraction=0.3'); a dict in YAML. Each detector's options: "
            "hf_critical.detectors.detector_options_of(name). Overrides the detector_* fields below."
        },
    )
    detector_metrics: list[str] = field(
        default_factory=lambda: list(STABILITY_DEFAULT_METRICS),
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
    augment_mode: str = field(
        default="batch",
        metadata={
            "help": "How the k copies are made: 'batch' (each step holds B*k rows, k augmented copies of each of its "
            "B samples; steps per epoch unchanged) or 'repeat' (an epoch visits every sample k times, one augmented "
            "row each, over k times the steps, until the switch; epochs after the switch epoch visit it once). "
            "Repeat mode's schedule is defined over epochs: docs/augmentation.md."
        },
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
        validate_confusion_chunks(self.dynamics_confusion_chunks)
        validate_layer_selection(self.dynamics_layers)
        sketch = self.dynamics_sketch_dim
        if sketch is not None and (isinstance(sketch, bool) or not isinstance(sketch, int) or sketch < 1):
            raise ValueError(f"`dynamics_sketch_dim` must be a positive integer (floats per layer) or None, got {sketch!r}")
        if self.detector not in DETECTOR_NAMES:
            raise ValueError(f"`detector` must be one of {list(DETECTOR_NAMES)}, got {self.detector!r}")
        self.detector_options = parse_detector_options(self.detector_options) or None
        self._check_legacy_detector_fields()
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
        if self.augment_mode not in AUGMENT_MODES:
            raise ValueError(f"`augment_mode` must be one of {list(AUGMENT_MODES)}, got {self.augment_mode!r}")
        if self.augment_mode == "repeat" and self.max_steps > 0 and self.num_train_epochs <= 0:
            raise ValueError(
                "augment_mode='repeat' plans its epochs from `num_train_epochs` (the schedule is over epochs); "
                f"got num_train_epochs={self.num_train_epochs} with max_steps={self.max_steps}"
            )
        if self.augment_after_switch is not None and self.augment_after_switch not in AFTER_SWITCH_MODES:
            raise ValueError(
                f"`augment_after_switch` must be one of {list(AFTER_SWITCH_MODES)}, got {self.augment_after_switch!r}"
            )
        # Detector options are checked by the detector itself (one place for the rules).
        try:
            detector = build_detector(**detector_kwargs(self))
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid options for detector {self.detector!r}: {err}") from None
        watched = getattr(detector, "metric", None)
        if watched is not None and watched not in self.dynamics_metrics:
            raise ValueError(
                f"detector {self.detector!r} watches {watched!r}, which must also be in `dynamics_metrics` "
                f"{self.dynamics_metrics} to be measured (or choose another `detector`, e.g. 'fraction' or 'never')"
            )
        if self.dynamics_initial_weights not in INITIAL_WEIGHTS_STORAGE:
            raise ValueError(
                f"`dynamics_initial_weights` must be one of {list(INITIAL_WEIGHTS_STORAGE)}, "
                f"got {self.dynamics_initial_weights!r}"
            )


    def _check_legacy_detector_fields(self) -> None:
        """A ``detector_*`` field set for a detector that does not read it is reported, not silently ignored.

        A warning, not an error: one config file often serves several detectors (a study's arms).
        """
        defaults = {f.name: f for f in fields(self)}
        for name, owner in LEGACY_DETECTOR_FIELDS.items():
            spec = defaults[name]
            default = spec.default_factory() if spec.default_factory is not MISSING else spec.default
            value = getattr(self, name)
            if name == "detector_metrics":
                value = normalize_metric_names(value, name)
            if value != default and self.detector != owner:
                warnings.warn(
                    f"`{name}` is an option of detector {owner!r} and is ignored with detector {self.detector!r}; "
                    f"give this detector's options in `detector_options` "
                    f"(its options: {sorted(detector_options_of(self.detector))})",
                    UserWarning,
                    stacklevel=3,
                )


#: The older per-detector fields and the detector each one feeds.
LEGACY_DETECTOR_FIELDS = {
    "detector_metrics": "stability",
    "detector_threshold": "stability",
    "detector_patience": "stability",
    "detector_window": "stability",
    "detector_warmup": "stability",
    "detector_mode": "stability",
    "detector_switch_step": "fixed",
    "detector_switch_epoch": "fixed",
    "fukase_check_every_epochs": "fukase_confusion_iqr",
}


def detector_kwargs(args) -> dict:
    """Keyword arguments of `build_detector` for the detector named in ``args``.

    The legacy ``detector_*`` fields feed the detectors they were made for (stability, fixed, the
    Fukase confusion rule); ``detector_options`` is given to any detector and overrides them.
    """
    name = getattr(args, "detector", "rate")
    kwargs: dict = {}
    if name == "stability":
        kwargs = dict(
            metrics=list(args.detector_metrics),
            threshold=args.detector_threshold,
            patience=args.detector_patience,
            window=args.detector_window,
            warmup=args.detector_warmup,
            mode=args.detector_mode,
        )
    elif name == "fukase_confusion_iqr":
        kwargs = dict(check_every_epochs=args.fukase_check_every_epochs)
    elif name == "fixed" and (args.detector_switch_step is not None or args.detector_switch_epoch is not None):
        kwargs = dict(step=args.detector_switch_step, epoch=args.detector_switch_epoch)
    kwargs.update(parse_detector_options(getattr(args, "detector_options", None)))
    return dict(name=name, **kwargs)
