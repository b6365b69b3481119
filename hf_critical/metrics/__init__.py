"""Training-dynamics metrics as pure functions on tensors.

Each function takes gradients or weights as mappings from a layer name to a tensor and returns a
:class:`MetricResult` with a global value, one value per layer, and counts of what was skipped.

* :func:`gradient_confusion` -- cosine between the gradients of distinct mini-batches taken at the
  same parameters (Sankararaman et al., "The Impact of Neural Network Overparameterization on
  Gradient Confusion and Stochastic Gradient Descent", ICML 2020).
* :func:`gradient_predictability` -- cosine between a gradient and a later one (Chen et al.,
  ICLR 2023).
* :func:`layer_rotation` -- ``1 - cos(theta_0, theta_t)`` per layer (Carbonnelle & De
  Vleeschouwer, "Layer rotation: a surprisingly simple indicator of generalization in deep
  networks?", 2019).

The reductions run per tensor on the tensors' own device, accumulate in float32 whatever the
tensors' dtype, and synchronise with the host once per call. A layer whose tensor is missing
(``None``), non-finite, or of zero norm is skipped and counted in ``MetricResult.skipped``; the
global value is computed over the remaining layers and is ``None`` (never NaN) when none remain.

Where things are: one module per metric (`confusion`, `predictability`, `rotation`), the result type
(`result`), the shared reductions (`reductions`), which parameters are measured (`layers`), LoRA's
effective weights (`lora`), the gradient kept between two steps (`gradient_snapshot`) and the
bounded-memory sketches (`sketch`).
"""

from __future__ import annotations

from .confusion import PairwiseGradientCosines, confusion_from_norms, confusion_result, gradient_confusion
from .predictability import gradient_predictability
from .reductions import dot_products, local_shard, squared_norms
from .result import SKIP_REASONS, MetricResult
from .rotation import layer_rotation

__all__ = [
    "MetricResult",
    "SKIP_REASONS",
    "gradient_confusion",
    "gradient_predictability",
    "layer_rotation",
    "squared_norms",
    "dot_products",
    "PairwiseGradientCosines",
    "confusion_result",
    "confusion_from_norms",
    "local_shard",
]
