"""Single-process checks of the distributed code paths: the DeepSpeed guard and per-rank confusion from norms."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from helpers import common_args, text_dataset, tiny_bert

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer
from hf_critical.metrics import confusion_from_norms, gradient_confusion, squared_norms
from hf_critical.trainer import check_deepspeed, check_fsdp, check_launch


def _args(tmp_path, **overrides):
    return CriticalPeriodArguments(**common_args(tmp_path, **overrides))


def test_deepspeed_with_metrics_is_refused_before_deepspeed_is_imported(tmp_path):
    args = _args(tmp_path, detector="never")
    args.deepspeed = {"zero_optimization": {"stage": 2}}  # set after __post_init__, which would import deepspeed
    with pytest.raises(ValueError, match="DeepSpeed.*ZeRO stages 2 and 3 partition gradients"):
        CriticalPeriodTrainer(model=tiny_bert(), args=args, train_dataset=text_dataset(16))


def test_deepspeed_from_accelerate_launch_is_refused(tmp_path, monkeypatch):
    args = _args(tmp_path, detector="never")  # built first: its __post_init__ would import deepspeed
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` sets with a DeepSpeed config
    with pytest.raises(ValueError, match="dynamics_metrics='none'"):
        check_deepspeed(args, ["layer_rotation"])


def test_deepspeed_without_metrics_passes_the_guard(tmp_path, monkeypatch):
    args = _args(tmp_path, dynamics_metrics="none", detector="fixed", detector_switch_step=3)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    check_deepspeed(args, [])
    check_deepspeed(args, [], enabled=True)
    with pytest.raises(ValueError):
        check_deepspeed(args, ["gradient_predictability"], enabled=True)


def test_fsdp_version_1_with_metrics_is_refused():
    with pytest.raises(ValueError, match="FSDP version 2 only"):
        check_fsdp(SimpleNamespace(fsdp_version=1), ["layer_rotation"])
    check_fsdp(SimpleNamespace(fsdp_version=2), ["layer_rotation"])
    check_fsdp(SimpleNamespace(fsdp_version=1), [])
    check_fsdp(None, ["layer_rotation"])


def test_several_launched_processes_each_training_alone_are_refused(tmp_path, monkeypatch):
    """torchrun on CPU without use_cpu=True: TrainingArguments run every process alone (world size 1)."""
    args = _args(tmp_path, detector="never")
    assert args.world_size == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="use_cpu=True"):
        CriticalPeriodTrainer(model=tiny_bert(), args=args, train_dataset=text_dataset(16))
    check_launch(SimpleNamespace(world_size=2))
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(args)


def _per_layer(grads):
    return [[v for v in squared_norms(list(g.values())).tolist()] for g in grads]


@pytest.mark.parametrize("world", [2, 3])
def test_confusion_from_norms_against_pairwise_cosines(world):
    torch.manual_seed(world)
    names = ["a", "b", "c"]
    shapes = {"a": (4, 5), "b": (7,), "c": (3, 3)}
    grads = [{n: torch.randn(shapes[n]) + 0.3 * r for n in names} for r in range(world)]
    total = {n: sum(g[n] for g in grads) for n in names}
    result = confusion_from_norms(names, _per_layer(grads), squared_norms(list(total.values())).tolist())
    assert result.extra["num_pairs"] == world * (world - 1) // 2
    if world == 2:  # exactly the cosine of the two gradients, globally and per layer
        naive = gradient_confusion(grads)
        assert result.value == pytest.approx(naive.value, abs=1e-6)
        assert result.extra["min"] == result.value
        assert result.per_layer == pytest.approx(naive.per_layer, abs=1e-6)
        return
    # W > 2: pairwise cosines weighted by |g_i| |g_j|, per layer and for the concatenation.
    def weighted(vectors):
        num = den = 0.0
        for i, j in itertools.permutations(range(len(vectors)), 2):
            num += float(vectors[i] @ vectors[j])
            den += float(vectors[i].norm() * vectors[j].norm())
        return num / den

    for n in names:
        assert result.per_layer[n] == pytest.approx(weighted([g[n].flatten() for g in grads]), abs=1e-6)
    flat = [torch.cat([g[n].flatten() for n in names]) for g in grads]
    assert result.value == pytest.approx(weighted(flat), abs=1e-6)
    assert result.extra["min"] is None


def test_confusion_from_norms_skips_missing_zero_and_non_finite_layers():
    rows = [[1.0, None, 0.0, 4.0], [1.0, 2.0, 1.0, math.inf]]
    result = confusion_from_norms(["a", "b", "c", "d"], rows, [4.0, 2.0, 1.0, 1.0])
    assert result.skipped == {"missing": 1, "zero_norm": 1, "non_finite": 1}
    assert result.per_layer == {"a": 1.0} and result.value == 1.0
