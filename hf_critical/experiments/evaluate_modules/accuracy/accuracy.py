"""Accuracy as a local `evaluate` module: ``evaluate.load(<this folder>)``.

A local copy because ``evaluate.load("accuracy")`` fetches its script from the Hub and fails offline.
Same result key as the Hub's ``accuracy`` metric. One module per import line (evaluate scans them).
"""

import datasets
import evaluate

_DESCRIPTION = "Accuracy: the fraction of predictions equal to their reference label."

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (class indices).
    references: gold labels.
Returns:
    accuracy: a float in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=[],
            format="numpy",
        )

    def _compute(self, predictions, references):
        if len(references) == 0:
            raise ValueError("no predictions to score")
        return {"accuracy": float((predictions == references).mean())}
