"""Metrics for the recipes through `evaluate`: the Hub module when it loads, else the copy shipped here.

``evaluate.load("glue", "sst2")`` and ``evaluate.load("accuracy")`` fetch their scripts from the
Hub (or its cache) and fail offline. `load_metric` tries that first and falls back to the copies in
``hf_critical/experiments/evaluate_modules/``, loaded by path (``evaluate.load(<folder>)``), which give the same
result keys. The returned `LoadedMetric` says which one scores (``source`` "hub" or "local"); the
recipes log it and store ``LoadedMetric.describe()`` in the results JSON under ``run.metric``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..extras import require
from .glue import GlueTask, get_glue_task

__all__ = [
    "METRIC_MODULES",
    "ComputeMetrics",
    "LoadedMetric",
    "accuracy_compute_metrics",
    "glue_compute_metrics",
    "load_local_metric",
    "load_metric",
    "metric_module_path",
]

logger = logging.getLogger(__name__)

_MODULES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluate_modules")

#: Names of the metric modules shipped with hf_critical (the same names as evaluate's Hub modules).
METRIC_MODULES = ("glue", "accuracy")


def metric_module_path(name: str) -> str:
    """Folder of the local `evaluate` module ``name`` (pass it to ``evaluate.load``)."""
    if name not in METRIC_MODULES:
        raise ValueError(f"unknown metric module {name!r}; hf_critical ships {list(METRIC_MODULES)}")
    return os.path.join(_MODULES_DIR, name)


#: What the shipped copies import besides `evaluate` and `datasets` (checked before loading one).
_SHIPPED_MODULE_NEEDS = {"glue": ("sklearn",), "accuracy": ()}


def _evaluate():
    return require("evaluate", "hf_critical's metrics")


def _load_shipped(evaluate, name: str, config_name: str | None):
    for module in _SHIPPED_MODULE_NEEDS[name]:
        require(module, f"the {name} metric shipped with hf_critical")
    return evaluate.load(metric_module_path(name), config_name)


def load_local_metric(name: str, config_name: str | None = None):
    """``evaluate.load`` of the module shipped with hf_critical, by path (works offline)."""
    metric_module_path(name)  # checks the name before anything is imported
    return _load_shipped(_evaluate(), name, config_name)


@dataclass(frozen=True)
class LoadedMetric:
    """An `evaluate` module and where it came from.

    Attributes:
        module: the ``evaluate.EvaluationModule``.
        name, config_name: what was asked for (``"glue"``, ``"sst2"``).
        source: ``"hub"`` (evaluate's Hub module, possibly from its cache) or ``"local"`` (the copy
            shipped with hf_critical).
        location: the Hub module's name, or the shipped module's folder.
        hub_error: why the Hub module could not be loaded (None when it was, or not tried).
    """

    module: Any
    name: str
    config_name: str | None
    source: str
    location: str
    hub_error: str | None = None

    def describe(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "config_name": self.config_name,
            "source": self.source,
            "location": self.location,
            "hub_error": self.hub_error,
        }


def load_metric(name: str, config_name: str | None = None, prefer_hub: bool = True) -> LoadedMetric:
    """evaluate's Hub module ``name`` if it loads, else the copy shipped with hf_critical.

    Args:
        name: one of `METRIC_MODULES`.
        config_name: the module's configuration (GLUE's task name), or None.
        prefer_hub: False skips the Hub and loads the shipped copy directly.

    Logs which one it loaded (a warning when it falls back).
    """
    path = metric_module_path(name)  # checks the name before anything is loaded
    evaluate = _evaluate()
    label = name if config_name is None else f"{name}/{config_name}"
    hub_error = None
    if prefer_hub:
        try:
            module = evaluate.load(name, config_name)
        except Exception as err:  # offline, Hub unreachable, module moved: the shipped copy scores the same
            hub_error = f"{type(err).__name__}: {err}"[:300]
        else:
            logger.info("metric %s: evaluate's Hub module", label)
            return LoadedMetric(module, name, config_name, source="hub", location=name)
    module = _load_shipped(evaluate, name, config_name)
    if hub_error is not None:
        logger.warning(
            "metric %s: evaluate.load(%r) failed (%s); using the copy shipped with hf_critical (%s)",
            label, name, hub_error, path,
        )  # fmt: skip
    else:
        logger.info("metric %s: the copy shipped with hf_critical (%s)", label, path)
    return LoadedMetric(module, name, config_name, source="local", location=path, hub_error=hub_error)


def _logits(predictions) -> np.ndarray:
    # Models that return extra outputs (hidden states...) give a tuple; the logits come first.
    return predictions[0] if isinstance(predictions, tuple) else predictions


class ComputeMetrics:
    """A ``compute_metrics`` for `Trainer` that scores through an `evaluate` module.

    Args:
        metric: the `LoadedMetric` (``metric.source`` says whether the Hub's or the shipped copy scores).
        regression: predictions are the single logit (STS-B), not the argmax.
        combined_score: add the mean of the results as ``combined_score`` when there are several
            (as transformers' ``run_glue.py`` does).
    """

    def __init__(self, metric: LoadedMetric, regression: bool = False, combined_score: bool = False):
        self.metric = metric
        self.regression = regression
        self.combined_score = combined_score

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(metric={self.metric.name!r}, config_name={self.metric.config_name!r}, "
            f"source={self.metric.source!r}, regression={self.regression})"
        )

    def __call__(self, eval_prediction) -> dict[str, float]:
        logits = _logits(eval_prediction.predictions)
        predictions = np.squeeze(logits, axis=-1) if self.regression else np.argmax(logits, axis=-1)
        result = self.metric.module.compute(predictions=predictions, references=eval_prediction.label_ids)
        result = {key: float(value) for key, value in result.items()}
        if self.combined_score and len(result) > 1:
            result["combined_score"] = float(np.mean(list(result.values())))
        return result


def glue_compute_metrics(task: str | GlueTask, prefer_hub: bool = True) -> ComputeMetrics:
    """GLUE's metric(s) for ``task``, plus ``combined_score`` when there are two."""
    task = task if isinstance(task, GlueTask) else get_glue_task(task)
    return ComputeMetrics(load_metric("glue", task.name, prefer_hub), regression=task.is_regression, combined_score=True)


def accuracy_compute_metrics(prefer_hub: bool = True) -> ComputeMetrics:
    """Classification accuracy (argmax of the logits)."""
    return ComputeMetrics(load_metric("accuracy", prefer_hub=prefer_hub))
