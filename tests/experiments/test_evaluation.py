"""The local evaluate modules load offline, agree with scikit-learn / scipy, and stand in when the Hub module fails."""

from __future__ import annotations

import logging
import os

import evaluate
import numpy as np
import pytest
from helpers import REPO_ROOT
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef
from transformers import EvalPrediction

from hf_critical.experiments.evaluation import (
    accuracy_compute_metrics,
    glue_compute_metrics,
    load_local_metric,
    load_metric,
    metric_module_path,
)

PREDS = np.array([0, 1, 1, 0, 1, 0, 0, 1])
REFS = np.array([0, 1, 0, 0, 1, 1, 0, 1])


def test_glue_module_matches_direct_computation():
    accuracy = float((PREDS == REFS).mean())
    assert load_local_metric("glue", "sst2").compute(predictions=PREDS, references=REFS) == {"accuracy": accuracy}
    mrpc = load_local_metric("glue", "mrpc").compute(predictions=PREDS, references=REFS)
    assert mrpc == pytest.approx({"accuracy": accuracy, "f1": f1_score(REFS, PREDS)})
    cola = load_local_metric("glue", "cola").compute(predictions=PREDS, references=REFS)
    assert cola == pytest.approx({"matthews_correlation": matthews_corrcoef(REFS, PREDS)})
    scores, gold = np.array([0.1, 2.0, 3.5, 4.9]), np.array([0.0, 2.5, 3.0, 5.0])
    stsb = load_local_metric("glue", "stsb").compute(predictions=scores, references=gold)
    assert stsb == pytest.approx({"pearson": pearsonr(scores, gold)[0], "spearmanr": spearmanr(scores, gold)[0]}, rel=1e-5)


def test_accuracy_module_and_unknown_names():
    assert load_local_metric("accuracy").compute(predictions=[0, 1, 2], references=[0, 1, 1]) == pytest.approx({"accuracy": 2 / 3})
    with pytest.raises(ValueError, match=r"unknown metric module 'bleu'; hf_critical ships \['glue', 'accuracy'\]"):
        metric_module_path("bleu")
    with pytest.raises(KeyError, match="configuration name"):
        load_local_metric("glue", "sst3")


def test_compute_metrics_from_logits():
    logits = np.stack([1 - PREDS, PREDS], axis=1).astype(np.float32)
    result = glue_compute_metrics("mrpc")(EvalPrediction(predictions=(logits, np.zeros(3)), label_ids=REFS))
    assert result["combined_score"] == pytest.approx((result["accuracy"] + result["f1"]) / 2)
    regression = glue_compute_metrics("stsb")(
        EvalPrediction(predictions=np.array([[0.1], [2.0], [3.5]]), label_ids=np.array([0.0, 2.5, 3.0]))
    )
    assert set(regression) == {"pearson", "spearmanr", "combined_score"}


def hub_unreachable(monkeypatch):
    """evaluate.load fails for Hub names (as offline) and loads local paths as usual."""
    real_load = evaluate.load
    tried = []

    def load(path, *args, **kwargs):
        if not os.path.isabs(path):
            tried.append(path)
            raise ConnectionError(f"cannot reach the Hub for {path}")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(evaluate, "load", load)
    return tried


def test_the_shipped_copy_scores_when_the_hub_module_fails(monkeypatch, caplog):
    tried = hub_unreachable(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="hf_critical.experiments.evaluation"):
        loaded = load_metric("glue", "mrpc")
    assert tried == ["glue"]
    assert loaded.source == "local" and loaded.location == metric_module_path("glue")
    assert loaded.describe()["hub_error"].startswith("ConnectionError: cannot reach the Hub for glue")
    assert "evaluate.load('glue') failed" in caplog.text and "shipped with hf_critical" in caplog.text
    compute = accuracy_compute_metrics()
    assert compute.metric.source == "local" and tried == ["glue", "accuracy"]
    assert "source='local'" in repr(compute)


def test_the_hub_module_is_preferred_when_it_loads(monkeypatch):
    class FakeHubAccuracy:
        def compute(self, predictions, references):
            return {"accuracy": np.float64(np.mean(np.asarray(predictions) == np.asarray(references)))}

    monkeypatch.setattr(evaluate, "load", lambda path, config_name=None: FakeHubAccuracy())
    compute = accuracy_compute_metrics()
    assert compute.metric.describe() == {
        "name": "accuracy", "config_name": None, "source": "hub", "location": "accuracy", "hub_error": None,
    }  # fmt: skip
    logits = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert compute(EvalPrediction(predictions=logits, label_ids=np.array([0, 0]))) == {"accuracy": 0.5}


def test_offline_the_hub_module_fails_and_the_shipped_copy_scores():
    """`make test` sets HF_HUB_OFFLINE=1: the real evaluate.load of "glue" fails and the fallback is taken."""
    import huggingface_hub

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (as `make test` sets)")
    loaded = load_metric("glue", "sst2")
    assert loaded.source == "local" and loaded.hub_error
    assert loaded.module.compute(predictions=PREDS, references=REFS) == {"accuracy": float((PREDS == REFS).mean())}


def test_metric_modules_ship_with_the_package():
    """setup.cfg's `packages = find:` picks the module folders up (each has an __init__.py)."""
    from setuptools import find_packages

    packages = find_packages(REPO_ROOT, include=["hf_critical", "hf_critical.*"])
    assert {"hf_critical.experiments.evaluate_modules.glue", "hf_critical.experiments.evaluate_modules.accuracy"} <= set(packages)
    for name in ("glue", "accuracy"):
        assert os.path.isfile(os.path.join(metric_module_path(name), f"{name}.py"))
