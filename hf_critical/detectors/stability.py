"""`StabilityDetector`: the seed's rule, fires when a metric's window mean stops changing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from ..names import METRIC_NAMES, normalize_metric_names
from .base import _RELATIVE_FLOOR, Detector, _check_int, _is_real, _WindowMeans, parse_span

#: The metric the stability rule watches by default (also the default of ``detector_metrics``).
DEFAULT_METRICS = ("layer_rotation",)


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
        metrics: str | Iterable[str] = DEFAULT_METRICS,
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
