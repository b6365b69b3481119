"""Sketched gradient predictability and layer rotation: the CountSketch against a dense reference, its error bound
on a real run against the exact metrics, and the state of a 1B-parameter model within 64 MiB."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import common_args, jsonl_path, read_jsonl, text_dataset
from transformers import BertConfig, BertForSequenceClassification

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer
from hf_critical.io.tensor_file import TensorFile
from hf_critical.metrics.layers import select_parameters
from hf_critical.metrics.sketch import (
    PRIME,
    ShardLayout,
    count_sketch,
    sketch_keys,
    sketch_tensors,
    sketched_layer_rotation,
    state_bytes,
)
from hf_critical.names import INITIAL_WEIGHTS_FILE


def _dense_sketch_matrix(n: int, dim: int, keys) -> torch.Tensor:
    """Naive reference: the d x n matrix of the CountSketch, built entry by entry in Python."""
    a_h, b_h, a_s, b_s = keys
    matrix = torch.zeros(dim, n, dtype=torch.float64)
    for i in range(n):
        bucket = ((a_h * i + b_h) % PRIME) % dim
        sign = 1.0 - 2.0 * (((a_s * i + b_s) % PRIME) % 2)
        matrix[bucket, i] = sign
    return matrix


def test_count_sketch_equals_the_dense_matrix_product(monkeypatch):
    monkeypatch.setattr("hf_critical.metrics.sketch.CHUNK", 7)  # several chunks
    x = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    keys = sketch_keys(3, 1)
    assert torch.allclose(count_sketch(x.reshape(5, 10), 8, keys), _dense_sketch_matrix(50, 8, keys) @ x)
    assert sketch_keys(3, 1) == keys and sketch_keys(3, 2) != keys  # fixed per (seed, layer)


def _shards(full: torch.Tensor, dim: int, ranks: int) -> list[tuple[torch.Tensor, ShardLayout]]:
    """``full`` cut along ``dim`` by DTensor's rule (torch.chunk; trailing ranks may hold nothing)."""
    chunk = -(-full.shape[dim] // ranks)
    out = []
    for rank in range(ranks):
        start = min(rank * chunk, full.shape[dim])
        stop = min(start + chunk, full.shape[dim])
        offsets = [0] * full.dim()
        offsets[dim] = start
        out.append((full.narrow(dim, start, stop - start), ShardLayout(tuple(full.shape), tuple(offsets))))
    return out


@pytest.mark.parametrize(
    "shape, shard_dim, ranks",
    [((7, 5), 0, 2), ((7, 5), 0, 3), ((3, 4, 6), 1, 2), ((4, 9), 1, 4), ((2, 30), 0, 3), ((40,), 0, 3)],
    ids=["rows-uneven", "rows-3", "middle-dim", "columns", "rank-with-nothing", "vector"],
)
def test_shard_sketches_sum_to_the_full_tensors_sketch(shape, shard_dim, ranks):
    """FSDP2's rule on one process: each shard sketched by its global indices; their sum is the full sketch.

    The identity stands in for the all-reduce, so each call returns one rank's partial sums; a layer of at most
    ``dim`` values comes back as the exact full vector once the parts are summed.
    """
    full = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    keys = sketch_keys(2, 5)
    for dim in (8, full.numel()):  # sketched, kept exactly
        parts = [
            sketch_tensors([local], dim, [keys], reduce=lambda t: t, layouts=[layout])[0]
            for local, layout in _shards(full, shard_dim, ranks)
        ]
        expected = sketch_tensors([full], dim, [keys])[0]
        assert torch.allclose(sum(parts), expected, atol=1e-12), dim
    dense = _dense_sketch_matrix(full.numel(), 8, keys) @ full.reshape(-1)
    assert torch.allclose(sum(count_sketch(t, 8, keys, layout) for t, layout in _shards(full, shard_dim, ranks)), dense)


def test_replicated_tensor_is_counted_once_and_rotation_reduces_the_norms():
    full = torch.randn(6, 5, generator=torch.Generator().manual_seed(5))
    keys = {"w": sketch_keys(0, 0)}
    layouts = [ShardLayout((6, 5), (0, 0), contributes=rank == 0) for rank in range(3)]
    parts = [sketch_tensors([full], 8, [keys["w"]], reduce=lambda t: t, layouts=[layout])[0] for layout in layouts]
    assert torch.equal(parts[1], torch.zeros(8)) and torch.allclose(sum(parts), count_sketch(full, 8, keys["w"]))
    # Two ranks holding rows 0-2 and 3-5: rank 0's reduce adds rank 1's partial sums (sketches, then norms).
    initial = torch.randn(6, 5, generator=torch.Generator().manual_seed(6))
    initial_sketch = {"w": count_sketch(initial, 8, keys["w"])}
    initial_sq = {"w": float(initial.square().sum())}
    (mine, my_layout), (theirs, their_layout) = _shards(full, 0, 2)
    partials = [
        sketch_tensors([theirs], 8, [keys["w"]], reduce=lambda t: t, layouts=[their_layout])[0],
        theirs.square().sum().double().reshape(1),
    ]
    seen = []

    def all_reduce(t):
        seen.append(t.numel())
        return t + partials.pop(0)

    sharded = sketched_layer_rotation(initial_sketch, initial_sq, {"w": mine}, 8, keys, reduce=all_reduce,
                                      layouts={"w": my_layout})
    reference = sketched_layer_rotation(initial_sketch, initial_sq, {"w": full}, 8, keys)
    assert seen == [8, 1]  # one reduction of the sketches, one of the squared norms
    assert sharded.value == pytest.approx(reference.value, rel=1e-6)


def test_sketched_inner_products_are_unbiased_within_the_variance_bound():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, generator=g, dtype=torch.float64)
    y = 0.6 * x + 0.8 * torch.randn(4000, generator=g, dtype=torch.float64)
    dim, draws = 64, 400
    estimates = torch.tensor([float(count_sketch(x, dim, sketch_keys(s, 0)) @ count_sketch(y, dim, sketch_keys(s, 0))) for s in range(draws)])
    exact = float(x @ y)
    bound = (float(x @ x) * float(y @ y) + exact**2) / dim  # Var <= (|x|^2 |y|^2 + <x,y>^2) / d
    assert abs(float(estimates.mean()) - exact) < 4 * math.sqrt(bound / draws)
    assert float(estimates.var()) < 1.3 * bound


def test_small_layers_are_kept_exactly():
    t = torch.randn(3, 4)
    (kept,) = sketch_tensors([t], 12, [sketch_keys(0, 0)])
    assert torch.equal(kept, t.reshape(-1))
    with pytest.raises(ValueError, match="sketch dimension"):
        count_sketch(t, 0, sketch_keys(0, 0))


def _bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=256, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config)


def test_sketched_metrics_match_the_exact_ones_within_the_stated_bound(tmp_path):
    dim = 1024  # layers of 4096 (attention, embeddings 6400) and 16384 values (feed-forward) are sketched
    overrides = dict(dynamics_every_n_steps=1, max_steps=4, optim="adamw_torch", learning_rate=3e-3)
    runs = {}
    for name, sketch in (("exact", None), ("sketch", dim)):
        args = CriticalPeriodArguments(**common_args(tmp_path / name, dynamics_sketch_dim=sketch, **overrides))
        trainer = CriticalPeriodTrainer(model=_bert(), args=args, train_dataset=text_dataset(128))
        trainer.train()
        runs[name] = (trainer, read_jsonl(jsonl_path(tmp_path / name)))
    exact, sketched = runs["exact"][1], runs["sketch"][1]
    bound = 4 * math.sqrt(2 / dim)  # four standard deviations of the per-layer cosine error
    errors = []
    for e, s in zip(exact[1:], sketched[1:]):
        ep, sp = e["gradient_predictability"], s["gradient_predictability"]
        assert abs(sp["value"] - ep["value"]) < bound
        errors += [abs(sp["per_layer"][n] - ep["per_layer"][n]) for n in ep["per_layer"]]
        # Confusion is not sketched: the same values.
        assert s["gradient_confusion"]["value"] == pytest.approx(e["gradient_confusion"]["value"], abs=1e-6)
    assert max(errors) < bound and 0 < sum(errors) / len(errors)
    # Rotation: relative error eps * |D|^2 / (|D|^2 - (|t| - |0|)^2), eps within four standard deviations.
    trainer = runs["sketch"][0]
    initial = TensorFile(str(tmp_path / "sketch" / INITIAL_WEIGHTS_FILE))
    final_exact, final_sketch = exact[-1]["layer_rotation"]["per_layer"], sketched[-1]["layer_rotation"]["per_layer"]
    sketched_layers = 0
    for name, p in trainer.dynamics.selection.parameters.items():
        theta_0, theta_t = initial[name].double().reshape(-1), p.detach().double().reshape(-1)
        d2 = float((theta_t - theta_0).square().sum())
        radial = (float(theta_t.norm()) - float(theta_0.norm())) ** 2
        want = final_exact[name]
        if p.numel() <= dim:
            assert final_sketch[name] == pytest.approx(want, rel=1e-4)
            continue
        sketched_layers += 1
        assert abs(final_sketch[name] - want) <= bound * d2 / (d2 - radial) * want
    assert sketched_layers >= 8


def test_sketch_state_of_a_1b_parameter_model_stays_within_64_mib(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)  # TinyLlama-1.1B's shapes, no memory
    params = select_parameters(model).parameters
    total = sum(p.numel() for p in params.values())
    assert total > 1e9
    dim = 4096
    monkeypatch.setattr("hf_critical.metrics.sketch.CHUNK", PRIME)  # meta tensors: one chunk per layer, shapes only
    keys = [sketch_keys(0, i) for i in range(len(params))]
    # What the callback holds between measurements: the initial weights' sketches, the kept gradient's sketches
    # (same shapes: sketches of the parameters), one squared norm per layer.
    initial = sketch_tensors(list(params.values()), dim, keys)
    kept_gradient = sketch_tensors(list(params.values()), dim, keys)
    held = state_bytes(initial) + state_bytes(kept_gradient) + 8 * len(params)
    assert held <= 64 * 2**20
    assert held == 2 * 4 * dim * len(params) + 8 * len(params)
    assert 4 * total > 60 * held  # the exact state: one float32 copy of the weights (4.1 GiB)


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_bad_sketch_dim_is_refused_naming_the_field(tmp_path, value):
    with pytest.raises(ValueError, match="dynamics_sketch_dim"):
        CriticalPeriodArguments(**common_args(tmp_path, dynamics_sketch_dim=value))
