"""hf_critical: detect the end of the critical period of training and cut data augmentation there.

One import changes a `transformers.Trainer` script into one that measures gradient confusion,
gradient predictability and layer rotation, and switches k-copy augmentation to one copy when
the detector fires::

    from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer
"""

from .arguments import DETECTOR_NAMES, METRIC_NAMES, CriticalPeriodArguments
from .augmentation import (
    AugmentationCollator,
    ImageAugmentationCollator,
    TextAugmentationCollator,
    default_text_augmenter,
)
from .callback import DynamicsCallback
from .detectors import (
    Detector,
    FixedSwitch,
    FukaseConfusionIQR,
    FukaseRotationAngle,
    NeverSwitch,
    StabilityDetector,
    build_detector,
)
from .metrics import MetricResult, gradient_confusion, gradient_predictability, layer_rotation
from .robustness import RobustnessArguments, image_robustness, robustness_columns, text_robustness
from .switch import CriticalPeriodCallback
from .trainer import CriticalPeriodTrainer

__version__ = "0.1.0"

__all__ = [
    "DETECTOR_NAMES",
    "METRIC_NAMES",
    "AugmentationCollator",
    "CriticalPeriodArguments",
    "CriticalPeriodCallback",
    "CriticalPeriodTrainer",
    "Detector",
    "DynamicsCallback",
    "FixedSwitch",
    "FukaseConfusionIQR",
    "FukaseRotationAngle",
    "ImageAugmentationCollator",
    "MetricResult",
    "NeverSwitch",
    "RobustnessArguments",
    "StabilityDetector",
    "TextAugmentationCollator",
    "build_detector",
    "default_text_augmenter",
    "gradient_confusion",
    "gradient_predictability",
    "image_robustness",
    "layer_rotation",
    "robustness_columns",
    "text_robustness",
]
