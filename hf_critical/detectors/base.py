"""The detector contract: `Detector` (JSON state, spans, fire-once), the option checks and the span parser.

Every rule in this package subclasses `Detector`; `hf_critical.detectors.registry` lists them by name.
"""

from __future__ import annotations

import copy
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..names import METRIC_NAMES

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


def _check_fraction(value: object, field_name: str, *, upper_open: bool = True) -> float:
    ok = _is_real(value) and math.isfinite(value) and value >= 0 and (value < 1 if upper_open else value <= 1)
    if not ok:
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"`{field_name}` must be a number in {bound}, got {value!r}")
    return float(value)


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
            from .registry import detector_from_state  # the registry imports every detector module

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
