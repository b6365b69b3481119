"""Layer rotation: ``1 - cos(theta_0, theta_t)`` per layer (Carbonnelle & De Vleeschouwer, 2019).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .reductions import _empty_skips, _pair_cosines, local_shard
from .result import MetricResult


def layer_rotation(
    initial: Mapping[str, torch.Tensor | None],
    current: Mapping[str, torch.Tensor | None],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    initial_sq_norms: Mapping[str, float] | None = None,
) -> MetricResult:
    """Layer rotation: ``1 - cos(theta_0, theta_t)`` per layer (Carbonnelle & De Vleeschouwer, 2019).

    ``value`` is the unweighted mean over layers; ``extra["weighted_mean"]`` weights each layer by
    its number of parameters. ``initial`` is read one layer at a time (it may be a
    :class:`~hf_critical.io.tensor_file.TensorFile` that reads each layer from disk when indexed), and
    each initial tensor is moved to its current tensor's device, not the other way round.

    ``reduce``: as in :func:`gradient_predictability` (tensor of shape ``(layers, 3)``); with it,
    ``current`` may hold sharded tensors (DTensor) and ``initial`` the matching local shards, and
    each layer's parameter count is its full (global) count.

    Each mapping is indexed once per layer, so either may compute its tensors when indexed (the
    effective weights of LoRA layers, `hf_critical.metrics.lora`). ``initial_sq_norms``: the squared
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
