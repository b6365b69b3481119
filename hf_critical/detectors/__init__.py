"""Detectors: decide, from the history of the training-dynamics metrics, when the critical period has ended.

A detector is fed after every optimizer step with the global metric values measured at that step
(or ``None`` when the step was not measured) and fires once, at the step where augmentation should
drop from k copies to one. Detectors are plain Python (numpy for percentiles), deterministic, and
their whole state is JSON, so a resumed run fires at the same step as an uninterrupted one::

    detector = build_detector("rate")
    detector.configure(steps_per_epoch=len(train_dataloader), num_epochs=3)
    for step in range(1, max_steps + 1):
        ...
        if detector.update(step, step / steps_per_epoch, values_measured_at(step)):
            print("critical period over:", detector.describe(), detector.values_at_fire)

=========================  ===========================  ==============================================================
Name                       Class (module)               Fires when
=========================  ===========================  ==============================================================
``rate`` (the default)     `RateDetector` (trend)       layer rotation's rate per unit of learning rate has fallen, with
                                                        confidence, well below the fastest rate seen (Theil-Sen slope)
``plateau``                `PlateauDetector` (trend)    gradient confusion's slope per step is flat, with confidence
``stability``              `StabilityDetector`          a metric's window mean stops changing (relative change below
                           (stability)                  ``threshold`` for ``patience`` windows in a row)
``fukase_confusion_iqr``   `FukaseConfusionIQR`         an epoch's mean gradient confusion falls below Q1 - 1.5 IQR
                           (fukase)                     of all epoch means (Fukase et al., 2025, rule a)
``fukase_rotation_angle``  `FukaseRotationAngle`        the line through the last epochs' mean layer rotation is
                           (fukase)                     flatter than 45 degrees (Fukase et al., 2025, rule b)
``fraction``               `FractionSwitch` (baselines) a set fraction of the planned run is reached
``fixed``                  `FixedSwitch` (baselines)    a given optimizer step (or epoch) is reached
``never``                  `NeverSwitch` (baselines)    never (augment the whole run)
=========================  ===========================  ==============================================================

Where things are: `base` (the `Detector` contract, spans, option checks), one module per family
(`trend`, `stability`, `fukase`, `baselines`), `registry` (names, options, building) and `replay`
(the one code path from a ``dynamics.jsonl`` record to a detector's inputs, used live by the switch
callback and offline by the study).

Lengths of windows and warm-ups ("spans") are given as an int or a numeric string (optimizer steps,
``100``, ``"100"``, ``"100 steps"``) or as a string in epochs (``"0.25ep"``, ``"0.5 epoch"``,
``"2 epochs"``); spans in epochs become steps in :meth:`Detector.configure`.
"""

from __future__ import annotations

from .base import Detector, Span, parse_span
from .baselines import FixedSwitch, FractionSwitch, NeverSwitch
from .fukase import FukaseConfusionIQR, FukaseRotationAngle
from .registry import DETECTORS, build_detector, detector_from_state, detector_options_of, parse_detector_options
from .replay import detector_values, learning_rates_from_records, replay_detector
from .stability import StabilityDetector
from .trend import PlateauDetector, RateDetector, TrendDetector, theil_sen

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
    "detector_values",
    "learning_rates_from_records",
    "parse_detector_options",
    "parse_span",
    "replay_detector",
    "theil_sen",
]
