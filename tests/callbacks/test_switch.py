"""The switch from k augmented copies to one: exact step, workers, logging, resume, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import (
    TESTS_DIR,
    RowRecorder,
    common_args,
    image_dataset,
    read_jsonl,
    sentence_dataset,
    tiny_bert,
    tiny_tokenizer,
    tiny_vit,
)

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer
from hf_critical.arguments import detector_kwargs
from hf_critical.augmentation import ImageAugmentationCollator, TextAugmentationCollator
from hf_critical.detectors import Detector, FixedSwitch, build_detector

HERE = TESTS_DIR  # the scripts folder and helpers.py are here


class FireAtStep(Detector):
    """Fires at a given step, like a metric-driven detector deciding in on_step_end."""

    name = "fire_at_step_test"

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def _args(self):
        return {"at": self.at}

    def _observe(self, step, measured):
        return step >= self.at


def _vit_trainer(tmp_path, collator, detector, **overrides):
    model = tiny_vit()
    recorder = RowRecorder(model, "pixel_values")
    args = CriticalPeriodArguments(
        **common_args(
            tmp_path,
            **{"per_device_train_batch_size": 4, "max_steps": 8, "dynamics_metrics": "none", "detector": "never"}
            | overrides,
        )
    )
    trainer = CriticalPeriodTrainer(
        model=model, args=args, train_dataset=image_dataset(64), data_collator=collator, detector=detector
    )
    return trainer, recorder


@pytest.mark.parametrize(
    "loader",
    [
        dict(dataloader_num_workers=0),
        dict(dataloader_num_workers=2, dataloader_persistent_workers=True, dataloader_prefetch_factor=4),
        dict(dataloader_num_workers=2, dataloader_persistent_workers=False),
    ],
    ids=["workers0", "workers2-persistent", "workers2"],
)
def test_switch_takes_effect_at_the_next_step_with_workers(tmp_path, loader):
    collator = ImageAugmentationCollator(policy="affine", copies=4, on_device=False, seed=0)
    trainer, recorder = _vit_trainer(tmp_path, collator, FireAtStep(3), **loader)
    trainer.train()
    # Steps 1-3 see 4 copies of 4 samples; the detector fires at the end of step 3; step 4 on: 1 copy.
    assert recorder.rows == [16, 16, 16, 4, 4, 4, 4, 4]
    assert trainer.critical_period["switch_step"] == 3
    assert trainer.critical_period["copies_before"] == 4 and trainer.critical_period["copies_after"] == 1
    copies = {h["step"]: h["augment/current_copies"] for h in trainer.state.log_history if "loss" in h}
    assert copies == {1: 4, 2: 4, 3: 4, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1}
    switch_logs = [h for h in trainer.state.log_history if "critical_period/switch_step" in h]
    assert len(switch_logs) == 1 and switch_logs[0]["step"] == 3 and switch_logs[0]["critical_period/switch_step"] == 3


def test_on_device_image_augmentation_switch(tmp_path):
    collator = ImageAugmentationCollator(policy="affine", copies=3, on_device=True)
    trainer, recorder = _vit_trainer(tmp_path, collator, FixedSwitch(step=5))
    trainer.train()
    assert recorder.rows == [12] * 5 + [4] * 3


def test_text_collator_switch_with_two_workers(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_bert(vocab_size=len(tokenizer))
    recorder = RowRecorder(model, "input_ids")
    collator = TextAugmentationCollator(tokenizer, copies=2, seed=0)
    args = CriticalPeriodArguments(
        **common_args(
            tmp_path,
            per_device_train_batch_size=4,
            max_steps=6,
            dataloader_num_workers=2,
            dynamics_metrics="none",
            detector="never",
        )
    )
    trainer = CriticalPeriodTrainer(
        model=model,
        args=args,
        train_dataset=sentence_dataset(),
        eval_dataset=sentence_dataset(12, seed=9),
        data_collator=collator,
        detector=FireAtStep(2),
    )
    trainer.train()
    assert recorder.rows == [8, 8, 4, 4, 4, 4]
    recorder.rows.clear()
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and recorder.rows == []  # eval in eval mode: no training rows recorded


def test_confusion_halves_keep_copies_of_a_sample_together(tmp_path):
    collator = ImageAugmentationCollator(policy="affine", copies=4, on_device=False, seed=0)
    model = tiny_vit()
    seen = []

    def hook(module, args, kwargs):
        if module.training:
            seen.append(kwargs["labels"].clone())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    args = CriticalPeriodArguments(
        **common_args(tmp_path, per_device_train_batch_size=4, max_steps=2, dynamics_every_n_steps=2)
    )
    trainer = CriticalPeriodTrainer(
        model=model, args=args, train_dataset=image_dataset(64), data_collator=collator, detector=FixedSwitch(step=50)
    )
    trainer.train()
    # Step 1 is split for confusion: two forward passes of 2 samples x 4 copies each.
    assert [len(labels) for labels in seen[:2]] == [8, 8]
    for labels in seen[:2]:
        assert torch.equal(labels[0::4], labels[3::4])  # every group of 4 rows is one sample
    record = read_jsonl(os.path.join(tmp_path, "dynamics.jsonl"))[0]
    assert record["current_copies"] == 4 and record["gradient_confusion"]["num_pairs"] == 1


def test_detector_never_firing_leaves_critical_period_none(tmp_path):
    collator = ImageAugmentationCollator(policy="affine", copies=2, on_device=True)
    trainer, recorder = _vit_trainer(tmp_path, collator, FixedSwitch(step=100), max_steps=3)
    trainer.train()
    assert trainer.critical_period is None and recorder.rows == [8, 8, 8]


def test_augment_arguments_configure_the_collator(tmp_path):
    collator = ImageAugmentationCollator(policy="affine", copies=4, on_device=True)
    trainer, recorder = _vit_trainer(
        tmp_path, collator, FixedSwitch(step=1), max_steps=2, augment_copies=2, augment_after_switch="augmented"
    )
    trainer.train()
    assert collator.copies == 2 and collator.after_switch == "augmented"
    assert recorder.rows == [8, 4]


def test_augment_arguments_without_augmentation_collator_fail(tmp_path):
    args = CriticalPeriodArguments(**common_args(tmp_path, augment_copies=4, detector="never"))
    with pytest.raises(ValueError, match="augment_copies"):
        CriticalPeriodTrainer(model=tiny_vit(), args=args, train_dataset=image_dataset())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"detector": "oracle"}, "detector"),
        ({"detector_metrics": ["loss"]}, "detector_metrics"),
        ({"detector": "stability", "detector_threshold": 0.0}, "threshold"),
        ({"detector": "stability", "detector_threshold": float("nan")}, "threshold"),
        ({"detector": "stability", "detector_patience": 0}, "patience"),
        ({"detector": "stability", "detector_window": "two epochs"}, "window"),
        ({"detector": "fixed"}, "step"),
        ({"augment_copies": 0}, "augment_copies"),
        ({"augment_copies": 2.0}, "augment_copies"),
        ({"augment_after_switch": "none"}, "augment_after_switch"),
        ({"detector": "rate", "detector_options": "peak_fraction=1.5"}, "peak_fraction"),
        ({"detector": "rate", "detector_options": "nope=1"}, "no option.*nope"),
        ({"detector": "rate", "detector_options": "metric=gradient_confusion", "dynamics_metrics": "layer_rotation"}, "watches 'gradient_confusion'"),
        ({"detector_options": "peak_fraction"}, "has no '='"),
        ({"dynamics_confusion_chunks": 1}, "dynamics_confusion_chunks"),
    ],
)
def test_bad_switch_arguments(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field):
        CriticalPeriodArguments(output_dir=str(tmp_path), report_to=[], **overrides)


def test_a_stability_field_with_another_detector_is_reported(tmp_path):
    with pytest.warns(UserWarning, match="`detector_threshold` is an option of detector 'stability' and is ignored"):
        args = CriticalPeriodArguments(output_dir=str(tmp_path), report_to=[], detector="rate", detector_threshold=0.1)
    assert detector_kwargs(args) == {"name": "rate"}


def test_detector_options_reach_the_detector_from_json_and_key_value(tmp_path):
    for options in ('{"peak_fraction": 0.3, "window": "0.5ep"}', "peak_fraction=0.3,window=0.5ep"):
        args = CriticalPeriodArguments(output_dir=str(tmp_path), report_to=[], detector="rate", detector_options=options)
        detector = build_detector(**detector_kwargs(args))
        assert detector.peak_fraction == 0.3 and detector.window_steps is None and str(detector.window) == "0.5ep"
    args = CriticalPeriodArguments(
        output_dir=str(tmp_path), report_to=[], detector="fixed", detector_options={"epoch": 2}
    )
    assert detector_kwargs(args) == {"name": "fixed", "epoch": 2}


# ---- resume -------------------------------------------------------------------------------------

SCRIPT = os.path.join(HERE, "scripts", "switch_run.py")


def _run_script(output_dir, *extra, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, SCRIPT, "--output_dir", str(output_dir), *extra], env=env, capture_output=True, text=True,
        timeout=300,
    )
    if check and done.returncode:
        raise AssertionError(f"{SCRIPT} {' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    return done


def _summary(output_dir) -> dict:
    with open(os.path.join(output_dir, "summary.json"), encoding="utf-8") as f:
        return json.load(f)


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    _run_script(full_dir)
    full = _summary(full_dir)
    assert full["switch_step"] is not None and 6 < full["switch_step"] < full["max_steps"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, SCRIPT, "--output_dir", str(killed_dir), "--step_delay", "0.15"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not os.path.isdir(killed_dir / "checkpoint-6"):
            time.sleep(0.05)
        assert os.path.isdir(killed_dir / "checkpoint-6"), "the run never reached its checkpoint at step 6"
        time.sleep(0.45)  # past the checkpoint, often while the next one is written: resume must skip a partial one
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not os.path.isfile(killed_dir / "summary.json")

    _run_script(killed_dir, "--resume")
    resumed = _summary(killed_dir)
    assert resumed["resumed_from"] is not None
    assert resumed["switch_step"] == full["switch_step"]
    full_lines = read_jsonl(full_dir / "dynamics.jsonl")
    lines = read_jsonl(killed_dir / "dynamics.jsonl")
    assert [r["step"] for r in lines] == [r["step"] for r in full_lines]  # no duplicated or lost line
    for got, want in zip(lines, full_lines):
        assert got["current_copies"] == want["current_copies"]
        assert got["layer_rotation"]["value"] == pytest.approx(want["layer_rotation"]["value"], rel=1e-4, abs=1e-7)
    assert resumed["param_checksum"] == pytest.approx(full["param_checksum"], rel=1e-5)


def test_resume_after_the_switch_continues_with_one_copy(tmp_path):
    _run_script(tmp_path)
    first = _summary(tmp_path)
    switch = first["switch_step"]
    checkpoint = switch + 2  # checkpoints every 2 steps; the run switches at step 20 of 24
    assert os.path.isdir(tmp_path / f"checkpoint-{checkpoint}")
    _run_script(tmp_path, "--resume_from", str(tmp_path / f"checkpoint-{checkpoint}"))
    resumed = _summary(tmp_path)
    assert resumed["switch_step"] == switch
    assert resumed["rows_after_resume"] == [resumed["batch_size"]] * (first["max_steps"] - checkpoint)


def test_resume_true_skips_a_checkpoint_interrupted_while_written(tmp_path):
    from hf_critical.trainer import last_complete_checkpoint

    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if step < 6:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-6" / "model.safetensors").write_text("half written")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(str(tmp_path / "checkpoint-6")) is None
