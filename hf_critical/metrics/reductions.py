"""The reductions the metrics share: squared norms and dot products in float32 per tensor, pair cosines, shards.

Each runs per tensor on the tensors' own device and synchronises with the host once per call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .result import SKIP_REASONS


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


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this process holds: the local shard of a DTensor (FSDP2), else the tensor."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def _self_dot(tensor: torch.Tensor) -> torch.Tensor:
    flat = _as_float32(tensor)
    return torch.dot(flat, flat)


def _pair_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape != b.shape:
        raise ValueError(f"tensor shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.dot(_as_float32(a), _as_float32(b))
