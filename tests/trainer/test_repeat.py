"""augment_mode="repeat": k passes per epoch until the switch epoch ends, then one; the epoch schedule."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch
from helpers import TESTS_DIR, common_args, image_dataset, tiny_vit

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer
from hf_critical.augmentation import ImageAugmentationCollator, TextAugmentationCollator
from hf_critical.detectors import FixedSwitch, NeverSwitch
from hf_critical.experiments.savings import compute_savings
from hf_critical.names import COPY_INDEX_KEY
from hf_critical.trainer.repeat_plan import RepeatDataset, RepeatPlan, epoch_lr_schedule

HERE = TESTS_DIR  # the scripts folder and helpers.py are here
SCRIPT = os.path.join(HERE, "scripts", "repeat_run.py")


def _script():
    spec = importlib.util.spec_from_file_location("repeat_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script's subprocesses: the same floating-point reductions
    yield
    torch.set_num_threads(threads)


def _hand_progress(steps_done: int) -> float:
    """The run of repeat_run.py: 24 samples, batch 4, k=3, switch at step 9: epochs of 18, 6 and 6 steps."""
    if steps_done <= 18:
        return steps_done / 18
    return 1 + (steps_done - 18) / 6 if steps_done <= 24 else 2 + (steps_done - 24) / 6


def _hand_cosine(progress: float, lr: float = 0.1, epochs: float = 3.0, warmup: float = 0.3) -> float:
    if progress < warmup:
        return lr * progress / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (epochs - warmup)))


def _epochs_of(steps: list, lengths=(18, 6, 6)) -> list[list]:
    out, start = [], 0
    for length in lengths:
        out.append([row for step in steps[start : start + length] for row in step])
        start += length
    return out


# ---- the plan ------------------------------------------------------------------------------------


def test_plan_visits_every_sample_k_times_then_once():
    plan = RepeatPlan(num_samples=10, batch_size=4, copies=3, seed=0)
    assert [plan.batches(0), plan.updates(0), plan.rows(0)] == [8, 8, 30]  # ceil(3 * 10 / 4), One Period's count
    rows = [i for batch in plan.epoch_batches(0) for i in batch]
    assert Counter(i % 10 for i in rows) == {i: 3 for i in range(10)}
    assert sorted(i // 10 for i in rows) == [0] * 10 + [1] * 10 + [2] * 10  # pass c gives every sample copy c
    assert plan.epoch_batches(0) == RepeatPlan(10, 4, 3, seed=0).epoch_batches(0)  # a pure function of the seed
    assert plan.epoch_batches(1) != plan.epoch_batches(0)
    plan.switch_at(5)  # step 5 runs in epoch 0: epoch 0 keeps its 3 passes, later epochs get one
    assert plan.switch_epoch == 0 and [plan.passes(e) for e in range(3)] == [3, 1, 1]
    assert [plan.batches(1), plan.total_updates(3)] == [3, 8 + 3 + 3]
    assert sorted(plan.epoch_batches(1)[0] + plan.epoch_batches(1)[1] + plan.epoch_batches(1)[2]) == list(range(10))
    plan.switch_at(12)  # the first switch stands
    assert plan.switch_epoch == 0


def test_plan_steps_epochs_and_progress():
    plan = RepeatPlan(num_samples=24, batch_size=4, copies=3, accumulation=2)
    assert [plan.batches(0), plan.updates(0)] == [18, 9]
    plan.switch_at(9)  # the last step of epoch 0
    assert plan.switch_epoch == 0 and [plan.updates(1), plan.epoch_start(2)] == [3, 12]
    assert [plan.locate(n) for n in (0, 8, 9, 11, 12, 15)] == [(0, 0), (0, 8), (1, 0), (1, 2), (2, 0), (3, 0)]
    assert [plan.epoch_of_step(n) for n in (1, 9, 10, 12, 13)] == [0, 0, 1, 1, 2]
    assert plan.progress(3) == pytest.approx(1 / 3) and plan.progress(10) == pytest.approx(1 + 1 / 3)
    assert plan.rows_done(10) == 72 + 8 and plan.total_rows(3) == 72 + 24 + 24
    with pytest.raises(ValueError, match="per_device_train_batch_size"):
        RepeatPlan(num_samples=24, batch_size=0, copies=3)
    with pytest.raises(ValueError, match="dataloader_drop_last"):
        RepeatPlan(num_samples=6, batch_size=4, copies=3, num_processes=2, drop_last=True)


def test_plan_splits_each_pass_between_processes():
    plans = [RepeatPlan(num_samples=11, batch_size=3, copies=2, num_processes=2, process_index=r) for r in (0, 1)]
    assert plans[0].batches(0) == plans[1].batches(0) == 4  # 6 rows per pass and process (one padded), 12 per epoch
    for copy in (0, 1):
        rows = [int(i) for plan in plans for i in plan.pass_rows(0, copy)]
        assert sorted(set(rows)) == [copy * 11 + i for i in range(11)] and len(rows) == 12


def test_rows_carry_their_copy_and_copies_are_augmented_differently():
    data = RepeatDataset(image_dataset(6))
    assert len(data) == 6 and data[13][COPY_INDEX_KEY] == 2 and torch.equal(data[13]["pixel_values"], data[1]["pixel_values"])
    assert [row[COPY_INDEX_KEY] for row in data.__getitems__([0, 7, 14])] == [0, 1, 2]
    collator = ImageAugmentationCollator(policy="affine", copies=1, on_device=False, seed=0)
    first = collator([data[i] for i in (0, 1, 2)])["pixel_values"]
    again = collator([data[i] for i in (0, 1, 2)])["pixel_values"]
    second = collator([data[i] for i in (6, 7, 8)])["pixel_values"]  # the same samples, copy 1
    assert torch.equal(first, again) and not torch.allclose(first, second)
    # Without copy indices (batch mode) the seed is the one of before: the batch's content alone.
    plain = [image_dataset(6)[i] for i in (0, 1, 2)]
    device_side = ImageAugmentationCollator(policy="affine", copies=1, on_device=True, seed=0)
    assert device_side(plain)["hf_critical_seed"] == device_side._batch_seed(torch.stack([p["pixel_values"] for p in plain]))


def test_text_copies_are_augmented_differently():
    from helpers import sentence_dataset, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    data = RepeatDataset(sentence_dataset(8))
    collator = TextAugmentationCollator(tokenizer, copies=1, seed=0)
    first = collator([data[i] for i in range(8)])["input_ids"]
    second = collator([data[8 + i] for i in range(8)])["input_ids"]
    assert not torch.equal(first, second)


# ---- the trainer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loader",
    [
        dict(dataloader_num_workers=0),
        dict(dataloader_num_workers=2, dataloader_persistent_workers=True, dataloader_prefetch_factor=4),
        dict(dataloader_num_workers=2),
    ],
    ids=["workers0", "workers2-persistent", "workers2"],
)
def test_switch_at_the_next_step_and_epoch_lengths(tmp_path, loader, one_thread):
    result = _script().run(str(tmp_path), save_steps=100, **loader)
    steps = result["steps"]
    # The fixed detector fires at the end of step 9: steps 1-9 train on augmented rows, 10 on on clean ones.
    assert [all(augmented for _, augmented in step) for step in steps[:9]] == [True] * 9
    assert [any(augmented for _, augmented in step) for step in steps[9:]] == [False] * 21
    assert [len(step) for step in steps] == [4] * 30 and result["global_step"] == result["max_steps"] == 30
    epoch0, epoch1, epoch2 = _epochs_of(steps)
    assert Counter(sample for sample, _ in epoch0) == {i: 3 for i in range(24)}  # the switch epoch keeps 3 passes
    assert sorted(sample for sample, _ in epoch1) == sorted(sample for sample, _ in epoch2) == list(range(24))
    period = result["critical_period"]
    assert period["switch_step"] == 9 and period["copies_before"] == 3 and period["copies_after"] == 1
    assert period["one_pass_from_epoch"] == 1 and period["one_pass_from_step"] == 18
    assert result["epoch"]["18"] == 1.0 and result["epoch"]["19"] == pytest.approx(1 + 1 / 6)


def test_on_device_augmentation_in_repeat_mode(tmp_path):
    dataset = image_dataset(24)
    clean = {dataset[i]["pixel_values"].numpy().tobytes() for i in range(24)}
    model = tiny_vit()
    seen = []
    model.register_forward_pre_hook(
        lambda m, a, kw: seen.append([x.numpy().tobytes() in clean for x in kw["pixel_values"]]) if m.training else None,
        with_kwargs=True,
    )
    args = CriticalPeriodArguments(
        **common_args(
            tmp_path, per_device_train_batch_size=4, max_steps=-1, num_train_epochs=2, dynamics_metrics="none",
            detector="never", augment_mode="repeat",
        )
    )
    collator = ImageAugmentationCollator(policy="affine", copies=2, on_device=True, seed=0, after_switch="augmented")
    trainer = CriticalPeriodTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, detector=FixedSwitch(step=3)
    )
    trainer.train()
    # k=2: epoch 0 has 12 steps; epoch 1 one pass (6 steps) of one augmented copy each (after_switch="augmented").
    assert len(seen) == trainer.state.global_step == 18 and not any(any(step) for step in seen)
    copies = {h["step"]: h["augment/current_copies"] for h in trainer.state.log_history if "loss" in h}
    assert [copies[s] for s in (1, 3, 4, 18)] == [2, 2, 1, 1]


def test_schedule_before_and_after_the_switch_matches_a_hand_computation(tmp_path, one_thread):
    switched = _script().run(str(tmp_path / "switched"), save_steps=100)
    for step, lr in switched["learning_rate"].items():
        # The learning rate of step s is the schedule after s - 1 steps, in epochs.
        assert lr == pytest.approx(_hand_cosine(_hand_progress(int(step) - 1)), rel=1e-9, abs=1e-12), step
    never = _script().run(str(tmp_path / "never"), save_steps=100, detector="never", detector_switch_step=None)
    assert never["global_step"] == never["max_steps"] == 54 and never["critical_period"] is None
    for step in range(1, 19):  # the switch does not change the epoch it happens in
        assert never["learning_rate"][str(step)] == switched["learning_rate"][str(step)]
    assert never["learning_rate"]["19"] == pytest.approx(_hand_cosine(1.0 + 0 / 18))
    assert never["learning_rate"]["20"] == pytest.approx(_hand_cosine(1 + 1 / 18))
    assert switched["learning_rate"]["20"] == pytest.approx(_hand_cosine(1 + 1 / 6))


def test_epoch_schedule_function_and_unsupported_schedules():
    progress = RepeatPlan(num_samples=8, batch_size=4, copies=2).progress  # 4 steps per epoch, no switch
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=1.0)
    schedule = epoch_lr_schedule(optimizer, progress, "linear", num_epochs=2.0, warmup_epochs=0.5)
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # Warmup over half an epoch (2 steps), then linear to 0 at epoch 2 (step 8).
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert "lr_lambdas" in schedule.state_dict()
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        epoch_lr_schedule(optimizer, progress, "reduce_lr_on_plateau", num_epochs=2.0)


def _repeat_trainer(tmp_path, detector, dataset_rows=24, eval_dataset=None, **overrides):
    settings = dict(
        per_device_train_batch_size=4, max_steps=-1, num_train_epochs=3, dynamics_metrics="none", detector="never",
        augment_mode="repeat", lr_scheduler_type="linear",
    ) | overrides
    args = CriticalPeriodArguments(**common_args(tmp_path, **settings))
    collator = ImageAugmentationCollator(policy="affine", copies=3, on_device=False, seed=0)
    return CriticalPeriodTrainer(
        model=tiny_vit(), args=args, train_dataset=image_dataset(dataset_rows), eval_dataset=eval_dataset,
        data_collator=collator, detector=detector,
    )


def test_max_steps_caps_the_run_and_the_schedule_stays_over_epochs(tmp_path):
    trainer = _repeat_trainer(tmp_path, FixedSwitch(step=4), max_steps=20)
    trainer.train()
    assert trainer.state.global_step == trainer.state.max_steps == 20  # 18 + 2 steps of the one-pass epoch 1
    lrs = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "loss" in h}
    assert lrs[18] == pytest.approx(0.1 * (1 - (17 / 18) / 3)) and lrs[20] == pytest.approx(0.1 * (1 - (1 + 1 / 6) / 3))


def test_the_progress_bar_shows_the_true_total_from_each_epoch_on(tmp_path):
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    trainer = _repeat_trainer(tmp_path, FixedSwitch(step=4), disable_tqdm=False)
    bar = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ProgressCallback))
    totals = {}

    class Totals(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            totals[state.global_step] = (bar.training_bar.total, state.max_steps)

    trainer.add_callback(Totals())
    trainer.train()
    # 3 epochs of 18 steps planned; from epoch 1 on (after the switch at step 4) the true 18 + 6 + 6.
    assert totals[1] == totals[18] == (54, 54) and totals[19] == totals[30] == (30, 30)


def test_a_fraction_of_an_epoch_ends_the_run_inside_the_last_epoch(tmp_path):
    trainer = _repeat_trainer(tmp_path, FixedSwitch(step=4), num_train_epochs=2.5)
    trainer.train()
    assert trainer.state.global_step == trainer.state.max_steps == 18 + 6 + 3
    lrs = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "loss" in h}
    assert lrs[27] == pytest.approx(0.1 * (1 - (2 + 2 / 6) / 2.5))


def test_gradient_accumulation_counts_optimizer_steps_per_epoch(tmp_path):
    trainer = _repeat_trainer(tmp_path, FixedSwitch(step=2), gradient_accumulation_steps=2)
    trainer.train()
    # 18 batches = 9 steps in epoch 0, then 6 batches = 3 steps per epoch.
    assert trainer.state.global_step == 15
    epochs = {h["step"]: h["epoch"] for h in trainer.state.log_history if "loss" in h}
    assert epochs[9] == 1.0 and epochs[10] == pytest.approx(1 + 1 / 3) and epochs[15] == 3.0


def test_epoch_strategies_log_evaluate_and_save_at_each_epoch_end(tmp_path):
    trainer = _repeat_trainer(
        tmp_path, FixedSwitch(step=4), eval_dataset=image_dataset(8, seed=5), logging_strategy="epoch",
        eval_strategy="epoch", save_strategy="epoch",
    )
    trainer.train()
    evals = [h["step"] for h in trainer.state.log_history if "eval_loss" in h]
    logs = [h["step"] for h in trainer.state.log_history if "loss" in h]
    assert evals == logs == [18, 24, 30]
    assert sorted(int(d.split("-")[1]) for d in os.listdir(tmp_path) if d.startswith("checkpoint-")) == [18, 24, 30]
    summary = trainer.state.log_history[-1]
    assert summary["train_steps_per_second"] * summary["train_runtime"] == pytest.approx(30, rel=0.02)


def test_step_strategies_count_true_steps_and_ratios_the_starting_plan(tmp_path):
    trainer = _repeat_trainer(tmp_path, FixedSwitch(step=4), logging_steps=0.2, save_strategy="steps", save_steps=10)
    trainer.train()
    # logging_steps=0.2 of the plan at the start (3 epochs of 18 steps, 54): every 11 steps.
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [11, 22]
    assert sorted(int(d.split("-")[1]) for d in os.listdir(tmp_path) if d.startswith("checkpoint-")) == [10, 20, 30]


def test_in_process_resume_from_before_and_after_the_switch_is_exact(tmp_path, one_thread):
    from safetensors.torch import load_file

    script = _script()
    full = script.run(str(tmp_path), save_steps=7)
    reference = load_file(str(tmp_path / "rank0.safetensors"))
    for checkpoint in (7, 14, 21):  # before the switch; after it in the switch epoch; in the first one-pass epoch
        resumed = script.run(str(tmp_path), save_steps=7, resume=str(tmp_path / f"checkpoint-{checkpoint}"))
        assert resumed["first_step"] == checkpoint + 1 and resumed["steps"] == full["steps"][checkpoint:], checkpoint
        assert resumed["critical_period"]["switch_step"] == 9 and resumed["max_steps"] == 30
        for step, lr in resumed["learning_rate"].items():
            assert lr == full["learning_rate"][step]
        params = load_file(str(tmp_path / "rank0.safetensors"))
        assert all(torch.equal(params[k], reference[k]) for k in reference), checkpoint


@pytest.mark.slow
def test_sigkill_then_resume_is_the_uninterrupted_run(tmp_path, one_thread):
    """Two subprocesses (about a minute on the shared 2-core machine); the in-process resume test is the fast variant."""
    from safetensors.torch import load_file

    full = _script().run(str(tmp_path / "full"), save_steps=7)
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, SCRIPT, "--output_dir", str(killed), "--step_delay", "0.2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not (killed / "checkpoint-21" / "trainer_state.json").is_file():
            time.sleep(0.05)
        assert (killed / "checkpoint-21").is_dir(), "the run never reached its checkpoint at step 21"
        time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (killed / "rank0.json").exists()
    done = subprocess.run(
        [sys.executable, SCRIPT, "--output_dir", str(killed), "--resume"], env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((killed / "rank0.json").read_text())
    assert resumed["first_step"] in (22, 29) and resumed["steps"] == full["steps"][resumed["first_step"] - 1 :]
    assert resumed["critical_period"]["switch_step"] == 9 and resumed["global_step"] == 30
    reference = load_file(str(tmp_path / "full" / "rank0.safetensors"))
    params = load_file(str(killed / "rank0.safetensors"))
    assert max((params[k] - reference[k]).abs().max().item() for k in reference) < 1e-6


@pytest.mark.multiprocess
def test_two_processes_agree_with_each_other_and_with_one(tmp_path, one_thread):
    from safetensors.torch import load_file
    from test_multiprocess import _torchrun

    ddp = ("--batch_size", "4", "--switch_step", "4", "--save_steps", "100")
    _torchrun("repeat_run.py", "--output_dir", str(tmp_path / "ddp"), *ddp)
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = _script().run(str(tmp_path / "one"), batch_size=8, switch_step=4, save_steps=100)
    # 12 rows per pass and rank (24 in one process) in batches of 4 (8): epochs of 9, 3 and 3 steps.
    assert single["global_step"] == 15
    for rank in ranks:
        assert rank["critical_period"]["switch_step"] == 4 and rank["global_step"] == rank["max_steps"] == 15
        assert rank["learning_rate"] == single["learning_rate"]
    # Together the ranks' batches of a step are the one-process batch of 8: the same samples, the same rows.
    for step, (a, b) in enumerate(zip(ranks[0]["steps"], ranks[1]["steps"])):
        assert sorted(map(tuple, a + b)) == sorted(map(tuple, single["steps"][step])), step
    params = [load_file(str(tmp_path / "ddp" / f"rank{r}.safetensors")) for r in (0, 1)]
    one = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    assert all(torch.equal(params[0][k], params[1][k]) for k in one)
    assert max((params[0][k] - one[k]).abs().max().item() for k in one) < 1e-5


# ---- savings and bad input -----------------------------------------------------------------------


def test_savings_count_the_passes_a_switch_saved():
    # Steps 1-18: epoch 0 (3 passes); switch at 9; steps 19-30: two one-pass epochs of 6 steps of 4 rows.
    steps = [{"step": s, "rows": 4, "seconds": 0.1} for s in range(1, 31)]
    savings = compute_savings(steps, 9, 3, 1, train_seconds=3.0, augment_mode="repeat", one_pass_from_step=18)
    derived = savings["derived"]
    assert derived["train_rows_without_switch"] == 120 + 2 * 48  # the 12 one-pass steps would have been 36
    assert derived["train_rows_saved_fraction"] == pytest.approx(96 / 216)
    assert derived["train_seconds_without_switch_estimate"] == pytest.approx(3.0 + 24 * 0.1)
    # One Period's arithmetic, (k - 1)(E - e) / (kE) for k=3, E=3, e=1: 4/9.
    assert derived["train_rows_saved_fraction"] == pytest.approx(2 * 2 / 9)
    with pytest.raises(ValueError, match="one_pass_from_step"):
        compute_savings(steps, 9, 3, 1, augment_mode="repeat")
    with pytest.raises(ValueError, match="augment_mode"):
        compute_savings(steps, 9, 3, 1, augment_mode="tiles")


def test_bad_repeat_settings_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="augment_mode"):
        CriticalPeriodArguments(output_dir=str(tmp_path), report_to=[], augment_mode="tiles")
    args = CriticalPeriodArguments(**common_args(tmp_path, augment_mode="repeat", max_steps=-1))
    with pytest.raises(ValueError, match="augment_mode"):
        CriticalPeriodTrainer(model=tiny_vit(), args=args, train_dataset=image_dataset(8))
    collator = ImageAugmentationCollator(policy="affine", copies=2, original_first=True)
    with pytest.raises(ValueError, match="original_first"):
        CriticalPeriodTrainer(model=tiny_vit(), args=args, train_dataset=image_dataset(8), data_collator=collator)
    reused = ImageAugmentationCollator(policy="affine", copies=3)
    CriticalPeriodTrainer(model=tiny_vit(), args=args, train_dataset=image_dataset(8), data_collator=reused)
    assert reused.copies == 1  # one augmented row per visit; k = 3 passes
    batch_args = CriticalPeriodArguments(**common_args(tmp_path))
    again = CriticalPeriodTrainer(model=tiny_vit(), args=batch_args, train_dataset=image_dataset(8), data_collator=reused)
    assert reused.copies == 3 and again.switch.copies == 3  # the same collator in batch mode: k rows again
    trainer = _repeat_trainer(
        tmp_path, NeverSwitch(), eval_dataset=image_dataset(8), lr_scheduler_type="reduce_lr_on_plateau",
        eval_strategy="epoch",
    )
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        trainer.train()
