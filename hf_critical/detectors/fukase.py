"""Fukase et al. 2025 ("One Period to Rule Them All"): the two per-epoch rules of their reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .base import Detector, _check_int, _check_metric, _is_real, _WindowMeans


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
