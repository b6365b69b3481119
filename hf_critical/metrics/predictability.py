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
    previous_sq_norms: Mapping[str, torch.Tensor] | None = None,
    current_sq_norms: dict[str, torch.Tensor] | None = None,
) -> MetricResult:
    """Gradient predictability: cosine between a gradient and a later one (Chen et al., ICLR 2023).

    Returns the global cosine (of the concatenated gradients) as ``value`` and one cosine per layer.

    ``reduce`` makes the function work on *shards*: when each process holds a slice of every tensor
    (FSDP), the per-layer dot products and squared norms of the local slices are partial sums, and
    ``reduce`` (e.g. an all-reduce SUM across the shard group) turns them into the full ones before
    the cosines are taken. It receives one float32 tensor of shape ``(3, layers)`` and returns the
    reduced tensor; every process must call it with the same layers.

    When gradients are measured at consecutive steps, each one is ``current`` once and ``previous``
    once: pass a dict as ``current_sq_norms`` to receive its per-layer squared norms (0-dimensional
    float32 tensors on the gradients' device, of the local shards, before ``reduce``), and give them back as
    ``previous_sq_norms`` at the next measurement, which then skips one reduction over every gradient.
    They must be the norms of exactly the ``previous`` tensors.
    """
    skipped = _empty_skips()
    names = _present_names([previous, current], skipped)
    if not names:
        return MetricResult(None, {}, skipped)
    prev = [local_shard(previous[n]) for n in names]
    cur = [local_shard(current[n]) for n in names]
    device = prev[0].device
    known = previous_sq_norms or {}
    if all(n in known for n in names):
        sq_prev = torch.stack([known[n].to(device) for n in names])
    else:
        sq_prev = squared_norms(prev).to(device)
    sq_cur = squared_norms(cur).to(device)
    if current_sq_norms is not None:
        current_sq_norms.clear()
        current_sq_norms.update(zip(names, sq_cur.unbind()))
    stats = torch.stack([dot_products(prev, cur), sq_prev, sq_cur])
    if reduce is not None:
        stats = reduce(stats)
    dots, sq_prev, sq_cur = stats.tolist()
    value, per_layer = _pair_cosines(names, dots, sq_prev, sq_cur, skipped)
    return MetricResult(value, per_layer, skipped)
