"""Gradient confusion: the cosine between gradients of distinct mini-batches at the same parameters.

Sankararaman et al., "The Impact of Neural Network Overparameterization on Gradient Confusion and
Stochastic Gradient Descent", ICML 2020. `gradient_confusion` is the pure function; the trainer
feeds `PairwiseGradientCosines` one chunk's gradients at a time (all pairs of m chunks), and
`confusion_from_norms` computes it across DDP ranks from squared norms alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .reductions import _clamp, _empty_skips, _pair_cosines, _pair_dot, squared_norms
from .result import MetricResult


def gradient_confusion(grads: Sequence[Mapping[str, torch.Tensor | None]]) -> MetricResult:
    """Gradient confusion: cosine between gradients of distinct mini-batches at the same parameters.

    ``CG(A, B) = A.B / (|A| |B|)`` (Sankararaman et al., ICML 2020, eq. 2 of the seed paper) for
    every pair of the given gradients. The gradients must have been taken at the same parameters
    on *distinct* samples.

    Args:
        grads: Two or more gradients, each a mapping from layer name to gradient tensor.

    Returns:
        ``value`` is the mean over pairs of the global cosine (the cosine of the concatenated
        gradients); ``extra["min"]`` the minimum pairwise global cosine and ``extra["num_pairs"]``
        the number of pairs with a value. ``per_layer`` holds each layer's mean pairwise cosine.
    """
    if len(grads) < 2:
        raise ValueError(f"gradient_confusion needs at least two gradients, got {len(grads)}")
    names = list(dict.fromkeys(name for g in grads for name in g))
    tracker = PairwiseGradientCosines(names)
    for g in grads:
        tracker.add([g.get(name) for name in names])
    return tracker.result()


def confusion_result(
    pair_values: Sequence[float], per_layer: dict[str, float], skipped: dict[str, int]
) -> MetricResult:
    """Assemble a gradient-confusion result from pairwise global cosines (shared with the trainer)."""
    if not pair_values:
        return MetricResult(None, per_layer, skipped, {"min": None, "num_pairs": 0})
    mean = sum(pair_values) / len(pair_values)
    return MetricResult(mean, per_layer, skipped, {"min": min(pair_values), "num_pairs": len(pair_values)})


def confusion_from_norms(
    names: Sequence[str], local_sq_norms: Sequence[Sequence[float | None]], sum_sq_norms: Sequence[float]
) -> MetricResult:
    """Gradient confusion of W same-θ gradients known only through their norms and the norm of their sum.

    For W gradients ``g_1..g_W`` (one per process under DDP), per layer
    ``sum_{i != j} g_i.g_j = |sum_i g_i|^2 - sum_i |g_i|^2``, so the layer's value is

        ``(|sum_i g_i|^2 - sum_i |g_i|^2) / sum_{i != j} |g_i| |g_j|``

    which is ``cos(g_1, g_2)`` for W = 2 and, for W > 2, the mean of the pairwise cosines
    weighted by ``|g_i| |g_j|``. The global value applies the same formula to the concatenation of
    the layers (sums over layers of both terms), i.e. the cosine of the concatenated gradients for
    W = 2. ``extra["min"]`` equals the value for W = 2 and is ``None`` for W > 2 (a pairwise
    minimum needs the pairwise dot products, which this formula does not have).

    Args:
        names: The layer names.
        local_sq_norms: ``W`` rows of one squared norm per layer (``None``: that gradient is missing).
        sum_sq_norms: One squared norm per layer of ``sum_i g_i``.
    """
    skipped = _empty_skips()
    world = len(local_sq_norms)
    if world < 2:
        raise ValueError(f"confusion_from_norms needs at least two gradients, got {world}")
    per_layer: dict[str, float] = {}
    total_cross = 0.0
    for k, name in enumerate(names):
        column = [row[k] for row in local_sq_norms]
        if any(v is None for v in column):
            skipped["missing"] += 1
            continue
        if not all(math.isfinite(v) for v in (*column, sum_sq_norms[k])):
            skipped["non_finite"] += 1
            continue
        if any(v <= 0.0 for v in column):
            skipped["zero_norm"] += 1
            continue
        norms = [math.sqrt(v) for v in column]
        cross = sum_sq_norms[k] - sum(column)
        weight = sum(norms) ** 2 - sum(column)  # sum over ordered pairs i != j of |g_i| |g_j|
        per_layer[name] = _clamp(cross / weight)
        total_cross += cross
    if not per_layer:
        return MetricResult(None, per_layer, skipped, {"min": None, "num_pairs": 0})
    # The global weight is sum_{i != j} |G_i| |G_j| over the concatenated gradients G_i.
    full = [sum(row[k] for k, name in enumerate(names) if name in per_layer) for row in local_sq_norms]
    full_norms = [math.sqrt(v) for v in full]
    weight = sum(full_norms) ** 2 - sum(full)
    value = _clamp(total_cross / weight) if weight > 0.0 else None
    pairs = world * (world - 1) // 2
    return MetricResult(value, per_layer, skipped, {"min": value if world == 2 else None, "num_pairs": pairs})


class PairwiseGradientCosines:
    """Incremental gradient confusion over gradients that arrive one at a time.

    The trainer feeds each micro-batch's gradient as soon as its backward pass ends; dot products
    with the earlier gradients are queued on the device and read back once, in :meth:`result`.
    The caller keeps the earlier gradient tensors alive and unmodified until :meth:`result`.

    Args:
        names: The layer names, in the order of the tensor lists passed to :meth:`add`.
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self._grads: list[list[torch.Tensor | None]] = []
        self._sq_norms: list[list[torch.Tensor | None]] = []
        self._dots: dict[tuple[int, int], list[torch.Tensor | None]] = {}

    def __len__(self) -> int:
        return len(self._grads)

    def add(self, grads: Sequence[torch.Tensor | None]) -> None:
        """Add one gradient (one tensor or ``None`` per layer, in ``names`` order)."""
        if len(grads) != len(self.names):
            raise ValueError(f"expected {len(self.names)} gradient tensors, got {len(grads)}")
        index = len(self._grads)
        present = [g for g in grads if g is not None]
        norms = iter(squared_norms(present).unbind() if present else ())
        self._sq_norms.append([None if g is None else next(norms) for g in grads])
        for earlier, previous in enumerate(self._grads):
            self._dots[(earlier, index)] = [
                None if a is None or b is None else _pair_dot(a, b) for a, b in zip(previous, grads)
            ]
        self._grads.append(list(grads))

    def result(self) -> MetricResult:
        """Mean and minimum pairwise cosine; releases the references to the gradients."""
        if len(self._grads) < 2:
            self._grads.clear()
            return confusion_result([], {}, _empty_skips())
        # One host synchronisation for all queued reductions.
        flat: list[torch.Tensor] = []
        for row in self._sq_norms + list(self._dots.values()):
            flat.extend(t for t in row if t is not None)
        values = iter(torch.stack([t.to(flat[0].device) for t in flat]).tolist() if flat else [])
        sq = [[None if t is None else next(values) for t in row] for row in self._sq_norms]
        dots = {pair: [None if t is None else next(values) for t in row] for pair, row in self._dots.items()}
        self._grads.clear()
        skipped = _empty_skips()
        pair_values: list[float] = []
        layer_sums: dict[str, float] = {}
        layer_counts: dict[str, int] = {}
        for (i, j), row in dots.items():
            names, d, na, nb = [], [], [], []
            for k, name in enumerate(self.names):
                if row[k] is None:
                    skipped["missing"] += 1
                    continue
                names.append(name)
                d.append(row[k])
                na.append(sq[i][k])
                nb.append(sq[j][k])
            value, per_layer = _pair_cosines(names, d, na, nb, skipped)
            if value is not None:
                pair_values.append(value)
            for name, cosine in per_layer.items():
                layer_sums[name] = layer_sums.get(name, 0.0) + cosine
                layer_counts[name] = layer_counts.get(name, 0) + 1
        per_layer_mean = {name: layer_sums[name] / layer_counts[name] for name in layer_sums}
        return confusion_result(pair_values, per_layer_mean, skipped)
