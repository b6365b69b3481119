"""Metrics for the recipes, from `evaluate` modules shipped inside this package (they load offline).

``evaluate.load("glue", ...)`` and ``evaluate.load("accuracy")`` fetch their scripts from the Hub;
the copies in ``hf_critical/evaluate_modules/`` are loaded by path instead and give the same keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .glue import GlueTask, get_glue_task

__all__ = ["METRIC_MODULES", "metric_module_path", "load_metric", "glue_compute_metrics", "accuracy_compute_metrics"]

_MODULES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluate_modules")

#: Names of the metric modules shipped with hf_critical.
METRIC_MODULES = ("glue", "accuracy")


def metric_module_path(name: str) -> str:
    """Folder of the local `evaluate` module ``name`` (pass it to ``evaluate.load``)."""
    if name not in METRIC_MODULES:
        raise ValueError(f"unknown metric module {name!r}; hf_critical ships {list(METRIC_MODULES)}")
    return os.path.join(_MODULES_DIR, name)


def load_metric(name: str, config_name: str | None = None):
    """``evaluate.load`` of a shipped module, by path (works offline)."""
    path = metric_module_path(name)
    try:
        import evaluate
    except ImportError as err:
        raise ImportError("hf_critical's metrics need the `evaluate` package: pip install evaluate") from err
    return evaluate.load(path, config_name)


def _logits(predictions) -> np.ndarray:
    # Models that return extra outputs (hidden states...) give a tuple; the logits come first.
    return predictions[0] if isinstance(predictions, tuple) else predictions


def glue_compute_metrics(task: str | GlueTask) -> Callable:
    """A ``compute_metrics`` for `Trainer`: GLUE's metric(s) for ``task``, plus ``combined_score`` when there are two."""
    task = task if isinstance(task, GlueTask) else get_glue_task(task)
    metric = load_metric("glue", task.name)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = _logits(eval_prediction.predictions)
        predictions = np.squeeze(logits, axis=-1) if task.is_regression else np.argmax(logits, axis=-1)
        result = metric.compute(predictions=predictions, references=eval_prediction.label_ids)
        if len(result) > 1:
            result["combined_score"] = float(np.mean(list(result.values())))
        return result

    return compute_metrics


def accuracy_compute_metrics() -> Callable:
    """A ``compute_metrics`` for `Trainer`: classification accuracy (argmax of the logits)."""
    metric = load_metric("accuracy")

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions = np.argmax(_logits(eval_prediction.predictions), axis=-1)
        return metric.compute(predictions=predictions, references=eval_prediction.label_ids)

    return compute_metrics
