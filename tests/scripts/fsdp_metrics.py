"""FSDP2 (``fully_shard``) on CPU/gloo: metrics from local shards plus an all-reduce equal the full-tensor values.

Run under torchrun (or called by ``ddp_equality.py`` in its process group). Each rank writes
``fsdp_rank{N}.json`` with the sharded and the reference values; the reference gathers the full
tensors (``full_tensor()``), which is done here only to check, never by hf_critical.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from hf_critical.callbacks.dynamics import shard_reduction
from hf_critical.metrics import gradient_predictability, layer_rotation, local_shard


def check(output_dir: str) -> None:
    rank = dist.get_rank()
    torch.manual_seed(0)
    # 10 output rows shard evenly over 2 ranks, 3 rows unevenly (2 + 1).
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    initial_full = {name: p.detach().clone() for name, p in model.named_parameters()}
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    params = dict(model.named_parameters())
    reduce = shard_reduction(params.values())
    initial_local = {name: local_shard(p).detach().clone() for name, p in params.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(10 + rank)  # each rank its own data
    grads = []
    for _ in range(2):
        model(torch.randn(8, 6, generator=g)).square().mean().backward()
        grads.append({name: p.grad.detach().clone() for name, p in params.items()})
        optimizer.step()
        optimizer.zero_grad()
    sharded_predictability = gradient_predictability(grads[0], grads[1], reduce=reduce)
    full_predictability = gradient_predictability(
        {n: t.full_tensor() for n, t in grads[0].items()}, {n: t.full_tensor() for n, t in grads[1].items()}
    )
    sharded_rotation = layer_rotation(initial_local, params, reduce=reduce)
    full_rotation = layer_rotation(initial_full, {n: p.full_tensor().detach() for n, p in params.items()})
    with open(os.path.join(output_dir, f"fsdp_rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "local_rows": {n: local_shard(p).shape[0] for n, p in params.items()},
                "full_rows": {n: p.shape[0] for n, p in params.items()},
                "sharded": {"gradient_predictability": sharded_predictability.to_dict(),
                            "layer_rotation": sharded_rotation.to_dict()},
                "reference": {"gradient_predictability": full_predictability.to_dict(),
                              "layer_rotation": full_rotation.to_dict()},
            },
            f,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    cli = parser.parse_args()
    dist.init_process_group("gloo")
    try:
        check(cli.output_dir)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
