"""CriticalPeriodTrainer and DynamicsCallback on tiny BERT / ViT models built from config."""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch
from helpers import (
    common_args,
    dynamics_entries,
    image_dataset,
    jsonl_path,
    read_jsonl,
    text_dataset,
    tiny_bert,
    tiny_vit,
)
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer, DynamicsCallback, gradient_confusion
from hf_critical.names import INITIAL_WEIGHTS_FILE
from hf_critical.trainer import count_items, split_batch

KEYS = ("dynamics/gradient_confusion", "dynamics/gradient_predictability", "dynamics/layer_rotation")


def _train(model, dataset, output_dir, trainer_cls=CriticalPeriodTrainer, **overrides):
    args = CriticalPeriodArguments(**common_args(output_dir, **overrides))
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset)
    trainer.train()
    return trainer


def _max_param_diff(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


# ---- batch splitting ----------------------------------------------------------------------------


def test_split_batch_keeps_all_copies_of_a_sample_together():
    rows_per_sample = 3
    sample_ids = torch.arange(5).repeat_interleave(rows_per_sample)  # 5 samples x 3 copies
    batch = {"input_ids": torch.stack([sample_ids, sample_ids], 1), "labels": sample_ids, "return_dict": True}
    first, second = split_batch(batch, rows_per_sample)
    assert first["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    assert second["labels"].tolist() == [2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert set(first["labels"].tolist()).isdisjoint(second["labels"].tolist())
    assert first["return_dict"] is True and second["return_dict"] is True


def test_split_batch_refuses_what_cannot_be_split():
    assert split_batch({"labels": torch.zeros(1)}) is None  # one sample
    assert split_batch({"labels": torch.zeros(4)}, rows_per_sample=4) is None  # one sample, four copies
    assert split_batch({"labels": torch.zeros(6)}, rows_per_sample=4) is None  # rows not a multiple of copies
    assert split_batch({"labels": torch.zeros(6), "extra": torch.zeros(3)}) is None  # ragged first dims


def test_count_items_follows_the_loss_reduction():
    assert count_items({"labels": torch.tensor([1, -100, 0])}) == 2
    assert count_items({"labels": torch.tensor([[5, 6, -100]])}, shifted_labels=True) == 1
    assert count_items({"labels": torch.rand(4, 3)}) == 12
    assert count_items({"input_ids": torch.zeros(5, 2)}) == 5


def test_split_halves_sum_to_the_unsplit_gradient(tmp_path):
    """Measuring confusion splits step 1's batch in halves; training must not change (SGD, no dropout)."""
    data = text_dataset()
    measured = _train(tiny_bert(), data, tmp_path / "on", dynamics_every_n_steps=2, max_steps=3)
    plain = _train(tiny_bert(), data, tmp_path / "off", dynamics_metrics="none", detector="never", max_steps=3)
    assert read_jsonl(jsonl_path(tmp_path / "on"))[0]["gradient_confusion"]["num_pairs"] == 1
    assert _max_param_diff(measured.model, plain.model) < 1e-6
    losses_on = [h["loss"] for h in measured.state.log_history if "loss" in h]
    losses_off = [h["loss"] for h in plain.state.log_history if "loss" in h]
    assert losses_on == pytest.approx(losses_off, abs=1e-6)


def test_confusion_from_split_matches_the_reference_on_the_halves(tmp_path):
    """The logged confusion equals the cosine of autograd gradients of the two halves of step 1's batch."""
    data = text_dataset()
    model = tiny_bert()
    reference_model = tiny_bert()
    trainer = _train(model, data, tmp_path, dynamics_every_n_steps=2, max_steps=2)
    batch = next(iter(trainer.get_train_dataloader()))
    halves = split_batch(batch)
    grads = []
    names = [name for name, _ in read_jsonl(jsonl_path(tmp_path))[0]["gradient_confusion"]["per_layer"].items()]
    params = dict(reference_model.named_parameters())
    for half in halves:
        loss = reference_model(**half).loss
        grads.append(dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names]))))
    expected = gradient_confusion(grads).value
    logged = read_jsonl(jsonl_path(tmp_path))[0]["gradient_confusion"]["value"]
    assert logged == pytest.approx(expected, abs=1e-5)


# ---- loss scale ---------------------------------------------------------------------------------


@pytest.mark.parametrize("metrics", ["all", "none"])
def test_batch16_equals_batch8_with_two_accumulation_steps(tmp_path, metrics):
    """The loss-scale trap: BERT ignores num_items_in_batch; this trainer weights micro-batches itself."""
    data = text_dataset()
    detector = "stability" if metrics == "all" else "never"
    one = _train(
        tiny_bert(), data, tmp_path / "a", per_device_train_batch_size=16, dynamics_metrics=metrics, detector=detector
    )
    two = _train(
        tiny_bert(),
        data,
        tmp_path / "b",
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        dynamics_metrics=metrics,
        detector=detector,
    )
    losses_one = [h["loss"] for h in one.state.log_history if "loss" in h]
    losses_two = [h["loss"] for h in two.state.log_history if "loss" in h]
    assert len(losses_one) == 6
    assert losses_one == pytest.approx(losses_two, abs=1e-5)
    assert _max_param_diff(one.model, two.model) < 1e-5


def test_vit_batch_equals_accumulated_micro_batches(tmp_path):
    data = image_dataset()
    one = _train(tiny_vit(), data, tmp_path / "a", per_device_train_batch_size=16)
    two = _train(tiny_vit(), data, tmp_path / "b", per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert _max_param_diff(one.model, two.model) < 1e-5


# ---- logging schedule ---------------------------------------------------------------------------


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("model_name", ["bert", "vit"])
def test_metrics_logged_exactly_at_scheduled_steps(tmp_path, model_name, accumulation):
    model, data = (tiny_bert(), text_dataset()) if model_name == "bert" else (tiny_vit(), image_dataset(96))
    trainer = _train(
        model,
        data,
        tmp_path,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=accumulation,
        dynamics_every_n_steps=3,
        max_steps=7,
        logging_steps=100,
    )
    # No training log in 7 steps (logging_steps=100): the measurements are in history and the jsonl only.
    assert not dynamics_entries(trainer.state.log_history)
    assert [h.keys() >= {"train_runtime"} for h in trainer.state.log_history] == [True]
    entries = trainer.dynamics.history
    assert [e["step"] for e in entries] == [3, 6]
    for entry in entries:
        for key in KEYS:
            assert math.isfinite(entry[key])
        assert -1.0 <= entry["dynamics/gradient_confusion"] <= 1.0
        assert entry["dynamics/layer_rotation"] > 0.0
    records = read_jsonl(jsonl_path(tmp_path))
    assert [r["step"] for r in records] == [3, 6]
    selected = trainer.dynamics.selection.names
    for record in records:
        assert record["gradient_confusion"]["batch_step"] == record["step"] - 1
        assert set(record["layer_rotation"]["per_layer"]) == set(selected)
        assert set(record["gradient_predictability"]["per_layer"]) == set(selected)
        assert not any(name.endswith("bias") or "LayerNorm" in name for name in selected)
    assert [h["step"] for h in trainer.dynamics.history] == [3, 6]


def test_three_micro_batches_give_three_pairs(tmp_path):
    _train(
        tiny_bert(),
        text_dataset(96),
        tmp_path,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=3,
        dynamics_every_n_steps=2,
        max_steps=2,
    )
    confusion = read_jsonl(jsonl_path(tmp_path))[0]["gradient_confusion"]
    assert confusion["num_pairs"] == 3
    assert confusion["min"] <= confusion["value"]


def test_learning_rate_zero_gives_zero_rotation(tmp_path):
    trainer = _train(tiny_bert(), text_dataset(), tmp_path, learning_rate=0.0, dynamics_every_n_steps=2)
    for entry in dynamics_entries(trainer.state.log_history):
        assert entry["dynamics/layer_rotation"] == pytest.approx(0.0, abs=1e-7)


def test_tensorboard_receives_the_keys(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(
        tiny_bert(),
        text_dataset(),
        tmp_path,
        dynamics_every_n_steps=2,
        report_to=["tensorboard"],
    )
    runs = [root for root, _, files in os.walk(tmp_path) if any("tfevents" in f for f in files)]
    assert runs
    accumulator = EventAccumulator(runs[0])
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    for key in KEYS:
        assert any(tag.endswith(key) for tag in tags), tags
    steps = [event.step for event in accumulator.Scalars(next(t for t in tags if t.endswith(KEYS[2])))]
    assert steps == [2, 4, 6]


# ---- edges --------------------------------------------------------------------------------------


def test_frozen_parameters_are_left_out_and_counted(tmp_path):
    model = tiny_bert()
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    trainer = _train(model, text_dataset(), tmp_path, dynamics_every_n_steps=2)
    assert not any("embeddings" in n for n in trainer.dynamics.selection.names)
    record = read_jsonl(jsonl_path(tmp_path))[0]
    assert record["frozen_parameters"] == 3
    assert math.isfinite(record["layer_rotation"]["value"])


class _RestoreAfterStep(TrainerCallback):
    """Puts the weights back after each optimizer step, so non-finite gradients never reach the weights."""

    def __init__(self, model):
        self.model = model
        self.clean = {k: v.clone() for k, v in model.state_dict().items()}

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.model.load_state_dict(self.clean)


def test_non_finite_gradients_are_skipped_never_logged(tmp_path):
    model = tiny_bert()
    poisoned = model.bert.encoder.layer[0].attention.self.query.weight
    poisoned.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    args = CriticalPeriodArguments(**common_args(tmp_path, dynamics_every_n_steps=2))
    trainer = CriticalPeriodTrainer(
        model=model, args=args, train_dataset=text_dataset(), callbacks=[_RestoreAfterStep(model)]
    )
    trainer.train()
    records = read_jsonl(jsonl_path(tmp_path))  # fails on any NaN/Infinity
    assert len(records) == 3
    for record in records:
        # Confusion sees the micro-batch gradients before clipping: only the poisoned layer is non-finite.
        confusion = record["gradient_confusion"]
        assert confusion["skipped"]["non_finite"] == 1
        assert "bert.encoder.layer.0.attention.self.query.weight" not in confusion["per_layer"]
        assert math.isfinite(confusion["value"])
        # Trainer's gradient clipping multiplies every gradient by the NaN norm: nothing is left to measure.
        predictability = record["gradient_predictability"]
        assert predictability["value"] is None
        assert predictability["skipped"]["non_finite"] == len(trainer.dynamics.selection.names)
    for entry in dynamics_entries(trainer.state.log_history):
        assert "dynamics/gradient_predictability" not in entry
        assert all(math.isfinite(v) for k, v in entry.items() if k.startswith("dynamics/"))


def test_every_layer_non_finite_leaves_the_key_out(tmp_path):
    model = tiny_bert()
    for p in model.parameters():
        p.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    trainer = _train(
        model, text_dataset(), tmp_path, dynamics_every_n_steps=2, learning_rate=0.0, max_steps=2,
        dynamics_metrics=["gradient_confusion", "gradient_predictability"],
        detector="stability",
        detector_metrics=["gradient_predictability"],
    )
    record = read_jsonl(jsonl_path(tmp_path))[0]
    assert record["gradient_predictability"]["value"] is None
    assert not dynamics_entries(trainer.state.log_history)


def test_plain_trainer_with_callback_measures_what_it_can(tmp_path, caplog):
    args = TrainingArguments(**common_args(tmp_path))
    callback = DynamicsCallback(every_n_steps=2)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=text_dataset())
    callback.attach(trainer)
    with caplog.at_level(logging.WARNING, logger="hf_critical.callbacks.dynamics"):
        trainer.train()
    assert "needs CriticalPeriodTrainer" in caplog.text
    # A plain Trainer's log is left as it is: the values are in the callback's history and the jsonl.
    assert not dynamics_entries(trainer.state.log_history)
    assert [r["step"] for r in read_jsonl(jsonl_path(tmp_path))] == [2, 4, 6]
    entries = callback.history
    assert [e["step"] for e in entries] == [2, 4, 6]
    assert all("dynamics/gradient_confusion" not in e and "dynamics/layer_rotation" in e for e in entries)
    assert all("dynamics/gradient_predictability" in e for e in entries)


def test_bf16_autocast_gives_finite_metrics(tmp_path):
    trainer = _train(tiny_bert(), text_dataset(), tmp_path, dynamics_every_n_steps=2, bf16=True)
    entries = dynamics_entries(trainer.state.log_history)
    assert len(entries) == 3
    assert all(math.isfinite(e[k]) for e in entries for k in KEYS)


# ---- resume -------------------------------------------------------------------------------------


def test_resume_reproduces_the_uninterrupted_metrics(tmp_path):
    data = text_dataset(96)
    overrides = dict(dynamics_every_n_steps=4, max_steps=10, save_strategy="steps", save_steps=3)
    full = _train(tiny_bert(), data, tmp_path / "full", **overrides)
    full_records = read_jsonl(jsonl_path(tmp_path / "full"))

    # The interrupted run stopped after its checkpoint at step 3 and wrote one line (step 4) past it.
    part_dir = tmp_path / "part"
    _train(tiny_bert(), data, part_dir, **{**overrides, "max_steps": 10})
    assert os.path.isdir(part_dir / "checkpoint-3")
    assert os.path.isfile(part_dir / INITIAL_WEIGHTS_FILE)
    args = CriticalPeriodArguments(**common_args(part_dir, **overrides))
    resumed = CriticalPeriodTrainer(model=tiny_bert(seed=5), args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(part_dir / "checkpoint-3"))
    records = read_jsonl(jsonl_path(part_dir))
    assert [r["step"] for r in records] == [r["step"] for r in full_records] == [4, 8]
    for got, want in zip(records, full_records):
        for metric in ("gradient_confusion", "gradient_predictability", "layer_rotation"):
            assert got[metric]["value"] == pytest.approx(want[metric]["value"], abs=1e-5), metric
    assert [h["step"] for h in resumed.dynamics.history] == [4, 8]
    assert _max_param_diff(resumed.model, full.model) < 1e-5


# ---- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"dynamics_metrics": ["gradient_confusion", "sharpness"]}, "dynamics_metrics"),
        ({"dynamics_metrics": [3]}, "dynamics_metrics"),
        ({"dynamics_every_n_steps": 0}, "dynamics_every_n_steps"),
        ({"dynamics_every_n_steps": 2.5}, "dynamics_every_n_steps"),
        ({"dynamics_every_n_steps": True}, "dynamics_every_n_steps"),
        ({"dynamics_layers": "(unclosed"}, "dynamics_layers"),
        ({"dynamics_layers": ""}, "dynamics_layers"),
        ({"dynamics_initial_weights": "gpu"}, "dynamics_initial_weights"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_field(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field):
        CriticalPeriodArguments(output_dir=str(tmp_path), report_to=[], **overrides)


def test_layer_regex_matching_nothing_fails_at_train_start(tmp_path):
    with pytest.raises(ValueError, match="dynamics_layers"):
        _train(tiny_bert(), text_dataset(), tmp_path, dynamics_layers="no_such_layer")


def test_hf_argument_parser_reads_the_fields(tmp_path):
    parser = HfArgumentParser(CriticalPeriodArguments)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir", str(tmp_path),
            "--dynamics_metrics", "gradient_confusion", "layer_rotation",
            "--dynamics_every_n_steps", "25",
            "--dynamics_layers", "attention",
        ]
    )
    assert args.dynamics_metrics == ["gradient_confusion", "layer_rotation"]
    assert args.dynamics_every_n_steps == 25
    assert args.dynamics_layers == "attention"
    assert CriticalPeriodArguments(output_dir=str(tmp_path), dynamics_metrics="all").dynamics_metrics == [
        "gradient_confusion",
        "gradient_predictability",
        "layer_rotation",
    ]


def test_callback_passed_twice_is_refused(tmp_path):
    args = CriticalPeriodArguments(**common_args(tmp_path))
    with pytest.raises(ValueError, match="not both"):
        CriticalPeriodTrainer(
            model=tiny_bert(),
            args=args,
            train_dataset=text_dataset(),
            callbacks=[DynamicsCallback()],
            dynamics_callback=DynamicsCallback(),
        )


def test_vit_resume_restores_weights_saved_under_legacy_names(tmp_path):
    """transformers 5 saves ViT under renamed keys that Trainer's resume does not map back; we do."""
    data = image_dataset(64)
    overrides = dict(dynamics_every_n_steps=2, max_steps=6, save_strategy="steps", save_steps=3)
    full = _train(tiny_vit(), data, tmp_path / "full", **overrides)
    args = CriticalPeriodArguments(**common_args(tmp_path / "full", **overrides))
    resumed = CriticalPeriodTrainer(model=tiny_vit(seed=7), args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert _max_param_diff(resumed.model, full.model) < 1e-6


@pytest.mark.parametrize("storage", ["disk", "host", "device"])
def test_initial_weights_storage_gives_the_same_rotation(tmp_path, storage):
    trainer = _train(
        tiny_bert(), text_dataset(), tmp_path, dynamics_every_n_steps=2, dynamics_initial_weights=storage,
        dynamics_metrics=["layer_rotation"],
    )
    values = [e["dynamics/layer_rotation"] for e in dynamics_entries(trainer.state.log_history)]
    reference = _train(
        tiny_bert(), text_dataset(), tmp_path / "ref", dynamics_every_n_steps=2, dynamics_metrics=["layer_rotation"],
        dynamics_initial_weights="device",
    )
    expected = [e["dynamics/layer_rotation"] for e in dynamics_entries(reference.state.log_history)]
    assert len(values) == 3 and values == pytest.approx(expected, rel=1e-6)


# ---- confusion over m chunks, and at every step ------------------------------------------------


def test_split_batch_into_chunks_keeps_samples_together_and_covers_the_batch():
    rows_per_sample = 2
    batch = {"labels": torch.arange(14), "flag": True}  # 7 samples of 2 rows
    chunks = split_batch(batch, rows_per_sample, parts=3)
    assert [c["labels"].tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12, 13]]
    assert all(c["flag"] is True for c in chunks)
    assert split_batch(batch, rows_per_sample, parts=8) is None  # fewer samples than chunks
    with pytest.raises(ValueError, match="`parts` must be an integer >= 2"):
        split_batch(batch, parts=1)


@pytest.mark.parametrize("chunks", [2, 4])
def test_confusion_over_chunks_matches_the_reference_on_every_pair(tmp_path, chunks):
    """The logged mean and minimum equal those of the autograd gradients of the m chunks' every pair."""
    data = text_dataset()
    trainer = _train(tiny_bert(), data, tmp_path, dynamics_every_n_steps=2, max_steps=2, dynamics_confusion_chunks=chunks)
    reference_model = tiny_bert()
    batch = next(iter(trainer.get_train_dataloader()))
    record = read_jsonl(jsonl_path(tmp_path))[0]["gradient_confusion"]
    names = list(record["per_layer"])
    params = dict(reference_model.named_parameters())
    grads = []
    for chunk in split_batch(batch, parts=chunks):
        loss = reference_model(**chunk).loss
        flat = torch.cat([g.flatten() for g in torch.autograd.grad(loss, [params[n] for n in names])])
        grads.append(flat)
    # Naive reference: the cosine of the concatenated gradients for each pair; then mean and min over pairs.
    pair_values = [
        float(grads[i] @ grads[j] / (grads[i].norm() * grads[j].norm()))
        for i in range(chunks)
        for j in range(i + 1, chunks)
    ]
    assert record["num_pairs"] == chunks * (chunks - 1) // 2
    assert record["value"] == pytest.approx(sum(pair_values) / len(pair_values), abs=1e-5)
    assert record["min"] == pytest.approx(min(pair_values), abs=1e-5)


def test_every_step_measurement_measures_confusion_at_every_step(tmp_path):
    data = text_dataset()
    _train(tiny_bert(), data, tmp_path, dynamics_every_n_steps=1, max_steps=4)
    records = read_jsonl(jsonl_path(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # Step 1's measurement has no batch before it; every later one has its predecessor's confusion.
    assert records[0]["gradient_confusion"].get("unavailable") is True
    assert all(r["gradient_confusion"]["num_pairs"] == 1 and r["gradient_confusion"]["batch_step"] == r["step"] - 1 for r in records[1:])


def test_predictability_measured_at_every_step_matches_the_naive_cosines_of_consecutive_gradients(tmp_path, monkeypatch):
    """At consecutive measurements the kept gradient's norms are reused: the values must stay the exact cosines."""
    import hf_critical.metrics.predictability as predictability

    norm_calls = []
    real_squared_norms = predictability.squared_norms
    monkeypatch.setattr(predictability, "squared_norms", lambda t: norm_calls.append(len(t)) or real_squared_norms(t))

    class GradientRecorder(TrainerCallback):
        def __init__(self):
            self.grads = []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads.append({n: p.grad.detach().double().clone() for n, p in model.named_parameters() if p.grad is not None})

    overrides = dict(dynamics_every_n_steps=1, max_steps=5, dynamics_metrics=["gradient_predictability"], detector="never")
    args = CriticalPeriodArguments(**common_args(tmp_path, **overrides))
    trainer = CriticalPeriodTrainer(model=tiny_bert(), args=args, train_dataset=text_dataset())
    recorder = GradientRecorder()
    trainer.add_callback(recorder)
    trainer.train()
    records = read_jsonl(jsonl_path(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and records[0]["gradient_predictability"]["value"] is None
    # Step 2 takes both gradients' norms (step 1 had no previous gradient, so took none); steps 3-5 reuse the
    # previous gradient's: 5 reductions instead of 8.
    assert len(norm_calls) == 5
    for record, previous, current in zip(records[1:], recorder.grads, recorder.grads[1:]):
        layers = record["gradient_predictability"]["per_layer"]
        assert layers, record["step"]
        for name, value in layers.items():
            a, b = previous[name].reshape(-1), current[name].reshape(-1)
            assert value == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-5), (record["step"], name)
        dot = sum(float(previous[n].reshape(-1) @ current[n].reshape(-1)) for n in layers)
        sq_a = sum(float(previous[n].square().sum()) for n in layers)
        sq_b = sum(float(current[n].square().sum()) for n in layers)
        assert record["gradient_predictability"]["value"] == pytest.approx(dot / math.sqrt(sq_a * sq_b), abs=1e-5)
