"""Gradient predictability: the cosine between a gradient and a later one (Chen et al., ICLR 2023).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .reductions import _empty_skips, _pair_cosines, _present_names, dot_products, local_shard, squared_norms
from .result import MetricResult


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
