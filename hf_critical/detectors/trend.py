"""Trend rules: a Theil-Sen slope over a lookback, flat when its confidence interval is within a fraction of the peak.

`RateDetector` (the default, ``rate``) watches layer rotation per unit of learning rate;
`PlateauDetector` (``plateau``) watches gradient confusion per step. docs/detectors.md has the bench.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .base import Detector, _check_fraction, _check_int, _check_metric, _is_real, parse_span

logger = logging.getLogger(__name__)


PROGRESS_AXES = ("step", "lr")


def theil_sen(xs: Sequence[float], ys: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """Theil-Sen slope of ``ys`` against ``xs`` and its two-sided ``confidence`` interval.

    Returns ``(slope, low, high)``: the median of the pairwise slopes and Sen's distribution-free
    interval, from `scipy.stats.theilslopes` (robust to outliers; it assumes independent noise).
    """
    result = _theilslopes()(np.asarray(ys, dtype=np.float64), np.asarray(xs, dtype=np.float64), alpha=confidence)
    return float(result.slope), float(result.low_slope), float(result.high_slope)


def _theilslopes():
    # scipy.stats takes about 1 s to import: a trend detector imports it when it is built, so that the first
    # decision, inside a training step, does not pay it (`import hf_critical.detectors` stays light).
    from scipy.stats import theilslopes

    return theilslopes


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
        _theilslopes()
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
