"""Fixed random per-layer sketches: gradient predictability and layer rotation in memory independent of the model size.

Without sketches, gradient predictability holds one gradient (a copy of the measured weights' size)
from one measured step to the next, and layer rotation reads the initial weights back from disk at
every measurement. With ``dynamics_sketch_dim=d``, each layer of more than ``d`` values is replaced by
its **CountSketch** (Charikar, Chen & Farach-Colton 2002; Clarkson & Woodruff 2013): value ``i`` of the
flattened tensor is added, with sign ``s(i)``, into bucket ``h(i)`` of a vector of ``d`` floats. ``h``
and ``s`` are hashes of the index, computed when needed from a fixed per-layer key (Carter-Wegman,
``((a i + b) mod p)`` with ``p = 2^31 - 1``), so nothing of the model's size is ever stored. Layers of
at most ``d`` values are kept exactly (a sketch would not be smaller).

* **Gradient predictability** = cosine between the sketches of the two gradients (per layer, and of
  the concatenation: each layer's sketch has its own hashes, so the concatenated sketches are one
  CountSketch of the concatenated gradient into ``layers * d`` buckets).
* **Layer rotation**: the sketch is linear, so ``S(θ_t) - S(θ_0) = S(θ_t - θ_0)``; with the exact
  norms ``|θ_0|`` (taken once) and ``|θ_t|`` (at each measurement),
  ``1 - cos(θ_0, θ_t) = (|Δ|² - (|θ_t| - |θ_0|)²) / (2 |θ_0| |θ_t|)`` with ``|Δ|² ≈ |S(θ_t) - S(θ_0)|²``.

**Error bound.** For a CountSketch with pairwise-independent hashes into ``d`` buckets,
``E[<Sx, Sy>] = <x, y>`` and ``Var[<Sx, Sy>] <= (|x|²|y|² + <x, y>²) / d <= 2 |x|²|y|² / d``. Hence
the sketched squared norm ``|S Δ|²`` has relative error ``ε`` with standard deviation at most
``sqrt(2 / d)`` (Chebyshev: ``P(|ε| > t) <= 2 / (d t²)``), and the rotation's error is
``ε |Δ|² / (2 |θ_0| |θ_t|)``: **relative** to the rotation where the rotation is mostly a change of
direction (``|Δ|²`` close to ``2 |θ_0||θ_t| (1 - cos)``), larger relative to it where the norm changes
by as much as the direction. The sketched cosine's error per layer has a standard deviation of order
``sqrt(2 / d)`` (``(1 - cos²) / sqrt(d)`` to first order); the global value, over ``layers * d``
buckets, is tighter. ``d = 4096``: about 0.022 per layer.

**State**: per measured layer ``d`` floats for the initial weights' sketch, ``d`` for the kept
gradient's sketch, and two scalars: ``8 d`` bytes per layer (float32), whatever the layer's size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .reductions import _pair_cosines
from .result import MetricResult

__all__ = ["PRIME", "SketchKeys", "sketch_keys", "count_sketch", "sketch_tensors", "sketched_layer_rotation", "state_bytes"]

#: The Carter-Wegman prime (2^31 - 1): with indices and keys below it, ``a * i + b`` fits in int64.
PRIME = 2**31 - 1
#: Elements hashed per chunk (bounds the temporary index tensors: 3 x 8 bytes x this).
CHUNK = 1 << 20

SketchKeys = tuple[int, int, int, int]


def sketch_keys(seed: int, layer_index: int) -> SketchKeys:
    """The fixed hash keys ``(a_h, b_h, a_s, b_s)`` of one layer, drawn from ``seed`` and the layer's index."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(layer_index))
    a_h, b_h, a_s, b_s = torch.randint(1, PRIME, (4,), generator=generator).tolist()
    return a_h, b_h, a_s, b_s


def count_sketch(tensor: torch.Tensor, dim: int, keys: SketchKeys) -> torch.Tensor:
    """CountSketch of ``tensor`` (flattened) into ``dim`` buckets, in float32 (float64 for float64 input).

    Runs on the tensor's device (also the meta device: shapes only), ``CHUNK`` elements at a time.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"sketch dimension must be a positive integer, got {dim!r}")
    flat = tensor.detach().reshape(-1)
    if flat.numel() >= PRIME:
        raise ValueError(f"cannot sketch a tensor of {flat.numel()} values (at most {PRIME - 1})")
    dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    out = torch.zeros(dim, dtype=dtype, device=flat.device)
    a_h, b_h, a_s, b_s = keys
    for start in range(0, flat.numel(), CHUNK):
        stop = min(flat.numel(), start + CHUNK)
        index = torch.arange(start, stop, dtype=torch.int64, device=flat.device)
        bucket = torch.remainder(torch.remainder(index * a_h + b_h, PRIME), dim)
        sign = 1.0 - 2.0 * torch.remainder(torch.remainder(index * a_s + b_s, PRIME), 2).to(dtype)
        out.index_add_(0, bucket, flat[start:stop].to(dtype) * sign)
    return out


def sketch_tensors(
    tensors: Sequence[torch.Tensor | None], dim: int, keys: Sequence[SketchKeys]
) -> list[torch.Tensor | None]:
    """Each tensor's sketch, or an exact float copy for a tensor of at most ``dim`` values (``None`` stays ``None``)."""
    out: list[torch.Tensor | None] = []
    for tensor, key in zip(tensors, keys):
        if tensor is None:
            out.append(None)
        elif tensor.numel() <= dim:
            flat = tensor.detach().reshape(-1)
            out.append(flat.to(torch.float64 if flat.dtype == torch.float64 else torch.float32, copy=True))
        else:
            out.append(count_sketch(tensor, dim, key))
    return out


def _sq(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    flat = flat if flat.dtype == torch.float64 else flat.float()
    return torch.dot(flat, flat).double()


def sketched_layer_rotation(
    initial_sketches: Mapping[str, torch.Tensor],
    initial_sq_norms: Mapping[str, float],
    current: Mapping[str, torch.Tensor],
    dim: int,
    keys: Mapping[str, SketchKeys],
) -> MetricResult:
    """Layer rotation from sketches: ``1 - cos`` with ``|θ_t - θ_0|²`` from the sketched displacement.

    Same result layout as :func:`hf_critical.metrics.layer_rotation` (``value``: mean over layers;
    ``extra["weighted_mean"]``: weighted by parameter count). ``current`` holds the full current
    tensors; their squared norms are exact. A layer kept exactly (at most ``dim`` values) gives the
    exact rotation.
    """
    result = MetricResult(None, extra={"weighted_mean": None})
    names = [n for n in current if n in initial_sketches and n in initial_sq_norms and current[n] is not None]
    result.skipped["missing"] += len([n for n in {*current, *initial_sketches} if n not in names])
    if not names:
        return result
    rows = []
    for name in names:
        sketch_t = sketch_tensors([current[name]], dim, [keys[name]])[0]
        sketch_0 = initial_sketches[name].to(device=sketch_t.device, dtype=sketch_t.dtype)
        delta = sketch_t - sketch_0
        rows.append(torch.stack([torch.dot(delta, delta).double(), _sq(current[name]).to(delta.device)]))
    values = torch.stack([r.to(rows[0].device) for r in rows]).tolist()  # one host synchronisation
    per_layer: dict[str, float] = {}
    dots, sq_0, sq_t = [], [], []
    for name, (sq_delta, sq_cur) in zip(names, values):
        sq_init = float(initial_sq_norms[name])
        # θ0·θt = (|θ0|² + |θt|² - |Δ|²) / 2; the cosine and its skips as in the exact metric.
        dots.append(0.5 * (sq_init + sq_cur - sq_delta))
        sq_0.append(sq_init)
        sq_t.append(sq_cur)
    _, cosines = _pair_cosines(names, dots, sq_0, sq_t, result.skipped)
    for name, sq_delta, sq_init, sq_cur in zip(names, (v[0] for v in values), sq_0, sq_t):
        if name not in cosines:
            continue
        n0, nt = sq_init**0.5, sq_cur**0.5
        # The cancellation-free form of 1 - cos for the same estimate of |Δ|².
        per_layer[name] = max(0.0, (sq_delta - (nt - n0) ** 2) / (2.0 * n0 * nt))
    if not per_layer:
        return result
    sizes = {name: current[name].numel() for name in per_layer}
    result.value = sum(per_layer.values()) / len(per_layer)
    result.per_layer = per_layer
    result.extra["weighted_mean"] = sum(per_layer[n] * sizes[n] for n in per_layer) / sum(sizes.values())
    return result


def state_bytes(tensors: Sequence[torch.Tensor | None]) -> int:
    """Bytes held by a list of state tensors (their shapes and dtypes; meta tensors count as their size)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
