"""The schedule-only baselines every metric rule is compared with: fixed step, fraction of the run, never.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from .base import Detector, _check_fraction, _check_int, _is_real, _round_half_up


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
