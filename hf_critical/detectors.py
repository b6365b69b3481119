"""Detectors: decide, from the history of the training-dynamics metrics, when the critical period has ended.

A detector is fed after every optimizer step with the global metric values measured at that step
(or ``None`` when the step was not measured) and fires once, at the step where augmentation should
drop from k copies to one. Detectors are plain Python (numpy for percentiles), deterministic, and
their whole state is JSON, so a resumed run fires at the same step as an uninterrupted one::

    detector = build_detector("stability", metrics="gradient_confusion", window="0.25ep")
    detector.configure(steps_per_epoch=len(train_dataloader), num_epochs=3)
    for step in range(1, max_steps + 1):
        ...
        if detector.update(step, step / steps_per_epoch, values_measured_at(step)):
            print("critical period over:", detector.describe(), detector.values_at_fire)

=========================  ===========================  ==============================================================
Name                       Class                        Fires when
=========================  ===========================  ==============================================================
``stability``              `StabilityDetector`          a metric's window mean stops changing (relative change below
                                                        ``threshold`` for ``patience`` windows in a row)
``fukase_confusion_iqr``   `FukaseConfusionIQR`         an epoch's mean gradient confusion falls below Q1 - 1.5 IQR
                                                        of all epoch means (Fukase et al., 2025, rule a)
``fukase_rotation_angle``  `FukaseRotationAngle`        the line through the last epochs' mean layer rotation is
                                                        flatter than 45 degrees (Fukase et al., 2025, rule b)
``fixed``                  `FixedSwitch`                a given optimizer step (or epoch) is reached
``never``                  `NeverSwitch`                never (augment the whole run)
=========================  ===========================  ==============================================================

Lengths of windows and warm-ups ("spans") are given as an int or a numeric string (optimizer steps,
``100``, ``"100"``, ``"100 steps"``) or as a string in epochs (``"0.25ep"``, ``"0.5 epoch"``,
``"2 epochs"``); spans in epochs become steps in :meth:`Detector.configure`.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .names import METRIC_NAMES, normalize_metric_names

__all__ = [
    "DETECTORS",
    "Detector",
    "FixedSwitch",
    "FractionSwitch",
    "FukaseConfusionIQR",
    "FukaseRotationAngle",
    "NeverSwitch",
    "PlateauDetector",
    "RateDetector",
    "Span",
    "StabilityDetector",
    "TrendDetector",
    "build_detector",
    "detector_from_state",
    "detector_options_of",
    "parse_detector_options",
    "parse_span",
    "theil_sen",
]

logger = logging.getLogger(__name__)

#: Smallest denominator of a relative change, so that a metric sitting at 0 does not divide by zero.
_RELATIVE_FLOOR = 1e-12


# ---- argument checks ----------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(value: object, field_name: str, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"`{field_name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_metric(metric: object, field_name: str = "metric") -> str:
    if metric not in METRIC_NAMES:
        raise ValueError(f"`{field_name}` must be one of {list(METRIC_NAMES)}, got {metric!r}")
    return metric


def _round_half_up(x: float) -> int:
    # Python's round() rounds 2.5 to 2; half-up is what a reader of "0.25ep of 10 steps" expects.
    return math.floor(x + 0.5)


# ---- spans --------------------------------------------------------------------------------------

_SPAN_PATTERN = re.compile(r"\s*([^\s a-z]+)\s*(steps?|ep|epochs?)?\s*")


@dataclass(frozen=True)
class Span:
    """A length of training: ``amount`` optimizer steps, or ``amount`` epochs when ``in_epochs``."""

    amount: float
    in_epochs: bool

    def to_steps(self, steps_per_epoch: int | None, minimum: int) -> int:
        if not self.in_epochs:
            return max(int(self.amount), minimum)
        if steps_per_epoch is None:
            raise RuntimeError("a span in epochs needs steps_per_epoch; call configure() first")
        return max(_round_half_up(self.amount * steps_per_epoch), minimum)

    def to_arg(self) -> int | str:
        """The JSON-ready form that :func:`parse_span` reads back to this span exactly."""
        return f"{self.amount!r}ep" if self.in_epochs else int(self.amount)

    def __str__(self) -> str:
        return f"{self.amount:g}ep" if self.in_epochs else f"{int(self.amount)} steps"


def parse_span(value: object, field_name: str, *, allow_zero: bool) -> Span:
    """Read a window or warm-up length: an int or numeric string is steps; ``"<x>ep|epoch|epochs"`` is epochs.

    A bare float is refused (is ``0.5`` half an epoch or half a step?): write ``"0.5ep"``.
    """
    allowed = ">= 0" if allow_zero else "> 0"
    hint = (
        f"`{field_name}` must be a number of optimizer steps (int, '100', '100 steps') or of epochs "
        f"('0.25ep', '0.5 epoch', '2 epochs'), {allowed}; got {value!r}"
    )
    if _is_int(value):
        amount, in_epochs = int(value), False
    elif isinstance(value, str):
        match = _SPAN_PATTERN.fullmatch(value.lower())
        if match is None:
            raise ValueError(hint)
        number, unit = match.groups()
        in_epochs = unit in ("ep", "epoch", "epochs")
        try:
            amount = float(number) if in_epochs else int(number)
        except ValueError:
            raise ValueError(hint) from None
    else:
        raise ValueError(hint)
    if not math.isfinite(amount) or amount < 0 or (amount == 0 and not allow_zero):
        raise ValueError(hint)
    return Span(float(amount) if in_epochs else amount, in_epochs)


# ---- checks on what update() receives -----------------------------------------------------------


def _check_values(values: Mapping[str, object] | None, step: int) -> dict[str, float]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValueError(f"values at step {step} must be a mapping of metric name to float or None, got {values!r}")
    checked: dict[str, float] = {}
    for name, value in values.items():
        # Keys besides METRIC_NAMES (e.g. the logged gradient_confusion_min) are accepted and kept in
        # values_at_fire; the rules only read the metrics they are configured with.
        if not isinstance(name, str):
            raise ValueError(f"metric names at step {step} must be strings, got {name!r}")
        if not _is_real(value) or not math.isfinite(value):
            raise ValueError(
                f"metric {name!r} at step {step} must be a finite number, got {value!r} "
                "(leave a metric that could not be computed out of the values)"
            )
        checked[name] = float(value)
    return checked


class _WindowMeans:
    """Mean of each metric's measurements over consecutive windows: window j holds steps ((j-1)*size, j*size]."""

    def __init__(self, metrics: Iterable[str]):
        self.metrics = tuple(metrics)
        self.open = 1
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def feed(self, step: int, size: int, measured: Mapping[str, float]) -> list[tuple[int, dict[str, float]]]:
        """Add ``step``'s values; return the windows closed by it as ``(index, {metric: mean})``, oldest first."""
        closed = []
        index = (step - 1) // size + 1
        if index > self.open:
            # Updates skipped the last step of the open window: it closes at the first step seen after it.
            closed.append(self._close())
            self.open = index
        for name in self.metrics:
            if name in measured:
                self.sums[name] = self.sums.get(name, 0.0) + measured[name]
                self.counts[name] = self.counts.get(name, 0) + 1
        if step % size == 0:
            closed.append(self._close())
            self.open = index + 1
        return closed

    def _close(self) -> tuple[int, dict[str, float]]:
        means = {name: self.sums[name] / self.counts[name] for name in self.metrics if self.counts.get(name)}
        self.sums, self.counts = {}, {}
        return self.open, means

    def state(self) -> dict[str, Any]:
        return {"open": self.open, "sums": dict(self.sums), "counts": dict(self.counts)}

    def load(self, state: Mapping[str, Any]) -> None:
        self.open = int(state["open"])
        self.sums = {k: float(v) for k, v in state["sums"].items()}
        self.counts = {k: int(v) for k, v in state["counts"].items()}


# ---- base class ---------------------------------------------------------------------------------


class Detector:
    """Decides the optimizer step at which the critical period ends.

    Call :meth:`configure` at train start (and again after a resume), then :meth:`update` after every
    optimizer step. :meth:`update` returns True once, at the step where the detector fires; the step,
    epoch and latest metric values at that moment stay in :attr:`fired_step`, :attr:`fired_epoch` and
    :attr:`values_at_fire`.
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self.fired_step: int | None = None
        self.fired_epoch: float | None = None
        #: Most recent measurement of every metric seen, at the step the detector fired.
        self.values_at_fire: dict[str, float] | None = None
        self.steps_per_epoch: int | None = None
        self.num_epochs: float | None = None
        self._last_step = 0
        self._latest: dict[str, float] = {}
        self._learning_rate: float | None = None
        #: Planned optimizer steps of the run (from :meth:`configure`; None if not given).
        self.max_steps: int | None = None

    # ---- to be provided by subclasses -----------------------------------------------------------

    @property
    def needs_configure(self) -> bool:
        """Whether :meth:`update` needs :meth:`configure` first (the rule counts in epochs)."""
        return False

    @property
    def needs_learning_rate(self) -> bool:
        """Whether :meth:`update` needs the learning rate of every step."""
        return False

    def _args(self) -> dict[str, Any]:
        return {}

    def _observe(self, step: int, measured: dict[str, float]) -> bool:
        """Take one step's checked values; return whether the detector fires at ``step``."""
        raise NotImplementedError

    def _check_plan(self, steps_per_epoch: int, num_epochs: float) -> None:
        """Refuse a training plan the rule cannot work with."""

    def _on_configure(self) -> None:
        """Turn spans in epochs into steps once ``steps_per_epoch`` is known."""

    def _attributes(self) -> dict[str, Any]:
        return {}

    def _load_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def describe(self) -> str:
        """One line for logs and model cards."""
        return f"{self.name}()"

    # ---- shared machinery -----------------------------------------------------------------------

    @property
    def fired(self) -> bool:
        return self.fired_step is not None

    def configure(self, *, steps_per_epoch: int, num_epochs: float, max_steps: int | None = None) -> None:
        """Give the detector the training plan; called at train start and again on resume, before any update.

        ``max_steps`` is the planned number of optimizer steps when the run is planned in steps
        (``TrainingArguments.max_steps``); without it the plan is ``steps_per_epoch * num_epochs``.
        """
        if not _is_int(steps_per_epoch) or steps_per_epoch < 1:
            raise ValueError(f"`steps_per_epoch` must be an integer >= 1, got {steps_per_epoch!r}")
        if not _is_real(num_epochs) or not math.isfinite(num_epochs) or num_epochs <= 0:
            raise ValueError(f"`num_epochs` must be a finite number > 0, got {num_epochs!r}")
        steps_per_epoch, num_epochs = int(steps_per_epoch), float(num_epochs)
        if max_steps is not None and (not _is_int(max_steps) or max_steps < 1):
            raise ValueError(f"`max_steps` must be None or an integer >= 1, got {max_steps!r}")
        if (
            self.needs_configure
            and not self.fired
            and self._last_step > 0
            and self.steps_per_epoch is not None
            and steps_per_epoch != self.steps_per_epoch
        ):
            raise ValueError(
                f"{self.describe()} was run with steps_per_epoch={self.steps_per_epoch} and is now configured with "
                f"{steps_per_epoch} (resumed with another batch size or number of processes?); its windows "
                "in epochs would no longer line up with the history it holds"
            )
        self._check_plan(steps_per_epoch, num_epochs)
        self.steps_per_epoch, self.num_epochs = steps_per_epoch, num_epochs
        self.max_steps = None if max_steps is None else int(max_steps)
        self._on_configure()

    @property
    def planned_steps(self) -> int | None:
        """Optimizer steps the run is planned for (None before :meth:`configure`)."""
        if self.max_steps is not None:
            return self.max_steps
        if self.steps_per_epoch is None or self.num_epochs is None:
            return None
        return max(1, math.ceil(self.steps_per_epoch * self.num_epochs))

    def update(
        self, step: int, epoch: float, values: Mapping[str, float] | None, learning_rate: float | None = None
    ) -> bool:
        """Feed the global metric values measured at optimizer ``step`` (``None``: not measured).

        ``values`` may hold any subset of the metrics, and extra finite values (e.g. the logged
        ``gradient_confusion_min``), which only end up in :attr:`values_at_fire`. ``learning_rate`` is
        the learning rate the optimizer used at ``step``; rules that measure progress in units of
        learning rate (:attr:`needs_learning_rate`) need it at every step. Returns True at the one
        step where the detector fires, False at every other step.
        """
        if self.needs_configure and self.steps_per_epoch is None:
            raise RuntimeError(
                f"{self.describe()} counts in epochs: call configure(steps_per_epoch=..., num_epochs=...) "
                "before the first update()"
            )
        if not _is_int(step) or step < 1:
            raise ValueError(f"`step` must be an optimizer step, an integer >= 1, got {step!r}")
        step = int(step)
        if step <= self._last_step:
            raise ValueError(f"steps must increase: got step {step} after step {self._last_step}")
        if not _is_real(epoch) or not math.isfinite(epoch):
            raise ValueError(f"`epoch` at step {step} must be a finite number, got {epoch!r}")
        measured = _check_values(values, step)
        if learning_rate is not None and (not _is_real(learning_rate) or not math.isfinite(learning_rate) or learning_rate < 0):
            raise ValueError(f"`learning_rate` at step {step} must be a finite number >= 0, got {learning_rate!r}")
        if self.needs_learning_rate and learning_rate is None and not self.fired:
            raise ValueError(
                f"{self.describe()} measures progress in units of learning rate and needs the learning rate of "
                f"every step; step {step} came without one (pass learning_rate=..., or use progress='step')"
            )
        self._last_step = step
        if self.fired:
            return False
        self._learning_rate = None if learning_rate is None else float(learning_rate)
        self._latest.update(measured)
        if not self._observe(step, measured):
            return False
        self.fired_step, self.fired_epoch = step, float(epoch)
        self.values_at_fire = dict(self._latest)
        return True

    def state(self) -> dict[str, Any]:
        """JSON-ready ``{"name", "args", "attributes"}``; :meth:`from_state` restores it exactly."""
        return {
            "name": self.name,
            "args": self._args(),
            "attributes": {
                "fired_step": self.fired_step,
                "fired_epoch": self.fired_epoch,
                "values_at_fire": None if self.values_at_fire is None else dict(self.values_at_fire),
                "steps_per_epoch": self.steps_per_epoch,
                "num_epochs": self.num_epochs,
                "max_steps": self.max_steps,
                "last_step": self._last_step,
                "latest": dict(self._latest),
                **copy.deepcopy(self._attributes()),
            },
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Detector:
        """Rebuild a detector from :meth:`state` (``Detector.from_state`` dispatches on ``state["name"]``)."""
        if not isinstance(state, Mapping) or "name" not in state:
            raise ValueError(f"a detector state is a mapping with a 'name', got {state!r}")
        if cls is Detector:
            return detector_from_state(state)
        if state["name"] != cls.name:
            raise ValueError(f"{cls.__name__}.from_state got the state of detector {state['name']!r}")
        detector = cls(**dict(state.get("args", {})))
        try:
            attributes = copy.deepcopy(dict(state["attributes"]))
            detector.fired_step = attributes["fired_step"]
            detector.fired_epoch = attributes["fired_epoch"]
            detector.values_at_fire = attributes["values_at_fire"]
            detector._last_step = int(attributes["last_step"])
            detector._latest = {k: float(v) for k, v in attributes["latest"].items()}
            steps_per_epoch, num_epochs = attributes["steps_per_epoch"], attributes["num_epochs"]
            detector._load_attributes(attributes)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed state of detector {cls.name!r}: {err!r}") from err
        if steps_per_epoch is not None:
            detector.steps_per_epoch, detector.num_epochs = int(steps_per_epoch), float(num_epochs)
            max_steps = attributes.get("max_steps")  # absent in states written before 0.2
            detector.max_steps = None if max_steps is None else int(max_steps)
            detector._on_configure()
        return detector

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} fired_step={self.fired_step}>"


# ---- stability (the seed rule) ------------------------------------------------------------------


class StabilityDetector(Detector):
    """Fires when a metric's smoothed value stops changing.

    Steps are cut into consecutive windows of ``window`` optimizer steps (window j = steps
    ((j-1)*W, j*W]); a window's value for a metric is the mean of that metric's measurements in it.
    At the step closing a window, each metric measured in it is compared with its previous window
    that had a measurement: a relative change ``|m_j - m_prev| / max(|m_prev|, 1e-12)`` below
    ``threshold`` adds one to that metric's count of stable windows, anything else sets it back to 0;
    a window without a measurement of a metric leaves its count as it was. The detector fires at a
    window's closing step when some metric's count reaches ``patience`` (``mode="any"``) or every
    metric's does (``mode="all"``). Windows closing at or before the end of ``warmup`` are not
    compared at all: the first comparison is between the first two windows closing after it.

    Args:
        metrics: Metric name(s) from `METRIC_NAMES` (a name, a comma-separated string or a list).
        threshold: Relative change under which a window counts as stable, > 0.
        patience: Stable windows in a row needed to fire, >= 1.
        window: Window length (see :func:`parse_span`), > 0; at least one step once converted.
        warmup: Steps (or epochs) during which nothing is compared, >= 0.
        mode: ``"any"`` or ``"all"`` of ``metrics`` must be stable.
    """

    name: ClassVar[str] = "stability"

    def __init__(
        self,
        metrics: str | Iterable[str] = ("gradient_confusion",),
        threshold: float = 0.05,
        patience: int = 2,
        window: int | str = "0.25ep",
        warmup: int | str = "0.5ep",
        mode: str = "any",
    ):
        super().__init__()
        if not isinstance(metrics, (str, list, tuple)):
            raise ValueError(f"`metrics` must be a metric name or a list of them, got {metrics!r}")
        self.metrics = normalize_metric_names(metrics, "metrics")
        if not self.metrics:
            raise ValueError(f"`metrics` must name at least one of {list(METRIC_NAMES)}, got {metrics!r}")
        if not _is_real(threshold) or not math.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"`threshold` must be a finite number > 0 (a relative change), got {threshold!r}")
        self.threshold = float(threshold)
        self.patience = _check_int(patience, "patience", 1)
        self.window = parse_span(window, "window", allow_zero=False)
        self.warmup = parse_span(warmup, "warmup", allow_zero=True)
        if mode not in ("any", "all"):
            raise ValueError(f"`mode` must be 'any' or 'all', got {mode!r}")
        self.mode = mode
        self.window_steps: int | None = None
        self.warmup_steps: int | None = None
        self._windows = _WindowMeans(self.metrics)
        self._previous: dict[str, float] = {}
        self._stable: dict[str, int] = {name: 0 for name in self.metrics}
        self._on_configure()

    @property
    def needs_configure(self) -> bool:
        return self.window.in_epochs or self.warmup.in_epochs

    def _on_configure(self) -> None:
        if self.steps_per_epoch is not None or not self.window.in_epochs:
            self.window_steps = self.window.to_steps(self.steps_per_epoch, minimum=1)
        if self.steps_per_epoch is not None or not self.warmup.in_epochs:
            self.warmup_steps = self.warmup.to_steps(self.steps_per_epoch, minimum=0)

    def _observe(self, step: int, measured: dict[str, float]) -> bool:
        for end_index, means in self._windows.feed(step, self.window_steps, measured):
            if end_index * self.window_steps <= self.warmup_steps:
                continue
            for name, mean in means.items():
                previous = self._previous.get(name)
                if previous is not None:
                    change = abs(mean - previous) / max(abs(previous), _RELATIVE_FLOOR)
                    self._stable[name] = self._stable[name] + 1 if change < self.threshold else 0
                self._previous[name] = mean
            counts = [self._stable[name] >= self.patience for name in self.metrics]
            if any(counts) if self.mode == "any" else all(counts):
                return True
        return False

    def _args(self) -> dict[str, Any]:
        return {
            "metrics": list(self.metrics),
            "threshold": self.threshold,
            "patience": self.patience,
            "window": self.window.to_arg(),
            "warmup": self.warmup.to_arg(),
            "mode": self.mode,
        }

    def _attributes(self) -> dict[str, Any]:
        return {"windows": self._windows.state(), "previous": self._previous, "stable": self._stable}

    def _load_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._windows.load(attributes["windows"])
        self._previous = {k: float(v) for k, v in attributes["previous"].items()}
        self._stable = {name: int(attributes["stable"].get(name, 0)) for name in self.metrics}

    def describe(self) -> str:
        return (
            f"stability({'+'.join(self.metrics)}, threshold={self.threshold:g}, patience={self.patience}, "
            f"window={self.window}, warmup={self.warmup}, {self.mode})"
        )


# ---- Fukase et al. 2025 -------------------------------------------------------------------------


class _PerEpochRule(Detector):
    """Base of the rules that work on per-epoch means: epoch e = steps ((e-1)*steps_per_epoch, e*steps_per_epoch].

    An epoch without a measurement of the metric adds no mean and takes no decision.
    """

    def __init__(self, metric: str):
        super().__init__()
        self.metric = _check_metric(metric)
        self._epochs = _WindowMeans((self.metric,))
        #: ``[epoch index, mean]`` of every epoch that had a measurement, oldest first.
        self.epoch_means: list[list[float]] = []

    @property
    def needs_configure(self) -> bool:
        return True

    def _observe(self, step: int, measured: dict[str, float]) -> bool:
        for epoch_index, means in self._epochs.feed(step, self.steps_per_epoch, measured):
            if self.metric not in means:
                continue
            self.epoch_means.append([epoch_index, means[self.metric]])
            if self._decide(epoch_index):
                return True
        return False

    def _decide(self, epoch_index: int) -> bool:
        raise NotImplementedError

    def _attributes(self) -> dict[str, Any]:
        return {"epochs": self._epochs.state(), "epoch_means": self.epoch_means}

    def _load_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._epochs.load(attributes["epochs"])
        self.epoch_means = [[int(e), float(m)] for e, m in attributes["epoch_means"]]


class FukaseConfusionIQR(_PerEpochRule):
    """Fires when an epoch's mean gradient confusion is an outlier on the low side of its history.

    Rule (a) of the reference implementation of Fukase et al., 2025, "One Period to Rule Them All"
    (arXiv:2506.15954): gradient confusion falls below ``Q1 - 1.5 * IQR`` of its history, checked
    every 10 epochs. Here: at the step ending epoch e, with ``e % check_every_epochs == 0`` and at
    least 4 epoch means, Q1 and Q3 are `numpy.percentile` 25 and 75 (linear interpolation) of all
    epoch means so far, the latest included; the detector fires if the latest (epoch e's) mean is
    below ``Q1 - 1.5 * (Q3 - Q1)``.

    Args:
        check_every_epochs: Check at epochs that are multiples of this, >= 1. The paper uses 10;
            fine-tuning runs of a few epochs need 1.
        metric: The metric to watch (the paper's is ``gradient_confusion``).
    """

    name: ClassVar[str] = "fukase_confusion_iqr"
    #: Fewer epoch means than this give no quartiles worth the name.
    MIN_EPOCH_MEANS: ClassVar[int] = 4

    def __init__(self, check_every_epochs: int = 10, metric: str = "gradient_confusion"):
        super().__init__(metric)
        self.check_every_epochs = _check_int(check_every_epochs, "check_every_epochs", 1)

    def _decide(self, epoch_index: int) -> bool:
        if epoch_index % self.check_every_epochs or len(self.epoch_means) < self.MIN_EPOCH_MEANS:
            return False
        means = np.array([m for _, m in self.epoch_means], dtype=np.float64)
        q1, q3 = np.percentile(means, [25, 75])
        return bool(means[-1] < q1 - 1.5 * (q3 - q1))

    def _args(self) -> dict[str, Any]:
        return {"check_every_epochs": self.check_every_epochs, "metric": self.metric}

    def describe(self) -> str:
        return f"fukase_confusion_iqr({self.metric}, check_every_epochs={self.check_every_epochs})"


class FukaseRotationAngle(_PerEpochRule):
    """Fires when layer rotation has flattened: its recent trend line is below ``max_angle_degrees``.

    Rule (b) of the reference implementation of Fukase et al., 2025, "One Period to Rule Them All"
    (arXiv:2506.15954). At the end of every epoch once ``last_epochs`` epoch means exist, a
    least-squares line is fitted to the last ``last_epochs`` epoch means of layer rotation against
    the epoch index min-max scaled over the planned run, ``x = (e - 1) / (num_epochs - 1)``; the
    detector fires when ``degrees(atan(slope)) < max_angle_degrees``. ``num_epochs`` comes from
    :meth:`configure` and must be >= 2; a resume with another ``num_epochs`` rescales x from then on.

    Args:
        last_epochs: Number of latest epoch means the line is fitted to, >= 2.
        max_angle_degrees: Angle of the line under which the detector fires, in (-90, 90).
        metric: The metric to watch (the paper's is ``layer_rotation``).
    """

    name: ClassVar[str] = "fukase_rotation_angle"

    def __init__(self, last_epochs: int = 5, max_angle_degrees: float = 45.0, metric: str = "layer_rotation"):
        super().__init__(metric)
        self.last_epochs = _check_int(last_epochs, "last_epochs", 2)
        if not _is_real(max_angle_degrees) or not -90 < max_angle_degrees < 90:
            raise ValueError(f"`max_angle_degrees` must be a number in (-90, 90), got {max_angle_degrees!r}")
        self.max_angle_degrees = float(max_angle_degrees)

    def _check_plan(self, steps_per_epoch: int, num_epochs: float) -> None:
        if num_epochs < 2:
            raise ValueError(
                f"{self.describe()} scales epochs over the planned run and needs num_epochs >= 2, got {num_epochs!r}"
            )

    def trend_angle(self) -> float | None:
        """Angle in degrees of the line through the last ``last_epochs`` epoch means (None: too few yet)."""
        if len(self.epoch_means) < self.last_epochs or self.num_epochs is None:
            return None
        recent = self.epoch_means[-self.last_epochs :]
        xs = [(e - 1) / (self.num_epochs - 1) for e, _ in recent]
        ys = [m for _, m in recent]
        x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
        sxy = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys))
        sxx = sum((x - x_mean) ** 2 for x in xs)
        return math.degrees(math.atan(sxy / sxx))

    def _decide(self, epoch_index: int) -> bool:
        angle = self.trend_angle()
        return angle is not None and angle < self.max_angle_degrees

    def _args(self) -> dict[str, Any]:
        return {"last_epochs": self.last_epochs, "max_angle_degrees": self.max_angle_degrees, "metric": self.metric}

    def describe(self) -> str:
        return (
            f"fukase_rotation_angle({self.metric}, last_epochs={self.last_epochs}, "
            f"max_angle={self.max_angle_degrees:g}deg)"
        )


# ---- baselines ----------------------------------------------------------------------------------


class FixedSwitch(Detector):
    """Fires at a set point: the first ``N`` optimizer steps use k copies, step ``N + 1`` onward one copy.

    ``N`` is ``step``, or ``epoch * steps_per_epoch`` rounded half up; the detector fires at the first
    update whose step is ``>= N`` (``step=0``: at the first update). Give exactly one of the two.
    """

    name: ClassVar[str] = "fixed"

    def __init__(self, step: int | None = None, epoch: float | None = None):
        super().__init__()
        if (step is None) == (epoch is None):
            raise ValueError(f"give exactly one of `step` and `epoch`, got step={step!r}, epoch={epoch!r}")
        if step is not None:
            step = _check_int(step, "step", 0)
        if epoch is not None:
            if not _is_real(epoch) or not math.isfinite(epoch) or epoch < 0:
                raise ValueError(f"`epoch` must be a finite number >= 0, got {epoch!r}")
            epoch = float(epoch)
        self.step, self.epoch = step, epoch

    @property
    def needs_configure(self) -> bool:
        return self.epoch is not None

    @property
    def switch_step(self) -> int | None:
        """The last step with k copies (None until configured, for an ``epoch``)."""
        if self.step is not None:
            return self.step
        if self.steps_per_epoch is None:
            return None
        return _round_half_up(self.epoch * self.steps_per_epoch)

    def _observe(self, step: int, measured: dict[str, float]) -> bool:
        return step >= self.switch_step

    def _args(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch}

    def describe(self) -> str:
        return f"fixed(step={self.step})" if self.step is not None else f"fixed(epoch={self.epoch:g})"


class NeverSwitch(Detector):
    """Never fires: augmentation stays at k copies for the whole run (the control)."""

    name: ClassVar[str] = "never"

    def _observe(self, step: int, measured: dict[str, float]) -> bool:
        return False

    def describe(self) -> str:
        return "never()"


# ---- trend rules: rate and plateau --------------------------------------------------------------

#: Progress axes a trend rule can measure slopes against.
PROGRESS_AXES = ("step", "lr")


def _check_fraction(value: object, field_name: str, *, upper_open: bool = True) -> float:
    ok = _is_real(value) and math.isfinite(value) and value >= 0 and (value < 1 if upper_open else value <= 1)
    if not ok:
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"`{field_name}` must be a number in {bound}, got {value!r}")
    return float(value)


def theil_sen(xs: Sequence[float], ys: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """Theil-Sen slope of ``ys`` against ``xs`` and its two-sided ``confidence`` interval.

    Returns ``(slope, low, high)``: the median of the pairwise slopes and Sen's distribution-free
    interval, from `scipy.stats.theilslopes` (robust to outliers; it assumes independent noise).
    """
    from scipy.stats import theilslopes

    result = theilslopes(np.asarray(ys, dtype=np.float64), np.asarray(xs, dtype=np.float64), alpha=confidence)
    return float(result.slope), float(result.low_slope), float(result.high_slope)


class TrendDetector(Detector):
    """Fires when a metric's rate has fallen, with confidence, well below the fastest rate it was seen to move at.

    An equivalence test on the slope, scale-free and noise-aware. At the step closing each
    ``window`` (a decision every ``window`` optimizer steps) after ``warmup``, the measurements of
    the last ``lookback`` steps (extended back to the latest ``min_points`` measurements when it
    holds fewer) get a Theil-Sen line against the progress axis: optimizer steps
    (``progress="step"``) or the cumulative learning rate (``progress="lr"``, for metrics that move
    in proportion to the learning rate, so that a decaying schedule is not mistaken for a settling
    metric). With ``[low, high]`` the ``confidence`` interval of that slope (Sen's interval,
    `scipy.stats.theilslopes`):

    * ``peak`` is the largest |slope| of any decision so far;
    * a decision is *flat* when the whole interval lies inside ``(-peak_fraction * peak,
      +peak_fraction * peak)``.

    The detector fires at the ``patience``-th flat decision in a row. Consequences, checked by
    ``benchmarks/detectors.py``: a metric that keeps its rate (a steady trend, clean, or noisy but
    resolved by the lookback) is never flat, whatever its units; a saturating curve becomes flat
    once its rate is below ``peak_fraction`` of its peak; a constant metric never fires.
    Noise acts both ways: it widens the interval (later) and inflates the peak, which is a maximum
    of noisy slopes (sooner); a trend too weak to be resolved in the lookback cannot be told from a
    plateau, and may fire (docs/detectors.md gives the limit).

    A lookback with fewer than ``min_points`` measurements takes no decision (a warning says so
    once the lookback has elapsed). The rule is invariant to multiplying the metric by a constant
    and, with spans in epochs, to the number of steps per epoch and the measurement interval (up
    to the resolution they give).

    Args:
        metric: The metric to watch.
        window: Steps (or epochs) between decisions (see :func:`parse_span`), > 0.
        lookback: Steps (or epochs) of measurements the slope is fitted to, > 0.
        warmup: Steps (or epochs) during which no decision is taken, >= 0.
        peak_fraction: Fraction of the peak rate under which the trend is flat, in (0, 1).
        confidence: Two-sided confidence of the slope's interval, in (0, 1).
        patience: Flat decisions in a row needed to fire, >= 1.
        progress: ``"step"`` or ``"lr"`` (needs the learning rate of every step in :meth:`update`).
        min_points: Fewest measurements a slope is fitted to, >= 4.
    """

    name: ClassVar[str] = ""
    #: The options left as ``None`` take these; each subclass overrides what it needs.
    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        window="0.25ep", warmup="0.5ep", peak_fraction=0.25, patience=2, confidence=0.9, progress="step", min_points=6
    )

    def __init__(
        self,
        metric: str | None = None,
        window: int | str | None = None,
        lookback: int | str | None = None,
        warmup: int | str | None = None,
        peak_fraction: float | None = None,
        confidence: float | None = None,
        patience: int | None = None,
        progress: str | None = None,
        min_points: int | None = None,
    ):
        super().__init__()
        given = dict(
            metric=metric,
            window=window,
            lookback=lookback,
            warmup=warmup,
            peak_fraction=peak_fraction,
            confidence=confidence,
            patience=patience,
            progress=progress,
            min_points=min_points,
        )
        opts = {key: self.DEFAULTS[key] if value is None else value for key, value in given.items()}
        self.metric = _check_metric(opts["metric"])
        self.window = parse_span(opts["window"], "window", allow_zero=False)
        self.lookback = parse_span(opts["lookback"], "lookback", allow_zero=False)
        self.warmup = parse_span(opts["warmup"], "warmup", allow_zero=True)
        self.peak_fraction = _check_fraction(opts["peak_fraction"], "peak_fraction")
        if self.peak_fraction == 0:
            raise ValueError("`peak_fraction` must be a number in (0, 1): at 0 the detector could never fire")
        confidence = opts["confidence"]
        if not _is_real(confidence) or not 0 < confidence < 1:
            raise ValueError(f"`confidence` must be a number in (0, 1), got {confidence!r}")
        self.confidence = float(confidence)
        self.patience = _check_int(opts["patience"], "patience", 1)
        if opts["progress"] not in PROGRESS_AXES:
            raise ValueError(f"`progress` must be one of {list(PROGRESS_AXES)}, got {opts['progress']!r}")
        self.progress = opts["progress"]
        self.min_points = _check_int(opts["min_points"], "min_points", 4)
        self.window_steps: int | None = None
        self.lookback_steps: int | None = None
        self.warmup_steps: int | None = None
        self._open = 1  # index of the window the next steps fall in
        #: ``[step, progress, value]`` of the measurements a later lookback may still need.
        self._points: list[list[float]] = []
        self._lr_sum = 0.0
        self._flat = 0
        self._warned_sparse = False
        #: Largest |slope| of any decision so far.
        self.peak_slope = 0.0
        #: ``[closing step, slope, low, high, margin, flat]`` of every decision, for inspection and plots.
        self.decisions: list[list[float]] = []
        self._on_configure()

    @property
    def needs_configure(self) -> bool:
        return self.window.in_epochs or self.lookback.in_epochs or self.warmup.in_epochs

    @property
    def needs_learning_rate(self) -> bool:
        return self.progress == "lr"

    def _on_configure(self) -> None:
        known = self.steps_per_epoch is not None
        if known or not self.window.in_epochs:
            self.window_steps = self.window.to_steps(self.steps_per_epoch, minimum=1)
        if known or not self.lookback.in_epochs:
            self.lookback_steps = self.lookback.to_steps(self.steps_per_epoch, minimum=1)
        if known or not self.warmup.in_epochs:
            self.warmup_steps = self.warmup.to_steps(self.steps_per_epoch, minimum=0)

    def _observe(self, step: int, measured: dict[str, float]) -> bool:
        index = (step - 1) // self.window_steps + 1
        fired = False
        if index > self._open:
            # Updates skipped the last step of the open window: it closes before this step counts.
            fired = self._decide(step - 1)
            self._open = index
        if self.progress == "lr":
            self._lr_sum += self._learning_rate
        if self.metric in measured:
            position = self._lr_sum if self.progress == "lr" else float(step)
            self._points.append([step, position, measured[self.metric]])
        if step % self.window_steps == 0:
            fired = self._decide(step) or fired
            self._open = index + 1
        return fired

    def _lookback_points(self, step: int) -> list[list[float]]:
        """The measurements the slope at ``step`` is fitted to; drops those no later lookback needs."""
        in_span = sum(1 for p in self._points if p[0] > step - self.lookback_steps)
        self._points = self._points[-max(in_span, self.min_points) :]
        return self._points[-in_span:] if in_span >= self.min_points else list(self._points)

    def _decide(self, step: int) -> bool:
        if step <= self.warmup_steps:
            self._lookback_points(step)
            return False
        points = self._lookback_points(step)
        if len(points) < self.min_points:
            if step >= self.lookback_steps + self.warmup_steps and not self._warned_sparse:
                logger.warning(
                    "%s: only %d measurements of %s up to step %d (it needs %d): no decision yet; measure more "
                    "often (dynamics_every_n_steps) or lengthen `lookback`",
                    self.describe(), len(points), self.metric, step, self.min_points,
                )
                self._warned_sparse = True
            return False
        first, last = points[0], points[-1]
        if last[1] == first[1] or last[0] == first[0]:
            return False  # no progress (learning rate 0 throughout the lookback): nothing to measure
        slope, low, high = theil_sen([p[1] for p in points], [p[2] for p in points], self.confidence)
        self.peak_slope = max(self.peak_slope, abs(slope))
        margin = self.peak_fraction * self.peak_slope
        flat = -margin < low and high < margin
        self._flat = self._flat + 1 if flat else 0
        self.decisions.append([step, slope, low, high, margin, int(flat)])
        return self._flat >= self.patience

    def _args(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "window": self.window.to_arg(),
            "lookback": self.lookback.to_arg(),
            "warmup": self.warmup.to_arg(),
            "peak_fraction": self.peak_fraction,
            "confidence": self.confidence,
            "patience": self.patience,
            "progress": self.progress,
            "min_points": self.min_points,
        }

    def _attributes(self) -> dict[str, Any]:
        return {
            "open": self._open,
            "points": self._points,
            "lr_sum": self._lr_sum,
            "peak_slope": self.peak_slope,
            "flat": self._flat,
            "warned_sparse": self._warned_sparse,
            "decisions": self.decisions,
        }

    def _load_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._open = int(attributes["open"])
        self._points = [[int(s), float(x), float(y)] for s, x, y in attributes["points"]]
        self._lr_sum = float(attributes["lr_sum"])
        self.peak_slope = float(attributes["peak_slope"])
        self._flat = int(attributes["flat"])
        self._warned_sparse = bool(attributes["warned_sparse"])
        self.decisions = [list(d) for d in attributes["decisions"]]

    def describe(self) -> str:
        return (
            f"{self.name}({self.metric} per {self.progress}, window={self.window}, lookback={self.lookback}, "
            f"warmup={self.warmup}, peak_fraction={self.peak_fraction:g}, confidence={self.confidence:g}, "
            f"patience={self.patience})"
        )


class RateDetector(TrendDetector):
    """The trend rule for cumulative metrics (layer rotation), see `TrendDetector`.

    Fires when the metric's rate per unit of learning rate, fitted over the last epoch, has fallen
    below 25 % of its peak at two decisions in a row (a decision every quarter epoch).
    """

    name: ClassVar[str] = "rate"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        **TrendDetector.DEFAULTS,
        "metric": "layer_rotation",
        "lookback": "1ep",
        "progress": "lr",
    }


class PlateauDetector(TrendDetector):
    """The trend rule for noisy metrics (gradient confusion, predictability), see `TrendDetector`.

    Fires when the 80 % confidence interval of the metric's slope over the last six epochs lies
    within 25 % of the fastest rate the metric was seen to move at, at two decisions in a row (a
    decision every quarter epoch). The long lookback is what single-pair gradient confusion needs
    (its noise is about its whole range); with less noisy metrics a shorter one fires sooner.
    """

    name: ClassVar[str] = "plateau"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        **TrendDetector.DEFAULTS,
        "metric": "gradient_confusion",
        "lookback": "6ep",
        "confidence": 0.8,
        "min_points": 8,
    }


class FractionSwitch(Detector):
    """Fires at a set fraction of the planned run: the schedule-only null every metric rule must beat.

    The first ``round(fraction * planned_steps)`` optimizer steps (rounded half up) use k copies; the
    detector fires at the first update at or after that step (``fraction=0``: at the first update;
    ``fraction=1``: at the last planned step). ``planned_steps`` is ``max_steps`` when the run is
    planned in steps, else ``steps_per_epoch * num_epochs`` (see :meth:`Detector.configure`).
    """

    name: ClassVar[str] = "fraction"

    def __init__(self, fraction: float = 0.2):
        super().__init__()
        self.fraction = _check_fraction(fraction, "fraction", upper_open=False)

    @property
    def needs_configure(self) -> bool:
        return True

    @property
    def switch_step(self) -> int | None:
        """The last step with k copies (None until configured)."""
        planned = self.planned_steps
        return None if planned is None else _round_half_up(self.fraction * planned)

    def _observe(self, step: int, measured: dict[str, float]) -> bool:
        return step >= self.switch_step

    def _args(self) -> dict[str, Any]:
        return {"fraction": self.fraction}

    def describe(self) -> str:
        return f"fraction({self.fraction:g} of the run)"


# ---- registry -----------------------------------------------------------------------------------

#: Detector classes by :attr:`Detector.name`.
DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        RateDetector,
        PlateauDetector,
        StabilityDetector,
        FukaseConfusionIQR,
        FukaseRotationAngle,
        FractionSwitch,
        FixedSwitch,
        NeverSwitch,
    )
}


def detector_options_of(name: str) -> dict[str, Any]:
    """The options of detector ``name`` (its constructor's keyword arguments) with their defaults."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; allowed: {sorted(DETECTORS)}")
    cls = DETECTORS[name]
    defaults = dict(getattr(cls, "DEFAULTS", {}))
    options = {}
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = parameter.default if parameter.default is not parameter.empty else None
        options[parameter.name] = defaults.get(parameter.name, default)
    return options


def _option_value(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word: a metric name, a span such as 0.5ep


def parse_detector_options(value: object, field_name: str = "detector_options") -> dict[str, Any]:
    """Read detector options: a mapping, a JSON object string or ``"key=value,key=value"`` (None: none).

    Values in the ``key=value`` form are read as JSON where they parse (``3``, ``0.25``, ``true``,
    ``["a", "b"]``), else kept as strings (``metric=layer_rotation``, ``window=0.5ep``).
    """
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        options = dict(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                options = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"`{field_name}` is not valid JSON: {err}; got {value!r}") from None
        else:
            options = {}
            for item in text.split(","):
                if "=" not in item:
                    raise ValueError(
                        f"`{field_name}` must be a JSON object or 'key=value,key=value', got {value!r} "
                        f"(the item {item.strip()!r} has no '=')"
                    )
                key, raw = item.split("=", 1)
                options[key.strip()] = _option_value(raw)
    else:
        raise ValueError(f"`{field_name}` must be a mapping, a JSON object or 'key=value,...', got {value!r}")
    if not all(isinstance(key, str) for key in options):
        raise ValueError(f"`{field_name}` keys must be option names (strings), got {list(options)}")
    return options


def build_detector(name: str, **kwargs: Any) -> Detector:
    """Build the detector registered as ``name`` with its options (constructor keyword arguments).

    An option the detector does not have is refused with the list of those it has.
    """
    allowed = detector_options_of(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"detector {name!r} has no option(s) {unknown}; its options: {sorted(allowed)}")
    return DETECTORS[name](**kwargs)


def detector_from_state(state: Mapping[str, Any]) -> Detector:
    """Rebuild any detector from its :meth:`Detector.state`."""
    if not isinstance(state, Mapping) or "name" not in state:
        raise ValueError(f"a detector state is a mapping with a 'name', got {state!r}")
    if state["name"] not in DETECTORS:
        raise ValueError(f"unknown detector {state['name']!r} in state; allowed: {sorted(DETECTORS)}")
    return DETECTORS[state["name"]].from_state(state)
