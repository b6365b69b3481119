"""`MetricResult`: what every metric returns (a global value, per-layer values, counts of skipped layers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SKIP_REASONS = ("missing", "non_finite", "zero_norm")


@dataclass
class MetricResult:
    """The value of one metric at one measurement.

    Attributes:
        value: The global value, or ``None`` when no layer could be measured.
        per_layer: One value per measured layer, keyed by layer name.
        skipped: Number of layers skipped, by reason (``missing``, ``non_finite``, ``zero_norm``).
            For gradient confusion with several pairs, a layer is counted once per pair it was
            skipped in.
        extra: Secondary values (``min`` and ``num_pairs`` for confusion, ``weighted_mean`` for
            layer rotation).
    """

    value: float | None
    per_layer: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    extra: dict[str, float | int | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``value``, the extras, ``per_layer`` and ``skipped``."""
        return {"value": self.value, **self.extra, "per_layer": dict(self.per_layer), "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, data: Mapping) -> MetricResult:
        """Inverse of :meth:`to_dict`."""
        extra = {k: v for k, v in data.items() if k not in ("value", "per_layer", "skipped")}
        return cls(data["value"], dict(data["per_layer"]), dict(data["skipped"]), extra)
