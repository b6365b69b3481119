"""The local evaluate modules load offline and agree with scikit-learn / scipy computed directly."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef
from transformers import EvalPrediction

from hf_critical.evaluation import glue_compute_metrics, load_metric, metric_module_path

PREDS = np.array([0, 1, 1, 0, 1, 0, 0, 1])
REFS = np.array([0, 1, 0, 0, 1, 1, 0, 1])


def test_glue_module_matches_direct_computation():
    accuracy = float((PREDS == REFS).mean())
    assert load_metric("glue", "sst2").compute(predictions=PREDS, references=REFS) == {"accuracy": accuracy}
    mrpc = load_metric("glue", "mrpc").compute(predictions=PREDS, references=REFS)
    assert mrpc == pytest.approx({"accuracy": accuracy, "f1": f1_score(REFS, PREDS)})
    cola = load_metric("glue", "cola").compute(predictions=PREDS, references=REFS)
    assert cola == pytest.approx({"matthews_correlation": matthews_corrcoef(REFS, PREDS)})
    scores, gold = np.array([0.1, 2.0, 3.5, 4.9]), np.array([0.0, 2.5, 3.0, 5.0])
    stsb = load_metric("glue", "stsb").compute(predictions=scores, references=gold)
    assert stsb == pytest.approx({"pearson": pearsonr(scores, gold)[0], "spearmanr": spearmanr(scores, gold)[0]}, rel=1e-5)


def test_accuracy_module_and_unknown_names():
    assert load_metric("accuracy").compute(predictions=[0, 1, 2], references=[0, 1, 1]) == pytest.approx({"accuracy": 2 / 3})
    with pytest.raises(ValueError, match=r"unknown metric module 'bleu'; hf_critical ships \['glue', 'accuracy'\]"):
        metric_module_path("bleu")
    with pytest.raises(KeyError, match="configuration name"):
        load_metric("glue", "sst3")


def test_compute_metrics_from_logits():
    logits = np.stack([1 - PREDS, PREDS], axis=1).astype(np.float32)
    result = glue_compute_metrics("mrpc")(EvalPrediction(predictions=(logits, np.zeros(3)), label_ids=REFS))
    assert result["combined_score"] == pytest.approx((result["accuracy"] + result["f1"]) / 2)
    regression = glue_compute_metrics("stsb")(
        EvalPrediction(predictions=np.array([[0.1], [2.0], [3.5]]), label_ids=np.array([0.0, 2.5, 3.0]))
    )
    assert set(regression) == {"pearson", "spearmanr", "combined_score"}


def test_metric_modules_ship_with_the_package():
    """setup.cfg's `packages = find:` picks the module folders up (each has an __init__.py)."""
    from setuptools import find_packages

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    packages = find_packages(root, include=["hf_critical", "hf_critical.*"])
    assert {"hf_critical.evaluate_modules.glue", "hf_critical.evaluate_modules.accuracy"} <= set(packages)
    for name in ("glue", "accuracy"):
        assert os.path.isfile(os.path.join(metric_module_path(name), f"{name}.py"))
