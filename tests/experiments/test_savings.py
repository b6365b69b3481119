"""Rows and step times measured per optimizer step, and the derived cost of the run without the switch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers import common_args, sentence_dataset, tiny_bert, tiny_tokenizer

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer, TextAugmentationCollator
from hf_critical.experiments.savings import COST_STATE_KEY, TrainingCostCallback, compute_savings, estimate_cost


def steps(rows, seconds):
    return [{"step": i + 1, "rows": r, "seconds": s} for i, (r, s) in enumerate(zip(rows, seconds))]


def test_savings_after_a_switch():
    # 4 steps of 16 samples x 4 copies, then 4 steps of 16 clean samples; the first step pays start-up.
    record = steps([64] * 4 + [16] * 4, [9.0, 2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5])
    result = compute_savings(record, switch_step=4, copies_before=4, copies_after=1, train_seconds=17.0, train_energy_kwh=0.34)
    measured, derived = result["measured"], result["derived"]
    assert (measured["steps_before_switch"], measured["steps_after_switch"]) == (4, 4)
    assert (measured["train_rows"], measured["train_rows_before_switch"], measured["train_rows_after_switch"]) == (320, 256, 64)
    assert derived["train_rows_without_switch"] == 256 + 64 * 4
    assert derived["train_rows_saved"] == 192 and derived["train_rows_saved_fraction"] == pytest.approx(192 / 512)
    assert measured["median_step_seconds_before_switch"] == 2.0  # start-up step left out
    assert measured["median_step_seconds_after_switch"] == 0.5
    assert derived["train_seconds_without_switch_estimate"] == pytest.approx(17.0 + 4 * 1.5)
    assert derived["train_seconds_saved_fraction_estimate"] == pytest.approx(6.0 / 23.0)
    assert derived["train_energy_kwh_without_switch_estimate"] == pytest.approx(0.34 * 23.0 / 17.0)
    assert derived["train_energy_saved_fraction_estimate"] == pytest.approx(6.0 / 23.0)


def test_no_switch_saves_nothing():
    result = compute_savings(steps([64, 64, 64], [3.0, 2.0, 2.0]), None, copies_before=4, train_seconds=7.0)
    assert result["measured"]["steps_after_switch"] == 0
    assert result["derived"]["train_rows_without_switch"] == result["measured"]["train_rows"] == 192
    assert result["derived"]["train_rows_saved"] == 0
    assert result["derived"]["train_seconds_without_switch_estimate"] == 7.0
    assert result["derived"]["train_energy_kwh_without_switch_estimate"] is None  # energy not given


def test_bad_arguments():
    with pytest.raises(ValueError, match="`copies_before` must be an int >= 1, got 0"):
        compute_savings([], None, copies_before=0)
    with pytest.raises(ValueError, match="`switch_step` must be None or an int >= 0"):
        compute_savings([], -1, copies_before=2)
    with pytest.raises(ValueError, match="`price_per_hour` must be None or a number >= 0"):
        estimate_cost(10.0, price_per_hour=-1)


def test_cost_at_the_given_prices():
    assert estimate_cost(1800.0, 0.5, price_per_hour=2.0, price_per_kwh=0.3) == {
        "machine_cost": pytest.approx(1.0),
        "electricity_cost": pytest.approx(0.15),
    }
    assert estimate_cost(1800.0, None, price_per_hour=None, price_per_kwh=0.3) == {
        "machine_cost": None,
        "electricity_cost": None,
    }


class Unchanged:
    def augment(self, text):
        return [text]


def test_callback_counts_the_rows_the_model_trains_on(tmp_path):
    """k=3 copies until a fixed switch after step 2, gradient accumulation 2, confusion half-batches: all rows count."""
    tokenizer = tiny_tokenizer()
    collator = TextAugmentationCollator(tokenizer, augmenter=Unchanged(), copies=3, text_fields="sentence")
    costs = TrainingCostCallback()
    args = CriticalPeriodArguments(
        **common_args(
            tmp_path,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            max_steps=5,
            dynamics_every_n_steps=2,
            detector="fixed",
            detector_switch_step=2,
        )
    )
    trainer = CriticalPeriodTrainer(
        model=tiny_bert(vocab_size=len(tokenizer)),
        args=args,
        train_dataset=sentence_dataset(48),
        data_collator=collator,
        callbacks=[costs],
    )
    trainer.train()
    assert trainer.critical_period["switch_step"] == 2
    assert [s["step"] for s in costs.steps] == [1, 2, 3, 4, 5]
    assert [s["rows"] for s in costs.steps] == [24, 24, 8, 8, 8]  # 2 micro-batches x 4 samples x k
    assert all(s["seconds"] > 0 for s in costs.steps)
    assert costs._hook is None  # removed at the end of training


def test_callback_state_survives_a_resume():
    costs = TrainingCostCallback()
    saved = {"steps": [{"step": s, "rows": 10, "seconds": 1.0} for s in range(1, 6)]}
    state = SimpleNamespace(global_step=3, stateful_callbacks={COST_STATE_KEY: saved})
    costs.on_train_begin(None, state, None, model=None)
    assert [s["step"] for s in costs.steps] == [1, 2, 3]  # steps after the checkpoint are trained again
    control = SimpleNamespace(should_save=True)
    state.global_step = 4
    costs.on_step_end(None, state, control)
    assert [s["step"] for s in state.stateful_callbacks[COST_STATE_KEY]["steps"]] == [1, 2, 3, 4]
    fresh = TrainingCostCallback()
    fresh.on_train_begin(None, SimpleNamespace(global_step=0, stateful_callbacks={COST_STATE_KEY: saved}), None)
    assert fresh.steps == []
