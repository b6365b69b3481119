"""Tests for hf_critical.metrics against deliberately naive references.

The references loop over flattened tensors element by element with Python floats (float64), so
they share no code path with the vectorised float32 reductions under test. Gradients come from
``torch.autograd.grad`` on a tiny seeded MLP and distinct mini-batches.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn

from hf_critical.metrics import (
    SKIP_REASONS,
    MetricResult,
    PairwiseGradientCosines,
    dot_products,
    gradient_confusion,
    gradient_predictability,
    layer_rotation,
    squared_norms,
)

TOL = 1e-5


# --------------------------------------------------------------------------- naive references


def _naive_sums(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """(a.b, a.a, b.b) by an explicit Python loop in float64."""
    dot = aa = bb = 0.0
    for x, y in zip(a.detach().reshape(-1).tolist(), b.detach().reshape(-1).tolist()):
        dot += x * y
        aa += x * x
        bb += y * y
    return dot, aa, bb


def _naive_cosines(first: dict, second: dict) -> tuple[float, dict[str, float]]:
    """Global cosine of the concatenations and one cosine per layer."""
    per_layer = {}
    total_dot = total_a = total_b = 0.0
    for name in first:
        dot, aa, bb = _naive_sums(first[name], second[name])
        per_layer[name] = dot / (math.sqrt(aa) * math.sqrt(bb))
        total_dot += dot
        total_a += aa
        total_b += bb
    return total_dot / (math.sqrt(total_a) * math.sqrt(total_b)), per_layer


# --------------------------------------------------------------------------- toy problem


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def _batch(seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(size, 5, generator=gen), torch.randn(size, 3, generator=gen)


def _grad(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    names, params = zip(*model.named_parameters())
    inputs, targets = batch
    loss = nn.functional.mse_loss(model(inputs), targets)
    return dict(zip(names, torch.autograd.grad(loss, params)))


def _sgd_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], lr: float) -> None:
    grads = _grad(model, batch)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param -= lr * grads[name]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_json_clean(result: MetricResult) -> None:
    # allow_nan=False raises on NaN or +-inf anywhere in the dict.
    json.dumps(result.to_dict(), allow_nan=False)


# --------------------------------------------------------------------------- 1. gradient confusion


def test_confusion_two_batches_matches_naive_reference() -> None:
    model = _model()
    ga, gb = _grad(model, _batch(1)), _grad(model, _batch(2))
    ref_global, ref_layers = _naive_cosines(ga, gb)
    assert abs(ref_global) < 0.999  # the batches really are distinct

    result = gradient_confusion([ga, gb])

    assert result.value == pytest.approx(ref_global, abs=TOL)
    assert set(result.per_layer) == set(ref_layers)
    for name, ref in ref_layers.items():
        assert result.per_layer[name] == pytest.approx(ref, abs=TOL), name
    assert result.extra["num_pairs"] == 1
    assert result.extra["min"] == pytest.approx(ref_global, abs=TOL)
    assert result.skipped == dict.fromkeys(SKIP_REASONS, 0)
    _assert_json_clean(result)


@pytest.mark.parametrize("num_batches", [3, 4])
def test_confusion_several_batches_mean_min_and_pairs(num_batches: int) -> None:
    model = _model()
    grads = [_grad(model, _batch(10 + i)) for i in range(num_batches)]
    pairs = list(itertools.combinations(range(num_batches), 2))
    refs = [_naive_cosines(grads[i], grads[j]) for i, j in pairs]
    ref_values = [global_value for global_value, _ in refs]

    result = gradient_confusion(grads)

    assert result.value == pytest.approx(sum(ref_values) / len(ref_values), abs=TOL)
    assert result.extra["min"] == pytest.approx(min(ref_values), abs=TOL)
    assert result.extra["num_pairs"] == len(pairs) == num_batches * (num_batches - 1) // 2
    for name in grads[0]:
        ref_layer_mean = sum(layers[name] for _, layers in refs) / len(refs)
        assert result.per_layer[name] == pytest.approx(ref_layer_mean, abs=TOL), name


# --------------------------------------------------------------------------- 2. gradient predictability


def test_predictability_across_sgd_step_matches_naive_reference() -> None:
    model = _model()
    batch_t, batch_t1 = _batch(3), _batch(4)
    g_prev = _grad(model, batch_t)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param -= 0.5 * g_prev[name]
    g_cur = _grad(model, batch_t1)
    ref_global, ref_layers = _naive_cosines(g_prev, g_cur)

    result = gradient_predictability(g_prev, g_cur)

    assert result.value == pytest.approx(ref_global, abs=TOL)
    for name, ref in ref_layers.items():
        assert result.per_layer[name] == pytest.approx(ref, abs=TOL), name
    assert result.skipped == dict.fromkeys(SKIP_REASONS, 0)
    _assert_json_clean(result)


def test_predictability_with_the_previous_norms_handed_on_matches_the_naive_reference_along_a_chain() -> None:
    """Each gradient is `current` once and `previous` once; its norms are taken once and reused."""
    model = _model()
    grads = [_grad(model, _batch(seed)) for seed in (5, 6, 7)]
    handed: dict = {}
    first = gradient_predictability(grads[0], grads[1], current_sq_norms=handed)
    assert set(handed) == set(grads[1]) and all(t.dim() == 0 for t in handed.values())
    for name, norm in handed.items():
        assert float(norm) == pytest.approx(float(grads[1][name].double().square().sum()), rel=1e-5), name
    second = gradient_predictability(grads[1], grads[2], previous_sq_norms=dict(handed), current_sq_norms=handed)
    for result, (a, b) in ((first, grads[:2]), (second, grads[1:])):
        ref_global, ref_layers = _naive_cosines(a, b)
        assert result.value == pytest.approx(ref_global, abs=TOL)
        for name, ref in ref_layers.items():
            assert result.per_layer[name] == pytest.approx(ref, abs=TOL), name
    # Norms that do not cover every layer are not used: the missing ones are taken.
    partial = {name: torch.tensor(1e9) for name in list(grads[1])[:1]}
    assert gradient_predictability(grads[1], grads[2], previous_sq_norms=partial).value == pytest.approx(second.value, abs=TOL)


# --------------------------------------------------------------------------- 3. layer rotation


def test_layer_rotation_matches_naive_reference() -> None:
    model = _model()
    initial = _weights(model)
    for step in range(5):
        _sgd_step(model, _batch(20 + step), lr=0.3)
    current = _weights(model)
    _, ref_cos = _naive_cosines(initial, current)
    ref_layers = {name: 1.0 - cos for name, cos in ref_cos.items()}
    ref_weighted = sum(ref_layers[n] * current[n].numel() for n in ref_layers) / sum(
        current[n].numel() for n in ref_layers
    )

    result = layer_rotation(initial, current)

    assert all(r > 1e-4 for r in ref_layers.values())  # the weights really did rotate
    for name, ref in ref_layers.items():
        assert result.per_layer[name] == pytest.approx(ref, abs=TOL), name
    assert result.value == pytest.approx(sum(ref_layers.values()) / len(ref_layers), abs=TOL)
    assert result.extra["weighted_mean"] == pytest.approx(ref_weighted, abs=TOL)
    # The weighted mean really weights: the 35-element weight counts more than the 3-element bias.
    assert result.extra["weighted_mean"] != pytest.approx(result.value, abs=1e-6)
    _assert_json_clean(result)


def test_layer_rotation_zero_learning_rate_is_zero() -> None:
    model = _model()
    initial = _weights(model)
    for step in range(3):
        _sgd_step(model, _batch(30 + step), lr=0.0)

    result = layer_rotation(initial, _weights(model))

    assert set(result.per_layer) == set(initial)
    for name, rotation in result.per_layer.items():
        assert 0.0 <= rotation < 1e-6, name
    assert abs(result.value) < 1e-6
    assert abs(result.extra["weighted_mean"]) < 1e-6


def test_layer_rotation_never_negative_under_scaling() -> None:
    # Scaling weights keeps the direction: rotation is 0 up to rounding, and never below 0.
    weights = {f"w{i}": torch.randn(33, generator=torch.Generator().manual_seed(i)) for i in range(20)}
    scaled = {name: 3.7 * w for name, w in weights.items()}
    result = layer_rotation(weights, scaled)
    for name, rotation in result.per_layer.items():
        assert 0.0 <= rotation < 1e-6, name


# --------------------------------------------------------------------------- 4. scale invariance


@pytest.mark.parametrize("scale", [3.7, 1e-3, 250.0])
def test_cosines_are_scale_invariant(scale: float) -> None:
    model = _model()
    ga, gb = _grad(model, _batch(1)), _grad(model, _batch(2))
    base_conf = gradient_confusion([ga, gb])
    base_pred = gradient_predictability(ga, gb)

    scaled_b = {name: scale * g for name, g in gb.items()}
    conf = gradient_confusion([ga, scaled_b])
    pred = gradient_predictability(ga, scaled_b)

    assert conf.value == pytest.approx(base_conf.value, abs=1e-6)
    assert pred.value == pytest.approx(base_pred.value, abs=1e-6)
    for name in ga:
        assert conf.per_layer[name] == pytest.approx(base_conf.per_layer[name], abs=1e-6)
        assert pred.per_layer[name] == pytest.approx(base_pred.per_layer[name], abs=1e-6)


def test_cosines_per_layer_positive_scaling_changes_only_global() -> None:
    # A different positive constant per layer keeps every per-layer cosine; scaling the whole
    # gradient by one constant (per call) keeps the global one too.
    model = _model()
    ga, gb = _grad(model, _batch(1)), _grad(model, _batch(2))
    base = gradient_predictability(ga, gb)
    per_layer_scaled = {name: (0.5 + 2 * i) * g for i, (name, g) in enumerate(gb.items())}
    result = gradient_predictability(ga, per_layer_scaled)
    for name in ga:
        assert result.per_layer[name] == pytest.approx(base.per_layer[name], abs=1e-6)
    ref_global, _ = _naive_cosines(ga, per_layer_scaled)
    assert result.value == pytest.approx(ref_global, abs=TOL)


def test_cosines_negation_flips_sign() -> None:
    model = _model()
    ga, gb = _grad(model, _batch(1)), _grad(model, _batch(2))
    base_conf = gradient_confusion([ga, gb])
    base_pred = gradient_predictability(ga, gb)
    negated = {name: -g for name, g in gb.items()}

    conf = gradient_confusion([ga, negated])
    pred = gradient_predictability(ga, negated)

    assert conf.value == pytest.approx(-base_conf.value, abs=1e-6)
    assert pred.value == pytest.approx(-base_pred.value, abs=1e-6)
    for name in ga:
        assert conf.per_layer[name] == pytest.approx(-base_conf.per_layer[name], abs=1e-6)
        assert pred.per_layer[name] == pytest.approx(-base_pred.per_layer[name], abs=1e-6)
    assert gradient_predictability(ga, {n: -g for n, g in ga.items()}).value == pytest.approx(-1.0, abs=1e-6)


# --------------------------------------------------------------------------- 5. identical batches


def test_identical_batches_confusion_is_one() -> None:
    model = _model()
    ga, gb = _grad(model, _batch(5)), _grad(model, _batch(5))
    result = gradient_confusion([ga, gb, _grad(model, _batch(5))])
    assert result.value == pytest.approx(1.0, abs=1e-6)
    assert result.extra["min"] == pytest.approx(1.0, abs=1e-6)
    for name, cosine in result.per_layer.items():
        assert cosine == pytest.approx(1.0, abs=1e-6), name


# --------------------------------------------------------------------------- 6. skips


def test_missing_layer_is_skipped_and_others_measured() -> None:
    model = _model()
    ga, gb = _grad(model, _batch(1)), _grad(model, _batch(2))
    ref_global, ref_layers = _naive_cosines({n: g for n, g in ga.items() if n != "2.bias"}, gb)
    gb_missing = dict(gb, **{"2.bias": None})

    for result in (gradient_confusion([ga, gb_missing]), gradient_predictability(ga, gb_missing)):
        assert result.skipped == {"missing": 1, "non_finite": 0, "zero_norm": 0}
        assert "2.bias" not in result.per_layer
        assert set(result.per_layer) == set(ref_layers)
        assert result.value == pytest.approx(ref_global, abs=TOL)
        _assert_json_clean(result)

    # A key absent from one mapping counts as missing, like an explicit None.
    gb_absent = {n: g for n, g in gb.items() if n != "2.bias"}
    result = gradient_predictability(ga, gb_absent)
    assert result.skipped["missing"] == 1
    assert result.value == pytest.approx(ref_global, abs=TOL)

    rotation = layer_rotation(ga, gb_missing)
    assert rotation.skipped["missing"] == 1
    assert "2.bias" not in rotation.per_layer


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_layer_is_skipped(bad: float) -> None:
    model = _model()
    ga, gb = _grad(model, _batch(1)), _grad(model, _batch(2))
    ref_global, _ = _naive_cosines({n: g for n, g in ga.items() if n != "0.weight"}, gb)
    poisoned = gb["0.weight"].clone()
    poisoned[2, 3] = bad
    gb_bad = dict(gb, **{"0.weight": poisoned})

    for result in (
        gradient_confusion([ga, gb_bad]),
        gradient_predictability(ga, gb_bad),
        layer_rotation(ga, gb_bad),
    ):
        assert result.skipped == {"missing": 0, "non_finite": 1, "zero_norm": 0}
        assert "0.weight" not in result.per_layer
        assert len(result.per_layer) == 3
        _assert_json_clean(result)
    assert gradient_predictability(ga, gb_bad).value == pytest.approx(ref_global, abs=TOL)


def test_zero_norm_layer_is_skipped() -> None:
    model = _model()
    ga, gb = _grad(model, _batch(1)), _grad(model, _batch(2))
    ref_global, _ = _naive_cosines({n: g for n, g in ga.items() if n != "0.bias"}, gb)
    gb_zero = dict(gb, **{"0.bias": torch.zeros_like(gb["0.bias"])})

    for result in (
        gradient_confusion([ga, gb_zero]),
        gradient_predictability(ga, gb_zero),
        layer_rotation(ga, gb_zero),
    ):
        assert result.skipped == {"missing": 0, "non_finite": 0, "zero_norm": 1}
        assert "0.bias" not in result.per_layer
        _assert_json_clean(result)
    assert gradient_confusion([ga, gb_zero]).value == pytest.approx(ref_global, abs=TOL)


def test_non_finite_counted_once_per_pair() -> None:
    model = _model()
    grads = [_grad(model, _batch(40 + i)) for i in range(3)]
    grads[0] = dict(grads[0], **{"2.weight": torch.full_like(grads[0]["2.weight"], float("nan"))})
    result = gradient_confusion(grads)
    # The NaN layer spoils pairs (0, 1) and (0, 2) but not (1, 2).
    assert result.skipped["non_finite"] == 2
    # Its per-layer value is the mean over the one pair it was measured in.
    _, ref_12 = _naive_cosines(grads[1], grads[2])
    assert result.per_layer["2.weight"] == pytest.approx(ref_12["2.weight"], abs=TOL)
    assert result.extra["num_pairs"] == 3
    _assert_json_clean(result)


def test_all_layers_bad_gives_none_and_clean_json() -> None:
    names = ["a", "b", "c"]
    good = {n: torch.randn(4, generator=torch.Generator().manual_seed(i)) for i, n in enumerate(names)}
    bad = {"a": None, "b": torch.tensor([1.0, float("nan"), 0.0, 2.0]), "c": torch.zeros(4)}

    confusion = gradient_confusion([good, bad])
    predictability = gradient_predictability(good, bad)
    rotation = layer_rotation(good, bad)
    incremental = PairwiseGradientCosines(names)
    incremental.add([good[n] for n in names])
    incremental.add([bad[n] for n in names])

    for result in (confusion, predictability, rotation, incremental.result()):
        assert result.value is None
        assert result.per_layer == {}
        assert result.skipped == {"missing": 1, "non_finite": 1, "zero_norm": 1}
        _assert_json_clean(result)
    assert confusion.extra == {"min": None, "num_pairs": 0}
    assert rotation.extra == {"weighted_mean": None}


def test_all_layers_missing_gives_none() -> None:
    result = gradient_predictability({"a": None}, {"a": torch.ones(2)})
    assert result.value is None
    assert result.skipped["missing"] == 1
    _assert_json_clean(result)
    _assert_json_clean(gradient_confusion([{}, {}]))
    assert gradient_confusion([{}, {}]).value is None


# --------------------------------------------------------------------------- 7. low precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_float32(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(7)
    a32 = torch.randn(2048, generator=gen)
    b32 = a32 + 0.5 * torch.randn(2048, generator=gen)
    a, b = a32.to(dtype), b32.to(dtype)
    w_a, w_b = torch.randn(64, 32, generator=gen).to(dtype), torch.randn(64, 32, generator=gen).to(dtype)
    first, second = {"x": a, "w": w_a}, {"x": b, "w": w_b}
    # The reference upcasts the very same low-precision values to float64.
    ref_global, ref_layers = _naive_cosines(
        {n: t.double() for n, t in first.items()}, {n: t.double() for n, t in second.items()}
    )

    confusion = gradient_confusion([first, second])
    predictability = gradient_predictability(first, second)
    incremental = PairwiseGradientCosines(["x", "w"])
    incremental.add([a, w_a])
    incremental.add([b, w_b])

    for result in (confusion, predictability, incremental.result()):
        assert result.value == pytest.approx(ref_global, abs=1e-4)
        for name, ref in ref_layers.items():
            assert result.per_layer[name] == pytest.approx(ref, abs=1e-4), name

    rotation = layer_rotation({"x": a}, {"x": b})
    assert rotation.value == pytest.approx(1.0 - ref_layers["x"], abs=1e-4)

    # Accumulating in the input dtype would miss the reference by far more than the tolerance.
    def low_precision_dot(u: torch.Tensor, v: torch.Tensor) -> float:
        total = torch.zeros((), dtype=dtype)
        for p in u * v:
            total = total + p
        return total.item()

    naive_low = low_precision_dot(a, b) / math.sqrt(low_precision_dot(a, a) * low_precision_dot(b, b))
    if dtype == torch.bfloat16:
        assert abs(naive_low - ref_layers["x"]) > 1e-3


def test_squared_norms_and_dots_are_float32() -> None:
    a = torch.randn(10).bfloat16()
    b = torch.randn(10).half()
    assert squared_norms([a, b]).dtype == torch.float32
    assert dot_products([a], [a]).dtype == torch.float32
    assert squared_norms([]).numel() == 0
    ref = sum(x * x for x in a.double().tolist())
    assert squared_norms([a]).item() == pytest.approx(ref, rel=1e-6)


# --------------------------------------------------------------------------- 8. incremental


@pytest.mark.parametrize("num_batches", [2, 4])
def test_pairwise_incremental_matches_batch_function(num_batches: int) -> None:
    model = _model()
    grads = [_grad(model, _batch(50 + i)) for i in range(num_batches)]
    names = list(grads[0])
    expected = gradient_confusion(grads)

    incremental = PairwiseGradientCosines(names)
    for g in grads:
        incremental.add([g[n] for n in names])
    assert len(incremental) == num_batches
    result = incremental.result()

    assert result.value == pytest.approx(expected.value, abs=1e-12)
    assert result.extra["min"] == pytest.approx(expected.extra["min"], abs=1e-12)
    assert result.extra["num_pairs"] == expected.extra["num_pairs"]
    assert result.per_layer == pytest.approx(expected.per_layer, abs=1e-12)
    assert result.skipped == expected.skipped
    assert len(incremental) == 0  # result() releases the gradients


def test_pairwise_incremental_with_skips_matches_batch_function() -> None:
    model = _model()
    grads = [_grad(model, _batch(60 + i)) for i in range(3)]
    names = list(grads[0])
    grads[1] = dict(grads[1], **{"0.bias": torch.zeros_like(grads[1]["0.bias"])})
    grads[2] = dict(grads[2], **{"2.weight": torch.full_like(grads[2]["2.weight"], float("inf"))})
    expected = gradient_confusion(grads)

    incremental = PairwiseGradientCosines(names)
    for g in grads:
        incremental.add([g[n] for n in names])
    result = incremental.result()

    assert result.value == pytest.approx(expected.value, abs=1e-12)
    assert result.extra == pytest.approx(expected.extra, abs=1e-12)
    assert result.per_layer == pytest.approx(expected.per_layer, abs=1e-12)
    assert result.skipped == expected.skipped == {"missing": 0, "non_finite": 2, "zero_norm": 2}


def test_pairwise_incremental_edge_cases() -> None:
    incremental = PairwiseGradientCosines(["a", "b"])
    with pytest.raises(ValueError):
        incremental.add([torch.ones(2)])
    assert incremental.result().value is None
    incremental.add([torch.ones(2), torch.ones(3)])
    result = incremental.result()  # a single gradient has no pair
    assert result.value is None
    assert result.extra["num_pairs"] == 0
    _assert_json_clean(result)


def test_pairwise_and_batch_agree_when_layer_missing_from_one_gradient() -> None:
    model = _model()
    grads = [_grad(model, _batch(70 + i)) for i in range(3)]
    names = list(grads[0])
    grads[2] = dict(grads[2], **{"2.bias": None})
    expected = gradient_confusion(grads)

    incremental = PairwiseGradientCosines(names)
    for g in grads:
        incremental.add([g[n] for n in names])
    result = incremental.result()

    assert result.skipped == expected.skipped
    assert result.per_layer == pytest.approx(expected.per_layer, abs=1e-12)
    assert result.value == pytest.approx(expected.value, abs=1e-12)


def test_confusion_missing_count_independent_of_order() -> None:
    x = [torch.randn(3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    y = [torch.randn(4, generator=torch.Generator().manual_seed(10 + i)) for i in range(3)]
    only_x = {"x": x[0]}
    both_1, both_2 = {"x": x[1], "y": y[1]}, {"x": x[2], "y": y[2]}
    forward = gradient_confusion([only_x, both_1, both_2])
    backward = gradient_confusion([both_1, both_2, only_x])
    assert forward.value == pytest.approx(backward.value, abs=1e-12)
    assert forward.skipped == backward.skipped


# --------------------------------------------------------------------------- 9. argument errors


def test_confusion_needs_two_gradients() -> None:
    g = {"a": torch.ones(2)}
    with pytest.raises(ValueError, match="at least two"):
        gradient_confusion([g])
    with pytest.raises(ValueError, match="at least two"):
        gradient_confusion([])


def test_dot_products_rejects_mismatches() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        dot_products([torch.ones(2, 3)], [torch.ones(3, 2)])
    with pytest.raises(ValueError, match="equal length"):
        dot_products([torch.ones(2)], [torch.ones(2), torch.ones(2)])
    with pytest.raises(ValueError):
        gradient_confusion([{"a": torch.ones(2)}, {"a": torch.ones(3)}])
    assert dot_products([], []).numel() == 0


# --------------------------------------------------------------------------- 10. clamping


def _rounds_past_one() -> tuple[torch.Tensor, float]:
    """A vector and a scale whose float32 cosine, computed naively, exceeds 1 by rounding."""
    for seed in range(200):
        a = torch.randn(257, generator=torch.Generator().manual_seed(seed))
        for scale in (3.7, 0.3, 1.1, 7.0):
            dot = dot_products([a], [scale * a]).item()
            raw = dot / math.sqrt(squared_norms([a]).item() * squared_norms([scale * a]).item())
            if raw > 1.0:
                return a, scale
    raise AssertionError("no vector whose float32 cosine rounds past 1")


def test_cosines_clamp_to_unit_interval() -> None:
    a, scale = _rounds_past_one()
    same = {"x": a, "y": a[:50]}
    scaled = {"x": scale * a, "y": scale * a[:50]}
    negated = {"x": -scale * a, "y": -scale * a[:50]}

    for result in (gradient_confusion([same, scaled]), gradient_predictability(same, scaled)):
        assert result.value <= 1.0
        assert result.value == pytest.approx(1.0, abs=1e-6)
        assert all(c <= 1.0 for c in result.per_layer.values())
        assert result.per_layer["x"] == 1.0  # the raw float32 ratio was above 1
    for result in (gradient_confusion([same, negated]), gradient_predictability(same, negated)):
        assert result.value >= -1.0
        assert result.per_layer["x"] == -1.0
    rotation = layer_rotation(same, scaled)
    assert 0.0 <= rotation.per_layer["x"] < 1e-7  # float32 rounding, never negative
    assert all(r >= 0.0 for r in rotation.per_layer.values())


def test_identical_vectors_with_awkward_values() -> None:
    # Values spanning many binades, whose squares do not add exactly in float32.
    values = torch.tensor([1e-3, 3.3333333, 1e3, -7.1e2, 0.1, 1 / 3, 2.0**-20] * 37)
    g = {"a": values, "b": values.flip(0)[:100]}
    for result in (gradient_confusion([g, g]), gradient_predictability(g, g)):
        assert -1.0 <= result.value <= 1.0
        assert result.value == pytest.approx(1.0, abs=1e-7)
        assert all(-1.0 <= c <= 1.0 for c in result.per_layer.values())
    assert layer_rotation(g, g).value == pytest.approx(0.0, abs=1e-7)
    assert layer_rotation(g, g).value >= 0.0

