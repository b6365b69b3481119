"""A bench for detectors: synthetic metric streams with known answers, fed exactly as the trainer feeds them.

`CriticalPeriodCallback` calls ``detector.update(step, epoch, values, learning_rate)`` after every
optimizer step, with the metric values on measured steps (every ``every`` steps) and ``None`` on
the others. :func:`simulate` does the same with a synthetic stream, so any detector (ours or a
user's) can be checked against curves whose end of movement is known::

    from hf_critical.experiments.detector_bench import Plan, saturating, simulate
    stream = saturating(tau=5.0)
    fired = simulate(lambda: build_detector("rate"), stream, Plan(steps_per_epoch=8, every=2, epochs=60))
    print(fired, stream.knee_epoch(Plan(8, 2, 60)))

Streams are functions of *progress* ``u``: epochs trained at the peak learning rate. Under a constant
learning rate ``u`` is the epoch; under a decaying schedule metric increments are proportional to
the learning rate, as they are for a cumulative metric such as layer rotation. The truth of a
stream is its *knee*: the progress at which its rate has fallen below `KNEE_FRACTION` of its peak
(``None``: it never settles). `benchmarks/detectors.py` prints the scorecard of every detector;
``tests/experiments/test_detector_bench.py`` holds the properties the default detectors must keep.

Noise levels from real logs (``dynamics.jsonl`` of the digits ViT at the ``make demo`` settings,
detector ``never``, a measurement every 2 steps), printed by ``benchmarks/replay_detectors.py
--run``: the robust standard deviation of single-pair gradient confusion about its trend was 0.28
and 0.25 (seeds 0 and 1) in the runs the bench's tables were made with, and 0.26 in a rerun with
the current augmentation seeding; with the mean over the 6 pairs of 4 chunks, 0.15 and then 0.13.
The bench takes the noisier values, `SINGLE_PAIR_NOISE` = 0.28 and `MULTI_PAIR_NOISE` = 0.15.
Confusion's mean falls from about 0.30 in the first quarter of the run to 0.07 in the last; layer
rotation's noise is 0.001 on a rise from 0 to 0.36.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "KNEE_FRACTION",
    "MULTI_PAIR_NOISE",
    "SINGLE_PAIR_NOISE",
    "Plan",
    "Stream",
    "detectable_slope",
    "linear",
    "noisy_decay",
    "noisy_trend",
    "power_law",
    "saturating",
    "simulate",
    "sqrt_growth",
]

#: A stream's knee: the progress where its rate has fallen below this fraction of its peak rate.
KNEE_FRACTION = 0.25
#: Robust std of single-pair gradient confusion about its trend in real logs (see the module docstring).
SINGLE_PAIR_NOISE = 0.28
#: The same with confusion averaged over the 6 pairs of 4 chunks of 16 samples (0.147 and 0.126 in two runs).
MULTI_PAIR_NOISE = 0.15

METRICS = ("gradient_confusion", "gradient_predictability", "layer_rotation")
SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class Plan:
    """How the trainer feeds a detector: steps per epoch, a measurement every ``every`` steps, run length."""

    steps_per_epoch: int
    every: int
    epochs: float
    schedule: str = "constant"

    @property
    def total_steps(self) -> int:
        return max(1, math.ceil(self.steps_per_epoch * self.epochs))

    def learning_rates(self, peak: float = 1e-3) -> np.ndarray:
        """The learning rate of each optimizer step 1..total_steps (no warm-up)."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        t = np.arange(self.total_steps, dtype=np.float64) / self.total_steps
        if self.schedule == "constant":
            shape = np.ones_like(t)
        elif self.schedule == "cosine":
            shape = 0.5 * (1 + np.cos(math.pi * t))
        else:
            shape = 1 - t
        return peak * shape

    def progress(self) -> np.ndarray:
        """Progress ``u`` after each step: epochs at the peak learning rate."""
        rates = self.learning_rates()
        return np.cumsum(rates / rates[0]) / self.steps_per_epoch


@dataclass(frozen=True)
class Stream:
    """A synthetic metric: ``curve(u)`` plus Gaussian noise of std ``noise``, and its known knee.

    Args:
        name: For tables.
        curve: The noise-free value as a function of progress (numpy in, numpy out).
        knee: Progress at the knee (None: never settles; ``math.nan``: no time scale, no truth).
        noise: Standard deviation of the independent noise added to each measurement.
        tau: The time scale, for delays in units of it (None if none).
    """

    name: str
    curve: Callable[[np.ndarray], np.ndarray]
    knee: float | None
    noise: float = 0.0
    tau: float | None = None

    def knee_epoch(self, plan: Plan) -> float | None:
        """The epoch at which a run with ``plan`` reaches the knee (None: not within the run, or never)."""
        if self.knee is None or math.isnan(self.knee):
            return None
        reached = np.nonzero(plan.progress() >= self.knee)[0]
        return None if reached.size == 0 else float(reached[0] + 1) / plan.steps_per_epoch

    def values(self, plan: Plan, seed: int, scale: float = 1.0) -> np.ndarray:
        """The metric after each step (noise drawn for every step; only measured steps are fed)."""
        rng = np.random.default_rng(seed)
        clean = self.curve(plan.progress())
        return scale * (clean + self.noise * rng.standard_normal(clean.shape))


def linear(slope: float = 0.01) -> Stream:
    """A metric that grows at a constant rate for the whole run: never stable."""
    return Stream(f"linear({slope:g}/ep)", lambda u: slope * u, None)


def saturating(tau: float) -> Stream:
    """``1 - exp(-u / tau)``: its rate falls below `KNEE_FRACTION` of its peak at ``tau * ln(1 / fraction)``."""
    return Stream(f"exp(tau={tau:g})", lambda u: 1 - np.exp(-u / tau), tau * math.log(1 / KNEE_FRACTION), tau=tau)


def power_law(tau: float) -> Stream:
    """``1 - 1 / (1 + u / tau)``: rate ``(1 + u / tau) ** -2``, below `KNEE_FRACTION` of its peak at ``tau * (fraction ** -0.5 - 1)``."""
    knee = tau * (KNEE_FRACTION**-0.5 - 1)
    return Stream(f"power(tau={tau:g})", lambda u: 1 - 1 / (1 + u / tau), knee, tau=tau)


def sqrt_growth() -> Stream:
    """``sqrt(u)``: slows down for ever with no time scale of its own; no rule can place a knee on it."""
    return Stream("sqrt", np.sqrt, math.nan)


def noisy_decay(tau: float, noise: float, start: float = 0.4, end: float = 0.1) -> Stream:
    """Gradient confusion as in real logs: ``end + (start - end) * exp(-u / tau)`` plus noise."""
    knee = tau * math.log(1 / KNEE_FRACTION)
    return Stream(
        f"decay(tau={tau:g}, noise={noise:g})", lambda u: end + (start - end) * np.exp(-u / tau), knee, noise, tau
    )


def noisy_trend(slope: float, noise: float, level: float = 0.3) -> Stream:
    """A steady trend (``slope`` per epoch, either sign) under noise: never stable."""
    return Stream(f"trend({slope:+.3g}/ep, noise={noise:g})", lambda u: level + slope * u, None, noise)


def detectable_slope(noise: float, plan: Plan, window_epochs: float = 0.25, standard_errors: float = 3.0) -> float:
    """The slope per epoch that moves a window mean by ``standard_errors`` of its standard error per window."""
    per_window = max(1.0, window_epochs * plan.steps_per_epoch / plan.every)
    return standard_errors * noise / math.sqrt(per_window) / window_epochs


def simulate(
    make_detector: Callable[[], object],
    stream: Stream,
    plan: Plan,
    seed: int = 0,
    scale: float = 1.0,
    metrics: Sequence[str] = METRICS,
) -> float | None:
    """Feed ``stream`` to a fresh detector as the trainer would; the epoch it fires at (None: never).

    The same values go under every name in ``metrics``, so each detector reads the metric it watches.
    """
    detector = make_detector()
    detector.configure(steps_per_epoch=plan.steps_per_epoch, num_epochs=float(plan.epochs))
    values = stream.values(plan, seed, scale)
    rates = plan.learning_rates()
    for index in range(plan.total_steps):
        step = index + 1
        measured = {name: float(values[index]) for name in metrics} if step % plan.every == 0 else None
        if detector.update(step, step / plan.steps_per_epoch, measured, learning_rate=float(rates[index])):
            return step / plan.steps_per_epoch
    return None
