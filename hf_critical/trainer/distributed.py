"""Several processes (DDP): gradient confusion between the ranks' gradients, and the all-reduce DDP would have run.

At a measured step every rank keeps its own gradient (backward runs under ``no_sync``); the ranks
gather one squared norm per layer, average the gradients themselves, and take confusion from the
norms of the sum. Communication beyond DDP's own: 4 bytes per measured layer per rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..metrics import MetricResult, confusion_from_norms, squared_norms

#: Size of the flat buffers the per-rank confusion step all-reduces gradients in (DDP's default bucket size).
REDUCE_BUCKET_BYTES = 25 * 2**20


def _ddp_module(model) -> torch.nn.parallel.DistributedDataParallel | None:
    return model if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None


def _all_reduce_mean(module: torch.nn.Module, group, world: int) -> None:
    """Average the gradients of ``module``'s trainable parameters across ranks, like DDP's all-reduce.

    As DDP does, each gradient is divided by the number of ranks and the flat buckets are summed
    (exactly DDP's result for a power-of-two number of ranks). A gradient that is ``None`` on this
    rank counts as zeros; it is set from the result unless the result is all zeros (unused everywhere).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    buckets: dict[tuple, list[list[torch.nn.Parameter]]] = {}
    for p in params:
        key = (p.device, p.dtype)
        chain = buckets.setdefault(key, [[]])
        if chain[-1] and sum(q.numel() for q in chain[-1]) * p.element_size() > REDUCE_BUCKET_BYTES:
            chain.append([])
        chain[-1].append(p)
    for (_, dtype), chain in buckets.items():
        for bucket in chain:
            flat = torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p, dtype=dtype)).reshape(-1).to(dtype)
                    for p in bucket
                ]
            )
            flat.div_(world)
            dist.all_reduce(flat, group=group)
            offset = 0
            for p in bucket:
                part = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                if p.grad is not None:
                    p.grad.copy_(part)
                elif bool(part.any()):
                    p.grad = part.clone()


def all_reduce_with_confusion(model, names: list[str], params: list[torch.nn.Parameter]) -> MetricResult:
    """All-reduce the local gradients as DDP would, and return the confusion between the ranks' gradients.

    Communication beyond DDP's own: one all-gather of a float32 vector with one squared norm per
    measured layer (4 bytes per layer per rank).
    """
    ddp = _ddp_module(model)
    group = ddp.process_group if ddp is not None else None
    world = dist.get_world_size(group)
    present = [i for i, p in enumerate(params) if p.grad is not None]
    device = params[0].device if params else torch.device("cpu")
    if dist.get_backend(group) != "nccl":
        device = torch.device("cpu")
    local = torch.full((len(params),), -1.0, dtype=torch.float32, device=device)
    if present:
        local[present] = squared_norms([params[i].grad for i in present]).to(device)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    _all_reduce_mean(ddp.module if ddp is not None else model, group, world)
    reduced_present = [i for i, p in enumerate(params) if p.grad is not None]
    sum_sq = [float("nan")] * len(params)
    if reduced_present:
        norms = squared_norms([params[i].grad for i in reduced_present]).tolist()
        for i, value in zip(reduced_present, norms):
            sum_sq[i] = value * world * world  # |sum_r g_r|^2 from the mean
    rows = [[None if v < 0 else v for v in row.tolist()] for row in gathered]
    return confusion_from_norms(names, rows, sum_sq)
