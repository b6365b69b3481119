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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

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

SKIP_REASONS = ("missing", "non_finite", "zero_norm")


@dataclass
class MetricResult:
    """The value of one metric at one measurement.

    Attributes:
        value: The global value, or ``None`` when no layer could be measured.
        per_layer: One value per measured layer, keyed by layer name.
        skipped: Number of layers skipped, by reason (``missing``, ``non_finite``, ``zero_norm``).
            For gradient confusion with several pairs, a layer is counted once per pair it was
            skipped in.
        extra: Secondary values (``min`` and ``num_pairs`` for confusion, ``weighted_mean`` for
            layer rotation).
    """

    value: float | None
    per_layer: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    extra: dict[str, float | int | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``value``, the extras, ``per_layer`` and ``skipped``."""
        return {"value": self.value, **self.extra, "per_layer": dict(self.per_layer), "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, data: Mapping) -> MetricResult:
        """Inverse of :meth:`to_dict`."""
        extra = {k: v for k, v in data.items() if k not in ("value", "per_layer", "skipped")}
        return cls(data["value"], dict(data["per_layer"]), dict(data["skipped"]), extra)


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    flat = tensor.detach().reshape(-1)
    return flat if flat.dtype == torch.float32 else flat.float()


def squared_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared L2 norm of each tensor in float32, as one tensor (no host synchronisation).

    One fused ``torch._foreach_norm`` call per device (per-tensor kernels, float32 accumulation for
    low-precision tensors); the result lives on the first tensor's device.
    """
    if not tensors:
        return torch.zeros(0)
    device = tensors[0].device
    if all(t.device == device for t in tensors):
        norms = torch._foreach_norm([t.detach() for t in tensors], 2, dtype=torch.float32)
        return torch.stack(norms).square()
    return torch.stack([_self_dot(t).to(device) for t in tensors])


def dot_products(first: Sequence[torch.Tensor], second: Sequence[torch.Tensor]) -> torch.Tensor:
    """Dot product of each pair ``(first[i], second[i])`` in float32, as one tensor."""
    if len(first) != len(second):
        raise ValueError(f"dot_products needs two sequences of equal length, got {len(first)} and {len(second)}")
    if not first:
        return torch.zeros(0)
    device = first[0].device
    out = []
    for a, b in zip(first, second):
        if a.shape != b.shape:
            raise ValueError(f"tensor shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
        out.append(torch.dot(_as_float32(a), _as_float32(b).to(a.device)).to(device))
    return torch.stack(out)


def _empty_skips() -> dict[str, int]:
    return dict.fromkeys(SKIP_REASONS, 0)


def _present_names(
    mappings: Sequence[Mapping[str, torch.Tensor | None]], skipped: dict[str, int]
) -> list[str]:
    """Layer names present (not None) in every mapping, in the first mapping's order."""
    names = list(mappings[0].keys())
    for other in mappings[1:]:
        names.extend(name for name in other.keys() if name not in mappings[0])
    present = []
    for name in names:
        if all(m.get(name) is not None for m in mappings):
            present.append(name)
        else:
            skipped["missing"] += 1
    return present


def _pair_cosines(
    names: list[str],
    dots: list[float],
    sq_a: list[float],
    sq_b: list[float],
    skipped: dict[str, int],
) -> tuple[float | None, dict[str, float]]:
    """Per-layer cosines and the cosine of the concatenation, skipping bad layers."""
    per_layer: dict[str, float] = {}
    total_dot = total_a = total_b = 0.0
    for name, d, na, nb in zip(names, dots, sq_a, sq_b):
        if not (math.isfinite(d) and math.isfinite(na) and math.isfinite(nb)):
            skipped["non_finite"] += 1
            continue
        if na <= 0.0 or nb <= 0.0:
            skipped["zero_norm"] += 1
            continue
        per_layer[name] = _clamp(d / math.sqrt(na * nb))
        total_dot += d
        total_a += na
        total_b += nb
    if not per_layer or total_a <= 0.0 or total_b <= 0.0:
        return None, per_layer
    return _clamp(total_dot / math.sqrt(total_a * total_b)), per_layer


def _clamp(cosine: float) -> float:
    # Rounding can push |cos| a hair past 1; the definition cannot.
    return max(-1.0, min(1.0, cosine))


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


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this process holds: the local shard of a DTensor (FSDP2), else the tensor."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def gradient_predictability(
    previous: Mapping[str, torch.Tensor | None],
    current: Mapping[str, torch.Tensor | None],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> MetricResult:
    """Gradient predictability: cosine between a gradient and a later one (Chen et al., ICLR 2023).

    Returns the global cosine (of the concatenated gradients) as ``value`` and one cosine per layer.

    ``reduce`` makes the function work on *shards*: when each process holds a slice of every tensor
    (FSDP), the per-layer dot products and squared norms of the local slices are partial sums, and
    ``reduce`` (e.g. an all-reduce SUM across the shard group) turns them into the full ones before
    the cosines are taken. It receives one float32 tensor of shape ``(3, layers)`` and returns the
    reduced tensor; every process must call it with the same layers.
    """
    skipped = _empty_skips()
    names = _present_names([previous, current], skipped)
    if not names:
        return MetricResult(None, {}, skipped)
    prev = [local_shard(previous[n]) for n in names]
    cur = [local_shard(current[n]) for n in names]
    stats = torch.stack([dot_products(prev, cur), squared_norms(prev).to(prev[0].device), squared_norms(cur).to(prev[0].device)])
    if reduce is not None:
        stats = reduce(stats)
    dots, sq_prev, sq_cur = stats.tolist()
    value, per_layer = _pair_cosines(names, dots, sq_prev, sq_cur, skipped)
    return MetricResult(value, per_layer, skipped)


def layer_rotation(
    initial: Mapping[str, torch.Tensor | None],
    current: Mapping[str, torch.Tensor | None],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    initial_sq_norms: Mapping[str, float] | None = None,
) -> MetricResult:
    """Layer rotation: ``1 - cos(theta_0, theta_t)`` per layer (Carbonnelle & De Vleeschouwer, 2019).

    ``value`` is the unweighted mean over layers; ``extra["weighted_mean"]`` weights each layer by
    its number of parameters. ``initial`` is read one layer at a time (it may be a
    :class:`~hf_critical.weights_file.TensorFile` that reads each layer from disk when indexed), and
    each initial tensor is moved to its current tensor's device, not the other way round.

    ``reduce``: as in :func:`gradient_predictability` (tensor of shape ``(layers, 3)``); with it,
    ``current`` may hold sharded tensors (DTensor) and ``initial`` the matching local shards, and
    each layer's parameter count is its full (global) count.

    Each mapping is indexed once per layer, so either may compute its tensors when indexed (the
    effective weights of LoRA layers, `hf_critical.adapters`). ``initial_sq_norms``: the squared
    norms of the initial tensors (of this process's shards when ``reduce`` is given), known since
    the start of training, which saves one reduction per layer.
    """
    skipped = _empty_skips()
    names: list[str] = []
    stats: list[torch.Tensor] = []
    sizes: dict[str, int] = {}
    for name in list(dict.fromkeys([*current, *initial])):
        theta_t = current[name] if name in current else None
        theta_0 = initial[name] if name in initial and theta_t is not None else None
        if theta_t is None or theta_0 is None:
            skipped["missing"] += 1
            continue
        sizes[name] = theta_t.numel()  # the full count, also for a sharded tensor
        theta_t = local_shard(theta_t)
        if theta_0.shape != theta_t.shape:
            raise ValueError(f"layer {name!r}: initial shape {tuple(theta_0.shape)} != current {tuple(theta_t.shape)}")
        # float64 tensors (LoRA effective weights, whose rotation is second order in the update) stay float64.
        dtype = torch.float64 if torch.float64 in (theta_t.dtype, theta_0.dtype) else torch.float32
        flat_t = theta_t.detach().reshape(-1).to(dtype)
        flat_0 = theta_0.detach().reshape(-1).to(device=flat_t.device, dtype=dtype)
        known = None if initial_sq_norms is None else initial_sq_norms.get(name)
        sq_0 = torch.dot(flat_0, flat_0) if known is None else torch.tensor(float(known), dtype=dtype, device=flat_t.device)
        stats.append(torch.stack([torch.dot(flat_t, flat_0), sq_0, torch.dot(flat_t, flat_t)]).double())
        names.append(name)
    if not names:
        return MetricResult(None, {}, skipped, {"weighted_mean": None})
    values = torch.stack([s.to(stats[0].device) for s in stats])
    if reduce is not None:
        values = reduce(values)
    dots, sq_init, sq_cur = ([row[i] for row in values.tolist()] for i in range(3))  # one host synchronisation
    _, cosines = _pair_cosines(names, dots, sq_init, sq_cur, skipped)
    per_layer = {name: max(0.0, 1.0 - cosine) for name, cosine in cosines.items()}
    if not per_layer:
        return MetricResult(None, per_layer, skipped, {"weighted_mean": None})
    sizes = {name: sizes[name] for name in per_layer}
    mean = sum(per_layer.values()) / len(per_layer)
    weighted = sum(per_layer[n] * sizes[n] for n in per_layer) / sum(sizes.values())
    return MetricResult(mean, per_layer, skipped, {"weighted_mean": weighted})


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


def _self_dot(tensor: torch.Tensor) -> torch.Tensor:
    flat = _as_float32(tensor)
    return torch.dot(flat, flat)


def _pair_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape != b.shape:
        raise ValueError(f"tensor shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.dot(_as_float32(a), _as_float32(b))
