"""CriticalPeriodTrainer as a drop-in for transformers.Trainer (issue 13, causes A-H).

With metrics off and detector ``never`` it must be indistinguishable from Trainer: same callbacks,
same files, same log entries, same weights. With metrics on, measurements never become log entries
of their own, and any ``nn.Module`` (bare or 0-dimensional parameters) is measured.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from datasets import Dataset
from helpers import common_args, jsonl_path, read_jsonl, text_dataset, tiny_bert
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer, DynamicsCallback, FixedSwitch
from hf_critical.io.tensor_file import TensorFile, write_tensors
from hf_critical.names import INITIAL_WEIGHTS_FILE

OFF = dict(dynamics_metrics="none", detector="never")


class BareRegression(nn.Module):
    """y = x @ w + b with a learnable temperature: bare parameters only, one of them 0-dimensional."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(4, 1, generator=g))
        self.b = nn.Parameter(torch.full((1,), 0.1))
        self.temperature = nn.Parameter(torch.tensor(1.5))

    def forward(self, x, labels=None):
        pred = (x @ self.w + self.b).squeeze(-1) * self.temperature
        loss = None if labels is None else nn.functional.mse_loss(pred, labels)
        return {"loss": loss, "logits": pred}


def regression_data(rows: int = 64, seed: int = 1) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(rows, generator=g)
    return Dataset.from_dict({"x": x.tolist(), "labels": y.tolist()}).with_format("torch")


def _args(cls, output_dir, **overrides):
    overrides.setdefault("learning_rate", 0.01)
    return cls(**common_args(output_dir, **overrides))


class _CountLogs(TrainerCallback):
    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def _without_timings(history: list[dict]) -> list[dict]:
    timing = ("runtime", "per_second", "total_flos")
    return [{k: v for k, v in h.items() if not any(t in k for t in timing)} for h in history]


def _files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder) for f in files)


# ---- the principle: metrics off + detector never = Trainer -------------------------------------------


def test_off_and_never_is_indistinguishable_from_trainer(tmp_path):
    """Causes B, E and G with nothing measured: callbacks, files, log entries and weights as Trainer's."""
    runs = {}
    for name, trainer_cls, args_cls, extra in (
        ("plain", Trainer, TrainingArguments, {}),
        ("ours", CriticalPeriodTrainer, CriticalPeriodArguments, OFF),
    ):
        out = tmp_path / name
        args = _args(args_cls, out, save_strategy="steps", save_steps=3, **extra)
        counter = _CountLogs()
        trainer = trainer_cls(model=tiny_bert(), args=args, train_dataset=text_dataset(), callbacks=[counter])
        trainer.train()
        runs[name] = (trainer, counter, out)
    (plain, plain_logs, plain_out), (ours, our_logs, our_out) = runs["plain"], runs["ours"]
    assert [type(cb) for cb in ours.callback_handler.callbacks] == [type(cb) for cb in plain.callback_handler.callbacks]
    assert _files(our_out) == _files(plain_out)
    assert _without_timings(ours.state.log_history) == _without_timings(plain.state.log_history)
    assert _without_timings(our_logs.logs) == _without_timings(plain_logs.logs)
    for p, q in zip(plain.model.parameters(), ours.model.parameters()):
        assert torch.equal(p, q)


# ---- A and H: bare and 0-dimensional parameters ----------------------------------------------------------


def test_bare_and_scalar_parameters_are_measured(tmp_path):
    """Causes A and H: no Linear/Conv/Embedding, one 0-dim parameter; every metric is measured on all three."""
    trainer = CriticalPeriodTrainer(
        model=BareRegression(),
        args=_args(CriticalPeriodArguments, tmp_path, dynamics_every_n_steps=2, detector="never"),
        train_dataset=regression_data(),
    )
    trainer.train()
    assert trainer.dynamics.selection.names == ["w", "b", "temperature"]
    records = read_jsonl(jsonl_path(tmp_path))
    assert [r["step"] for r in records] == [2, 4, 6]
    for record in records:
        assert set(record["layer_rotation"]["per_layer"]) == {"w", "b", "temperature"}
        for metric in ("gradient_confusion", "gradient_predictability", "layer_rotation"):
            assert math.isfinite(record[metric]["value"])
    # The initial weights file holds the scalar as a 0-dim tensor, read back exactly.
    stored = TensorFile(os.path.join(tmp_path, INITIAL_WEIGHTS_FILE))
    assert stored["temperature"].shape == torch.Size([])
    assert stored["temperature"].item() == 1.5


def test_bare_parameters_train_with_metrics_off(tmp_path):
    trainer = CriticalPeriodTrainer(
        model=BareRegression(), args=_args(CriticalPeriodArguments, tmp_path, **OFF), train_dataset=regression_data()
    )
    trainer.train()
    assert trainer.state.global_step == 6


def test_scalar_tensor_round_trips_through_the_weights_file(tmp_path):
    path = str(tmp_path / "w.safetensors")
    write_tensors(path, [("t", torch.tensor(2.25)), ("v", torch.arange(3.0))])
    stored = TensorFile(path)
    assert stored["t"].shape == torch.Size([]) and stored["t"].item() == 2.25
    assert stored["v"].tolist() == [0.0, 1.0, 2.0]


def test_a_model_with_nothing_trainable_is_not_refused(tmp_path, caplog):
    model = tiny_bert()
    for p in model.parameters():
        p.requires_grad_(False)
    model.classifier.bias.requires_grad_(True)  # the optimizer needs one; "weights" measures it
    trainer = CriticalPeriodTrainer(
        model=model,
        args=_args(CriticalPeriodArguments, tmp_path, dynamics_every_n_steps=2, detector="never"),
        train_dataset=text_dataset(),
    )
    trainer.train()
    assert trainer.dynamics.selection.names == ["classifier.bias"]


def test_a_regex_that_matches_nothing_is_still_refused(tmp_path):
    trainer = CriticalPeriodTrainer(
        model=BareRegression(),
        args=_args(CriticalPeriodArguments, tmp_path, dynamics_layers="no_such_layer", detector="never"),
        train_dataset=regression_data(),
    )
    with pytest.raises(ValueError, match="`dynamics_layers`='no_such_layer' selects no trainable parameter"):
        trainer.train()


# ---- B: no callbacks nobody asked for --------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, expected",
    [
        (OFF, []),
        (dict(dynamics_metrics="none", detector="fixed", detector_switch_step=3), ["CriticalPeriodCallback"]),
        (dict(detector="never"), ["DynamicsCallback"]),
        ({}, ["DynamicsCallback", "CriticalPeriodCallback"]),
    ],
)
def test_only_the_callbacks_that_do_something_are_added(tmp_path, settings, expected):
    plain = Trainer(model=tiny_bert(), args=_args(TrainingArguments, tmp_path), train_dataset=text_dataset())
    ours = CriticalPeriodTrainer(
        model=tiny_bert(), args=_args(CriticalPeriodArguments, tmp_path, **settings), train_dataset=text_dataset()
    )
    base = {type(cb) for cb in plain.callback_handler.callbacks}
    added = [type(cb).__name__ for cb in ours.callback_handler.callbacks if type(cb) not in base]
    assert added == expected


# ---- C: resume from a checkpoint in another folder ------------------------------------------------------


def test_resume_from_a_checkpoint_in_another_folder(tmp_path):
    def trainer_for(out, **extra):
        args = _args(CriticalPeriodArguments, out, dynamics_every_n_steps=2, detector="never", save_steps=4, **extra)
        return CriticalPeriodTrainer(model=tiny_bert(), args=args, train_dataset=text_dataset())

    first = trainer_for(tmp_path / "first", save_strategy="steps")
    first.train()
    # The checkpoint carries the initial weights (a hard link of the run's file: no extra disk).
    checkpoint = tmp_path / "first" / "checkpoint-4"
    assert (checkpoint / INITIAL_WEIGHTS_FILE).is_file()
    moved = tmp_path / "elsewhere" / "checkpoint-4"
    moved.parent.mkdir()
    os.rename(checkpoint, moved)
    os.remove(tmp_path / "first" / INITIAL_WEIGHTS_FILE)
    second = trainer_for(tmp_path / "second", save_strategy="no")
    second.train(resume_from_checkpoint=str(moved))
    for p, q in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)
    full = {r["step"]: r for r in read_jsonl(jsonl_path(tmp_path / "first"))}
    resumed = read_jsonl(jsonl_path(tmp_path / "second"))
    assert [r["step"] for r in resumed] == [6]
    assert resumed[0]["layer_rotation"] == full[6]["layer_rotation"]
    assert resumed[0]["gradient_predictability"] == full[6]["gradient_predictability"]


# ---- D: train() twice -------------------------------------------------------------------------------------


def test_train_twice_starts_a_new_run_each_time(tmp_path):
    detector = FixedSwitch(step=3)
    trainer = CriticalPeriodTrainer(
        model=tiny_bert(),
        args=_args(CriticalPeriodArguments, tmp_path, dynamics_every_n_steps=2),
        train_dataset=text_dataset(),
        detector=detector,
    )
    trainer.train()
    first = [h["step"] for h in trainer.dynamics.history]
    assert trainer.critical_period["switch_step"] == 3
    trainer.train()
    assert [h["step"] for h in trainer.dynamics.history] == first == [2, 4, 6]
    assert trainer.critical_period["switch_step"] == 3
    assert [r["step"] for r in read_jsonl(jsonl_path(tmp_path))] == [2, 4, 6]


# ---- F: resume_from_checkpoint=True without a checkpoint ---------------------------------------------------


@pytest.mark.parametrize("settings", [OFF, {}])
def test_no_checkpoint_raises_the_trainers_error(tmp_path, settings):
    errors = []
    for trainer_cls, args_cls, extra in ((Trainer, TrainingArguments, {}), (CriticalPeriodTrainer, CriticalPeriodArguments, settings)):
        (tmp_path / "out").mkdir(exist_ok=True)
        trainer = trainer_cls(model=tiny_bert(), args=_args(args_cls, tmp_path / "out", **extra), train_dataset=text_dataset())
        with pytest.raises(ValueError) as info:
            trainer.train(resume_from_checkpoint=True)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert "No valid checkpoint found in output directory" in errors[1]


# ---- G: measurements are never log entries of their own -----------------------------------------------------


def test_measurements_ride_on_the_trainers_own_log_entries(tmp_path):
    """Metrics on: as many on_log events and log entries as Trainer, at the same steps, with the values added."""
    runs = {}
    for name, trainer_cls, args_cls, extra in (
        ("plain", Trainer, TrainingArguments, {}),
        ("ours", CriticalPeriodTrainer, CriticalPeriodArguments, dict(dynamics_every_n_steps=2, detector="fixed", detector_switch_step=3)),
    ):
        counter = _CountLogs()
        args = _args(args_cls, tmp_path / name, logging_steps=2, eval_strategy="steps", eval_steps=3, **extra)
        trainer = trainer_cls(
            model=tiny_bert(), args=args, train_dataset=text_dataset(), eval_dataset=text_dataset(16), callbacks=[counter]
        )
        trainer.train()
        runs[name] = (trainer, counter)
    (plain, plain_logs), (ours, our_logs) = runs["plain"], runs["ours"]
    assert [h["step"] for h in ours.state.log_history] == [h["step"] for h in plain.state.log_history]
    assert len(our_logs.logs) == len(plain_logs.logs)
    for mine, theirs in zip(ours.state.log_history, plain.state.log_history):
        extra = set(mine) - set(theirs)
        if "loss" in theirs:  # a training log: the latest measurement, and the switch once
            assert extra >= {"dynamics/layer_rotation", "dynamics/gradient_predictability"}
            assert extra <= {k for k in mine if k.startswith(("dynamics/", "critical_period/"))}
        else:  # evaluation and the final summary are the Trainer's
            assert extra == set()
    switch_logs = [h for h in ours.state.log_history if "critical_period/switch_step" in h]
    assert [h["step"] for h in switch_logs] == [4]  # switched at 3, out with the next training log


def test_reduce_lr_on_plateau_sees_only_the_trainers_entries(tmp_path):
    """The scheduler reads eval_loss from the last log entry; a measurement entry there broke it (KeyError)."""
    args = _args(
        CriticalPeriodArguments,
        tmp_path,
        dynamics_every_n_steps=1,
        detector="never",
        lr_scheduler_type="reduce_lr_on_plateau",
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=1,
    )
    trainer = CriticalPeriodTrainer(model=tiny_bert(), args=args, train_dataset=text_dataset(), eval_dataset=text_dataset(16))
    trainer.train()
    assert trainer.state.global_step == 6
    assert len(trainer.dynamics.history) == 6


def test_plain_trainer_log_is_untouched_by_the_callback(tmp_path):
    counter = _CountLogs()
    plain = Trainer(model=tiny_bert(), args=_args(TrainingArguments, tmp_path / "a"), train_dataset=text_dataset(), callbacks=[_CountLogs()])
    plain.train()
    trainer = Trainer(model=tiny_bert(), args=_args(TrainingArguments, tmp_path / "b"), train_dataset=text_dataset(), callbacks=[counter])
    DynamicsCallback(every_n_steps=2).attach(trainer)
    trainer.train()
    assert _without_timings(trainer.state.log_history) == _without_timings(plain.state.log_history)
    assert len(counter.logs) == len(plain.state.log_history)
