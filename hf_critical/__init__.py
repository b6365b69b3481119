"""hf_critical: detect the end of the critical period of training and cut data augmentation there.

One import changes a `transformers.Trainer` script into one that measures gradient confusion,
gradient predictability and layer rotation, and switches k-copy augmentation to one copy when
the detector fires::

    from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer

Names are imported lazily, on first use: ``import hf_critical.detectors`` loads neither torch nor
transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._modules import lazy_exports

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "DETECTOR_NAMES": "arguments",
    "CriticalPeriodArguments": "arguments",
    "METRIC_NAMES": "names",
    "AugmentationCollator": "augmentation",
    "ImageAugmentationCollator": "augmentation",
    "TextAugmentationCollator": "augmentation",
    "default_text_augmenter": "augmentation",
    "DynamicsCallback": "callbacks",
    "Detector": "detectors",
    "FixedSwitch": "detectors",
    "FractionSwitch": "detectors",
    "FukaseConfusionIQR": "detectors",
    "FukaseRotationAngle": "detectors",
    "NeverSwitch": "detectors",
    "PlateauDetector": "detectors",
    "RateDetector": "detectors",
    "StabilityDetector": "detectors",
    "TrendDetector": "detectors",
    "build_detector": "detectors",
    "MetricResult": "metrics",
    "gradient_confusion": "metrics",
    "gradient_predictability": "metrics",
    "layer_rotation": "metrics",
    "RobustnessArguments": "experiments.robustness",
    "image_robustness": "experiments.robustness",
    "robustness_columns": "experiments.robustness",
    "text_robustness": "experiments.robustness",
    "CriticalPeriodCallback": "callbacks",
    "CriticalPeriodTrainer": "trainer",
    "RunState": "state",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .arguments import DETECTOR_NAMES, CriticalPeriodArguments
    from .augmentation import (
        AugmentationCollator,
        ImageAugmentationCollator,
        TextAugmentationCollator,
        default_text_augmenter,
    )
    from .callbacks import CriticalPeriodCallback, DynamicsCallback
    from .detectors import (
        Detector,
        FixedSwitch,
        FractionSwitch,
        FukaseConfusionIQR,
        FukaseRotationAngle,
        NeverSwitch,
        PlateauDetector,
        RateDetector,
        StabilityDetector,
        TrendDetector,
        build_detector,
    )
    from .experiments.robustness import RobustnessArguments, image_robustness, robustness_columns, text_robustness
    from .metrics import MetricResult, gradient_confusion, gradient_predictability, layer_rotation
    from .names import METRIC_NAMES
    from .state import RunState
    from .trainer import CriticalPeriodTrainer
