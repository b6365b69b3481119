"""The detector registry: names, options declared once (the constructor's signature), building and rebuilding.

Adding a detector is one new module in this package and one line in `DETECTORS`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

from .base import Detector
from .baselines import FixedSwitch, FractionSwitch, NeverSwitch
from .fukase import FukaseConfusionIQR, FukaseRotationAngle
from .stability import StabilityDetector
from .trend import PlateauDetector, RateDetector

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
