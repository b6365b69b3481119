"""The gradient kept for gradient predictability: by reference while unmodified, copied once something writes to it."""

from __future__ import annotations

import pytest
import torch
from helpers import common_args, jsonl_path, read_jsonl, text_dataset, tiny_bert
from transformers import TrainerCallback

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer
from hf_critical.metrics.gradient_snapshot import GradientKeeper


class GradientRecorder(TrainerCallback):
    """Naive reference: a copy of every measured gradient at on_pre_optimizer_step, concatenated."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.flat: dict[int, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        params = self.trainer.dynamics.selection.parameters.values()
        self.flat[state.global_step + 1] = torch.cat([p.grad.detach().reshape(-1).clone() for p in params])


class ZeroGradInPlace(TrainerCallback):
    """What ``zero_grad(set_to_none=False)`` does: zero the gradients in place after the optimizer step."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        for p in model.parameters():
            if p.grad is not None:
                p.grad.zero_()


def _run(tmp_path, extra_callback=None):
    args = CriticalPeriodArguments(
        **common_args(tmp_path, optim="adamw_torch", learning_rate=1e-3, dynamics_every_n_steps=1, max_steps=5)
    )
    trainer = CriticalPeriodTrainer(model=tiny_bert(), args=args, train_dataset=text_dataset(96))
    recorder = GradientRecorder(trainer)
    trainer.add_callback(recorder)
    if extra_callback is not None:
        trainer.add_callback(extra_callback)
    trainer.train()
    return trainer, recorder, read_jsonl(jsonl_path(tmp_path))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.double(), b.double()) / (a.double().norm() * b.double().norm()))


def test_kept_by_reference_gives_the_reference_predictability(tmp_path):
    trainer, recorder, records = _run(tmp_path)
    assert trainer.dynamics._keeper.copies is False  # AdamW and the Trainer's zero_grad leave gradients alone
    for record in records[1:]:
        step = record["step"]
        want = _cosine(recorder.flat[step - 1], recorder.flat[step])
        assert record["gradient_predictability"]["value"] == pytest.approx(want, abs=1e-5)


def test_in_place_writes_are_detected_and_the_gradients_copied_from_then_on(tmp_path, caplog):
    trainer, recorder, records = _run(tmp_path, ZeroGradInPlace())
    # Step 2's measurement would read step 1's gradient, zeroed in place: reported unavailable, not zero.
    assert records[1]["gradient_predictability"] == {"value": None, "unavailable": True}
    assert "modified in place" in caplog.text
    assert trainer.dynamics._keeper.copies is True
    for record in records[2:]:
        step = record["step"]
        want = _cosine(recorder.flat[step - 1], recorder.flat[step])
        assert record["gradient_predictability"]["value"] == pytest.approx(want, abs=1e-5)


def test_keeper_returns_tensors_it_did_not_hand_out_unchecked():
    keeper = GradientKeeper()
    grads = [torch.ones(3), None]
    kept = keeper.keep(grads)
    assert kept[0].data_ptr() == grads[0].data_ptr() and kept[1] is None  # a reference, not a copy
    restored = [torch.zeros(3), None]  # e.g. read back from a checkpoint
    assert keeper.take(restored) is restored
    copying = GradientKeeper(copy=True)
    copied = copying.keep(grads)
    grads[0].add_(1.0)
    assert copying.take(copied) is copied and torch.equal(copied[0], torch.ones(3))
