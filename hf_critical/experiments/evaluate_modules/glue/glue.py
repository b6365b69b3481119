"""GLUE metrics as a local `evaluate` module: load it with ``evaluate.load(<this folder>, "sst2")``.

A local copy because ``evaluate.load("glue", ...)`` fetches its script from the Hub and fails
offline. Same configurations and result keys as the Hub's ``glue`` metric:

* cola: ``matthews_correlation``;
* stsb: ``pearson``, ``spearmanr`` (predictions and references are floats);
* mrpc, qqp: ``accuracy``, ``f1``;
* sst2, mnli, mnli_mismatched, mnli_matched, qnli, rte, wnli, hans: ``accuracy``.

evaluate scans this file for imports to check they are installed: one module per import line.
"""

import datasets
import evaluate
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  note={In the Proceedings of ICLR.},
  year={2019}
}
"""

_DESCRIPTION = """\
GLUE, the General Language Understanding Evaluation benchmark, is a collection of resources for training,
evaluating, and analyzing natural language understanding systems. This module computes the metric GLUE
reports for each task.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (class indices), or predicted scores for stsb.
    references: gold labels, or gold scores for stsb.
Returns:
    accuracy (sst2, mnli*, qnli, rte, wnli, hans, mrpc, qqp), f1 (mrpc, qqp),
    pearson and spearmanr (stsb), matthews_correlation (cola).
"""

CLASSIFICATION_CONFIGS = ("sst2", "mnli", "mnli_mismatched", "mnli_matched", "qnli", "rte", "wnli", "hans")
CONFIGS = ("cola", "stsb", "mrpc", "qqp") + CLASSIFICATION_CONFIGS


def simple_accuracy(preds, labels):
    return float(sum(int(p == y) for p, y in zip(preds, labels)) / len(labels))


def acc_and_f1(preds, labels):
    return {"accuracy": simple_accuracy(preds, labels), "f1": float(f1_score(y_true=labels, y_pred=preds))}


def pearson_and_spearman(preds, labels):
    return {"pearson": float(pearsonr(preds, labels)[0]), "spearmanr": float(spearmanr(preds, labels)[0])}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Glue(evaluate.Metric):
    def _info(self):
        if self.config_name not in CONFIGS:
            raise KeyError(f"You should supply a configuration name selected in {list(CONFIGS)}, got {self.config_name!r}")
        value_type = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value(value_type), "references": datasets.Value(value_type)}
            ),
            codebase_urls=[],
            reference_urls=[],
            format="numpy",
        )

    def _compute(self, predictions, references):
        if len(references) == 0:
            raise ValueError("no predictions to score")
        if self.config_name == "cola":
            return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
        if self.config_name == "stsb":
            return pearson_and_spearman(predictions, references)
        if self.config_name in ("mrpc", "qqp"):
            return acc_and_f1(predictions, references)
        return {"accuracy": simple_accuracy(predictions, references)}
