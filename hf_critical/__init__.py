"""hf_critical: detect the end of the critical period of training and cut data augmentation there.

One import changes a `transformers.Trainer` script into one that measures gradient confusion,
gradient predictability and layer rotation::

    from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer
"""

from .arguments import METRIC_NAMES, CriticalPeriodArguments
from .callback import DynamicsCallback
from .metrics import MetricResult, gradient_confusion, gradient_predictability, layer_rotation
from .trainer import CriticalPeriodTrainer

__version__ = "0.1.0"

__all__ = [
    "METRIC_NAMES",
    "CriticalPeriodArguments",
    "CriticalPeriodTrainer",
    "DynamicsCallback",
    "MetricResult",
    "gradient_confusion",
    "gradient_predictability",
    "layer_rotation",
]
