"""FSDP2 (``fully_shard``) on CPU/gloo: metrics from local shards plus an all-reduce equal the full-tensor values.

Run under torchrun (or called by ``ddp_equality.py`` in its process group). Each rank writes
``fsdp_rank{N}.json`` with the sharded and the reference values; the reference gathers the full
tensors (``full_tensor()``), which is done here only to check, never by hf_critical.

The sketches (``dynamics_sketch_dim``) are checked twice: the functions, and `DynamicsCallback` itself,
driven step by step on the sharded model beside a second callback on an unsharded mirror that is given
the gathered weights and gradients; both must log the same values.
"""

from __future__ import annotations

import argparse
import copy
import json
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_critical.callbacks.dynamics import DynamicsCallback, shard_reduction
from hf_critical.metrics import gradient_predictability, layer_rotation, local_shard
from hf_critical.metrics.sketch import sketch_keys, sketch_tensors, sketched_layer_rotation

#: Buckets per layer: the two weights (60 and 30 values) are sketched, the biases (10 and 3) kept exactly.
SKETCH_DIM = 16


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
    # Sketches: each rank sketches its shards by their global indices, one all-reduce sums them.
    keys = {name: sketch_keys(0, i) for i, name in enumerate(params)}
    sketches = [dict(zip(params, sketch_tensors(list(g.values()), SKETCH_DIM, list(keys.values()), reduce=reduce)))
                for g in grads]
    full_sketches = [
        dict(zip(params, sketch_tensors([t.full_tensor() for t in g.values()], SKETCH_DIM, list(keys.values()))))
        for g in grads
    ]
    initial_sketches = dict(zip(params, sketch_tensors(list(initial_full.values()), SKETCH_DIM, list(keys.values()))))
    initial_sq = {n: float(t.double().square().sum()) for n, t in initial_full.items()}
    sketched_rotation = sketched_layer_rotation(initial_sketches, initial_sq, params, SKETCH_DIM, keys, reduce=reduce)
    full_sketched_rotation = sketched_layer_rotation(
        initial_sketches, initial_sq, {n: p.full_tensor().detach() for n, p in params.items()}, SKETCH_DIM, keys
    )
    with open(os.path.join(output_dir, f"fsdp_rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "local_rows": {n: local_shard(p).shape[0] for n, p in params.items()},
                "full_rows": {n: p.shape[0] for n, p in params.items()},
                "sharded": {"gradient_predictability": sharded_predictability.to_dict(),
                            "layer_rotation": sharded_rotation.to_dict(),
                            "sketched_predictability": gradient_predictability(*sketches).to_dict(),
                            "sketched_rotation": sketched_rotation.to_dict()},
                "reference": {"gradient_predictability": full_predictability.to_dict(),
                              "layer_rotation": full_rotation.to_dict(),
                              "sketched_predictability": gradient_predictability(*full_sketches).to_dict(),
                              "sketched_rotation": full_sketched_rotation.to_dict()},
                "sketch_difference": max(
                    float((sketches[i][n] - full_sketches[i][n]).abs().max()) for i in range(2) for n in params
                ),
                "callback": callback_histories(output_dir),
            },
            f,
        )


def callback_histories(output_dir: str) -> dict:
    """`DynamicsCallback` with sketches on a sharded model and on an unsharded mirror: their histories."""
    rank = dist.get_rank()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    mirror = copy.deepcopy(model)
    # The second layer's weight sharded by columns (Shard(1)): the global indices of a non-contiguous shard.
    fully_shard(model[0])
    fully_shard(model[2], shard_placement_fn=lambda p: Shard(1) if p.dim() == 2 else Shard(0))
    fully_shard(model)
    sharded_params = dict(model.named_parameters())
    mirror_params = dict(mirror.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    runs = []
    for name, module in (("sharded", model), ("mirror", mirror)):
        args = TrainingArguments(output_dir=os.path.join(output_dir, f"fsdp_callback_{name}"), seed=3,
                                 report_to=[], use_cpu=True)
        state = TrainerState(is_local_process_zero=rank == 0, is_world_process_zero=rank == 0)
        callback = DynamicsCallback(metrics=["gradient_predictability", "layer_rotation"], every_n_steps=1,
                                    sketch_dim=SKETCH_DIM)
        callback.on_train_begin(args, state, TrainerControl(), model=module)
        runs.append((callback, args, state))

    def mirror_weights() -> None:
        with torch.no_grad():
            for n, p in mirror_params.items():
                p.copy_(sharded_params[n].full_tensor())

    g = torch.Generator().manual_seed(20 + rank)
    for _ in range(4):
        model(torch.randn(8, 6, generator=g)).square().mean().backward()
        for n, p in mirror_params.items():
            p.grad = sharded_params[n].grad.full_tensor()
        for callback, args, state in runs:
            callback.on_pre_optimizer_step(args, state, TrainerControl())
        optimizer.step()
        optimizer.zero_grad()
        mirror_weights()
        for callback, args, state in runs:
            state.global_step += 1
            callback.on_step_end(args, state, TrainerControl())
    return {
        "sharded": runs[0][0].history,
        "mirror": runs[1][0].history,
        "column_sharded": local_shard(sharded_params["2.weight"]).shape[1] < sharded_params["2.weight"].shape[1],
    }


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
