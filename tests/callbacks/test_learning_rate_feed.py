"""The learning rate fed to detectors: the rate of each step, and resumes of checkpoints written before the feed."""

from __future__ import annotations

import json

from helpers import common_args, image_dataset, jsonl_path, read_jsonl, tiny_vit

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer
from hf_critical.names import RUN_STATE_KEY, SWITCH_STATE_KEY


def _args(output_dir, **overrides):
    return CriticalPeriodArguments(
        **common_args(output_dir, max_steps=8, save_strategy="steps", save_steps=4, dynamics_every_n_steps=2, **overrides)
    )


def test_a_checkpoint_from_before_the_learning_rate_feed_resumes(tmp_path):
    data = image_dataset()
    whole = CriticalPeriodTrainer(model=tiny_vit(), args=_args(tmp_path / "whole", detector="rate"), train_dataset=data)
    whole.train()
    state_path = tmp_path / "whole" / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    saved = state["stateful_callbacks"][SWITCH_STATE_KEY]
    # What 0.1 wrote: no RunState entry (the switch state held the switch itself) and no learning-rate sum
    # anywhere; no max_steps in the detector's state.
    run = state["stateful_callbacks"].pop(RUN_STATE_KEY)
    saved["critical_period"] = run["critical_period"]
    del saved["detector"]["attributes"]["max_steps"]
    state_path.write_text(json.dumps(state))
    resumed = CriticalPeriodTrainer(model=tiny_vit(), args=_args(tmp_path / "whole", detector="rate"), train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-4"))
    assert resumed.state.global_step == 8
    steps = [r["step"] for r in read_jsonl(jsonl_path(tmp_path / "whole"))]
    assert steps == [2, 4, 6, 8]
    # The detector's own progress (its cumulative learning rate) came back from its state.
    assert resumed.switch.detector.state()["attributes"]["lr_sum"] == whole.switch.detector.state()["attributes"]["lr_sum"]
    records = read_jsonl(jsonl_path(tmp_path / "whole"))
    assert records[-1]["learning_rate_sum"] == resumed.switch.learning_rate_sum == whole.switch.learning_rate_sum


def test_the_detector_gets_the_learning_rate_each_step_trained_with(tmp_path):
    """Fed from the optimizer at on_optimizer_step: the rate of the step, not the scheduler's next one."""
    import torch
    from transformers import get_scheduler

    args = CriticalPeriodArguments(
        **common_args(tmp_path, max_steps=12, lr_scheduler_type="cosine", warmup_steps=3, dynamics_every_n_steps=2),
        detector="rate",
    )
    trainer = CriticalPeriodTrainer(model=tiny_vit(), args=args, train_dataset=image_dataset())
    trainer.train()
    # An independent schedule: the same scheduler on a dummy optimizer, read before each step.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=3, num_training_steps=12)
    expected = []
    for _ in range(12):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    records = read_jsonl(jsonl_path(tmp_path))
    assert [r["learning_rate"] for r in records] == [expected[s - 1] for s in (2, 4, 6, 8, 10, 12)]
    assert records[-1]["learning_rate_sum"] == sum(expected)
    assert trainer.switch.detector.state()["attributes"]["lr_sum"] == sum(expected)
