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

**Sharded tensors (FSDP2).** A sketch is a sum over the tensor's values, and the hashes are functions
of each value's *global* flat index. So each process sketches its local shard, with the global indices
of its values (from the DTensor's placement), into ``d`` buckets, and one all-reduce (SUM) over the
shard group gives every process the sketch of the full tensor: the same buckets as without sharding,
up to the order of float additions. A layer kept exactly is scattered into a zero vector of the full
layer's size at the same global indices and summed the same way. The sketches are then replicated,
so everything computed from them needs no further reduction; the exact squared norms are partial
sums over the shards, reduced once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .reductions import _pair_cosines, local_shard
from .result import MetricResult

__all__ = [
    "PRIME",
    "SketchKeys",
    "ShardLayout",
    "shard_layout",
    "sketch_keys",
    "count_sketch",
    "sketch_tensors",
    "sketched_layer_rotation",
    "state_bytes",
]

#: The Carter-Wegman prime (2^31 - 1): with indices and keys below it, ``a * i + b`` fits in int64.
PRIME = 2**31 - 1
#: Elements hashed per chunk (bounds the temporary index tensors: 3 x 8 bytes x this).
CHUNK = 1 << 20

SketchKeys = tuple[int, int, int, int]


@dataclass(frozen=True)
class ShardLayout:
    """Where a process's local shard sits in the full tensor.

    ``global_shape``: the full tensor's shape; ``offsets``: the global coordinate of the shard's first
    element along each dimension; ``contributes``: whether this process adds its values into the summed
    sketch (``False`` for all but one holder of a replicated tensor, so that the sum counts it once).
    """

    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    contributes: bool = True

    @property
    def numel(self) -> int:
        n = 1
        for size in self.global_shape:
            n *= size
        return n


def shard_layout(tensor: torch.Tensor) -> ShardLayout:
    """The `ShardLayout` of ``tensor``: a DTensor on a one-dimensional mesh (FSDP2), or a plain tensor.

    A plain tensor is taken as replicated on every process: only rank 0 (of the default group, when
    one is initialised) contributes. A DTensor must be ``Shard(dim)`` or ``Replicate()``; a ``Partial``
    placement (pending sums) is refused.
    """
    mesh = getattr(tensor, "device_mesh", None)
    if mesh is None:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return ShardLayout(tuple(tensor.shape), (0,) * tensor.dim(), rank == 0)
    if mesh.ndim != 1 or len(tensor.placements) != 1:
        raise ValueError(f"sketches of sharded tensors need a one-dimensional device mesh, got {mesh.ndim} dimensions")
    (placement,) = tensor.placements
    global_shape = tuple(tensor.shape)
    if placement.is_replicate():
        return ShardLayout(global_shape, (0,) * len(global_shape), mesh.get_local_rank() == 0)
    if not placement.is_shard():
        raise ValueError(f"cannot sketch a DTensor with placement {placement} (only Shard or Replicate)")
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    except ImportError:  # pragma: no cover - older or newer torch: DTensor's torch.chunk rule
        dim = placement.dim % len(global_shape)
        chunk = -(-global_shape[dim] // mesh.size())
        offsets = [0] * len(global_shape)
        offsets[dim] = min(mesh.get_local_rank() * chunk, global_shape[dim])
        return ShardLayout(global_shape, tuple(offsets))
    _, offsets = compute_local_shape_and_global_offset(global_shape, mesh, tensor.placements)
    return ShardLayout(global_shape, tuple(int(o) for o in offsets))


def _global_indices(local_shape: Sequence[int], layout: ShardLayout | None, start: int, stop: int, device) -> torch.Tensor:
    """Global flat indices (int64) of the local shard's flat positions ``start .. stop - 1``."""
    index = torch.arange(start, stop, dtype=torch.int64, device=device)
    if layout is None or not layout.global_shape:
        return index
    shape, offsets, local_shape = layout.global_shape, layout.offsets, tuple(local_shape)
    if local_shape[1:] == shape[1:] and not any(offsets[1:]):
        # Sharded along dim 0 (FSDP2's default), or whole: the shard is one contiguous run of the flat tensor.
        row = 1
        for size in shape[1:]:
            row *= size
        return index + offsets[0] * row
    out = torch.zeros_like(index)
    stride = 1
    for k in reversed(range(len(shape))):
        out += (torch.remainder(index, local_shape[k]) + offsets[k]) * stride
        index = torch.div(index, local_shape[k], rounding_mode="floor")
        stride *= shape[k]
    return out


def sketch_keys(seed: int, layer_index: int) -> SketchKeys:
    """The fixed hash keys ``(a_h, b_h, a_s, b_s)`` of one layer, drawn from ``seed`` and the layer's index."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(layer_index))
    a_h, b_h, a_s, b_s = torch.randint(1, PRIME, (4,), generator=generator).tolist()
    return a_h, b_h, a_s, b_s


def count_sketch(tensor: torch.Tensor, dim: int, keys: SketchKeys, layout: ShardLayout | None = None) -> torch.Tensor:
    """CountSketch of ``tensor`` (flattened) into ``dim`` buckets, in float32 (float64 for float64 input).

    Runs on the tensor's device (also the meta device: shapes only), ``CHUNK`` elements at a time.
    With ``layout``, ``tensor`` is a local shard and its values are hashed by their global indices:
    the sum of the shards' sketches is the full tensor's sketch.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"sketch dimension must be a positive integer, got {dim!r}")
    flat = tensor.detach().reshape(-1)
    total = layout.numel if layout is not None else flat.numel()
    if total >= PRIME:
        raise ValueError(f"cannot sketch a tensor of {total} values (at most {PRIME - 1})")
    dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    out = torch.zeros(dim, dtype=dtype, device=flat.device)
    a_h, b_h, a_s, b_s = keys
    for start in range(0, flat.numel(), CHUNK):
        stop = min(flat.numel(), start + CHUNK)
        index = _global_indices(tensor.shape, layout, start, stop, flat.device)
        bucket = torch.remainder(torch.remainder(index * a_h + b_h, PRIME), dim)
        sign = 1.0 - 2.0 * torch.remainder(torch.remainder(index * a_s + b_s, PRIME), 2).to(dtype)
        out.index_add_(0, bucket, flat[start:stop].to(dtype) * sign)
    return out


def _float_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def sketch_tensors(
    tensors: Sequence[torch.Tensor | None],
    dim: int,
    keys: Sequence[SketchKeys],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    layouts: Sequence[ShardLayout] | None = None,
) -> list[torch.Tensor | None]:
    """Each tensor's sketch, or an exact float copy for a tensor of at most ``dim`` values (``None`` stays ``None``).

    ``reduce`` (a SUM across the shard group, as from `hf_critical.callbacks.files.shard_reduction`) makes it
    work on sharded tensors: each process sketches its local shards by their global indices (``layouts``, by
    default `shard_layout` of each tensor, which must then be a DTensor) and one call of ``reduce`` on all the
    sketches at once gives every process the full tensors' sketches. Every process must call it with the same
    tensors (the same ``None`` entries).
    """
    if reduce is None:
        out: list[torch.Tensor | None] = []
        for tensor, key in zip(tensors, keys):
            if tensor is None:
                out.append(None)
            elif tensor.numel() <= dim:
                flat = tensor.detach().reshape(-1)
                out.append(flat.to(_float_dtype(flat), copy=True))
            else:
                out.append(count_sketch(tensor, dim, key))
        return out
    parts: list[torch.Tensor | None] = []
    for i, (tensor, key) in enumerate(zip(tensors, keys)):
        if tensor is None:
            parts.append(None)
            continue
        layout = layouts[i] if layouts is not None else shard_layout(tensor)
        local = local_shard(tensor).detach()
        dtype = _float_dtype(local)
        if layout.numel <= dim:
            # Kept exactly: the shard's values at their global positions of a zero vector of the layer's size.
            part = torch.zeros(layout.numel, dtype=dtype, device=local.device)
            if layout.contributes and local.numel():
                index = _global_indices(local.shape, layout, 0, local.numel(), local.device)
                part.index_copy_(0, index, local.reshape(-1).to(dtype))
        elif layout.contributes:
            part = count_sketch(local, dim, key, layout)
        else:
            part = torch.zeros(dim, dtype=dtype, device=local.device)
        parts.append(part)
    present = [p for p in parts if p is not None]
    if not present:
        return parts
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in present) else torch.float32
    summed = reduce(torch.cat([p.to(dtype) for p in present]))
    out, start = [], 0
    for part in parts:
        if part is None:
            out.append(None)
            continue
        out.append(summed[start : start + part.numel()].to(part.dtype, copy=True))
        start += part.numel()
    return out


def _sq(t: torch.Tensor) -> torch.Tensor:
    flat = local_shard(t).detach().reshape(-1)
    flat = flat if flat.dtype == torch.float64 else flat.float()
    return torch.dot(flat, flat).double()


def sketched_layer_rotation(
    initial_sketches: Mapping[str, torch.Tensor],
    initial_sq_norms: Mapping[str, float],
    current: Mapping[str, torch.Tensor],
    dim: int,
    keys: Mapping[str, SketchKeys],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    layouts: Mapping[str, ShardLayout] | None = None,
) -> MetricResult:
    """Layer rotation from sketches: ``1 - cos`` with ``|θ_t - θ_0|²`` from the sketched displacement.

    Same result layout as :func:`hf_critical.metrics.layer_rotation` (``value``: mean over layers;
    ``extra["weighted_mean"]``: weighted by parameter count). ``current`` holds the full current
    tensors; their squared norms are exact. A layer kept exactly (at most ``dim`` values) gives the
    exact rotation. With ``reduce`` (sharded tensors, as in :func:`sketch_tensors`), ``current`` holds
    DTensors, ``initial_sketches`` the full tensors' (replicated) sketches and ``initial_sq_norms`` the
    full tensors' squared norms; one ``reduce`` call sums the sketches, one the squared norms. ``layouts``
    (by name) places local shards given as plain tensors, as in :func:`sketch_tensors`.
    """
    result = MetricResult(None, extra={"weighted_mean": None})
    names = [n for n in current if n in initial_sketches and n in initial_sq_norms and current[n] is not None]
    result.skipped["missing"] += len([n for n in {*current, *initial_sketches} if n not in names])
    if not names:
        return result
    sketches = sketch_tensors(
        [current[n] for n in names],
        dim,
        [keys[n] for n in names],
        reduce=reduce,
        layouts=None if layouts is None else [layouts[n] for n in names],
    )
    device = sketches[0].device
    sq_delta = []
    for name, sketch_t in zip(names, sketches):
        delta = sketch_t - initial_sketches[name].to(device=device, dtype=sketch_t.dtype)
        sq_delta.append(torch.dot(delta, delta).double())
    sq_current = torch.stack([_sq(current[n]).to(device) for n in names])
    if reduce is not None:
        sq_current = reduce(sq_current)  # partial sums over the shards
    values = torch.stack([torch.stack(sq_delta), sq_current], dim=1).tolist()  # one host synchronisation
    per_layer: dict[str, float] = {}
    dots, sq_0, sq_t = [], [], []
    for name, (sq_d, sq_cur) in zip(names, values):
        sq_init = float(initial_sq_norms[name])
        # θ0·θt = (|θ0|² + |θt|² - |Δ|²) / 2; the cosine and its skips as in the exact metric.
        dots.append(0.5 * (sq_init + sq_cur - sq_d))
        sq_0.append(sq_init)
        sq_t.append(sq_cur)
    _, cosines = _pair_cosines(names, dots, sq_0, sq_t, result.skipped)
    for name, (sq_d, _), sq_init, sq_cur in zip(names, values, sq_0, sq_t):
        if name not in cosines:
            continue
        n0, nt = sq_init**0.5, sq_cur**0.5
        # The cancellation-free form of 1 - cos for the same estimate of |Δ|².
        per_layer[name] = max(0.0, (sq_d - (nt - n0) ** 2) / (2.0 * n0 * nt))
    if not per_layer:
        return result
    sizes = {name: (layouts[name].numel if layouts is not None else current[name].numel()) for name in per_layer}
    result.value = sum(per_layer.values()) / len(per_layer)
    result.per_layer = per_layer
    result.extra["weighted_mean"] = sum(per_layer[n] * sizes[n] for n in per_layer) / sum(sizes.values())
    return result


def state_bytes(tensors: Sequence[torch.Tensor | None]) -> int:
    """Bytes held by a list of state tensors (their shapes and dtypes; meta tensors count as their size)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
