"""Detectors on hand-made metric sequences whose firing step is worked out by hand in each test.

Steps are optimizer steps 1, 2, ...; ``values`` maps a step to the metrics measured there (a step
missing from it was not measured). A naive reference of the stability rule, written from the
definition over the whole sequence at once, checks the streaming detector on seeded random curves.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hf_critical.detectors import (
    DETECTORS,
    Detector,
    FixedSwitch,
    FukaseConfusionIQR,
    FukaseRotationAngle,
    NeverSwitch,
    StabilityDetector,
    build_detector,
    detector_from_state,
    parse_span,
)

GC, GP, LR = "gradient_confusion", "gradient_predictability", "layer_rotation"


def run(detector: Detector, num_steps: int, values: dict, steps_per_epoch: int = 1, start: int = 1) -> list[int]:
    """Feed steps ``start..num_steps``; return the steps at which update() returned True."""
    fired = []
    for step in range(start, num_steps + 1):
        if detector.update(step, step / steps_per_epoch, values.get(step)):
            fired.append(step)
    return fired


def per_step(metric: str, sequence: list[float], start: int = 1) -> dict[int, dict[str, float]]:
    return {start + i: {metric: v} for i, v in enumerate(sequence)}


def merge(*parts: dict) -> dict:
    out: dict[int, dict[str, float]] = {}
    for part in parts:
        for step, values in part.items():
            out.setdefault(step, {}).update(values)
    return out


def round_trip(detector: Detector) -> Detector:
    return detector_from_state(json.loads(json.dumps(detector.state(), allow_nan=False)))


# Windows of 2 steps, one measurement per step. Window means: w1 (steps 1-2) 2.0, w2 1.0 (change 0.5:
# unstable, count 0), w3 1.01 (change 0.01: count 1), w4 1.0 (change 0.0099: count 2), w5 1.0 (0: count 3).
# Steps 1 and 3 alone differ by 200%; only the window means are compared.
CONFUSION_STEPS = [1.0, 3.0, 1.0, 1.0, 1.02, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


# ---- stability ----------------------------------------------------------------------------------


def test_stability_fires_after_patience_stable_windows():
    detector = StabilityDetector(GC, threshold=0.05, patience=2, window=2, warmup=0)
    # Count reaches patience=2 when window 4 closes, at step 8.
    assert run(detector, 12, per_step(GC, CONFUSION_STEPS)) == [8]
    assert detector.fired and detector.fired_step == 8 and detector.fired_epoch == 8.0
    assert detector.values_at_fire == {GC: 1.0}
    # patience=1 fires at the first stable window, w3, closing at step 6.
    assert run(StabilityDetector(GC, patience=1, window=2, warmup=0), 12, per_step(GC, CONFUSION_STEPS)) == [6]
    # A threshold under w4's change of 0.0099 keeps w3 -> w4 unstable: counts w5 1, w6 2 -> step 12.
    strict = StabilityDetector(GC, threshold=0.005, patience=2, window=2, warmup=0)
    assert run(strict, 12, per_step(GC, CONFUSION_STEPS)) == [12]


def test_stability_unstable_window_resets_the_count():
    # Window means 1, 1.01 (count 1), 2 (unstable: 0), 2.01 (1), 2.02 (2) -> fires when w5 closes, step 10.
    means = [1.0, 1.01, 2.0, 2.01, 2.02]
    values = per_step(GC, [m for m in means for _ in range(2)])
    assert run(StabilityDetector(GC, patience=2, window=2, warmup=0), 10, values) == [10]


def test_stability_window_without_measurement_leaves_the_count():
    # Measured at even steps only, and not in windows 3 and 5 (steps 5-6, 9-10). Window means:
    # w1 2.0, w2 1.0 (unstable), w3 none, w4 1.01 vs w2 (count 1), w5 none, w6 1.0 vs w4 (count 2) -> step 12.
    values = {2: {GC: 2.0}, 4: {GC: 1.0}, 8: {GC: 1.01}, 12: {GC: 1.0}}
    assert run(StabilityDetector(GC, patience=2, window=2, warmup=0), 14, values) == [12]


def test_stability_warmup_windows_are_not_compared():
    # Warm-up 4 steps: windows closing at 2 and 4 are dropped. w3 (1.01) is the first kept, w4 (1.0) gives
    # count 1, w5 (1.0) count 2 -> step 10 instead of 8 without warm-up.
    assert run(StabilityDetector(GC, patience=2, window=2, warmup=4), 12, per_step(GC, CONFUSION_STEPS)) == [10]
    # A warm-up ending inside window 3 (step 5) drops the same windows.
    assert run(StabilityDetector(GC, patience=2, window=2, warmup=5), 12, per_step(GC, CONFUSION_STEPS)) == [10]
    # Warm-up 6 also drops w3: w4 kept, w5 count 1, w6 count 2 -> step 12.
    assert run(StabilityDetector(GC, patience=2, window=2, warmup=6), 12, per_step(GC, CONFUSION_STEPS)) == [12]
    # Never at or before the warm-up step, even on a constant metric (w2 vs w1 would be stable).
    flat = per_step(GC, [0.5] * 40)
    assert run(StabilityDetector(GC, patience=1, window=2, warmup=20), 40, flat) == [24]


def test_stability_windows_in_epochs_equal_windows_in_steps():
    in_epochs = StabilityDetector(GC, patience=2, window="0.25ep", warmup="0.5ep")
    in_epochs.configure(steps_per_epoch=8, num_epochs=2)  # 0.25 * 8 = 2 steps, 0.5 * 8 = 4 steps
    in_steps = StabilityDetector(GC, patience=2, window="2 steps", warmup="4")
    assert (in_epochs.window_steps, in_epochs.warmup_steps) == (2, 4)
    values = per_step(GC, CONFUSION_STEPS)
    assert run(in_epochs, 12, values, steps_per_epoch=8) == run(in_steps, 12, values, steps_per_epoch=8) == [10]
    assert in_epochs.fired_epoch == in_steps.fired_epoch == 10 / 8


def test_spans_round_half_up_and_windows_are_at_least_one_step():
    detector = StabilityDetector(GC, window="0.3ep", warmup="0.1ep")
    detector.configure(steps_per_epoch=5, num_epochs=1)  # 1.5 -> 2, 0.5 -> 1
    assert (detector.window_steps, detector.warmup_steps) == (2, 1)
    tiny = StabilityDetector(GC, window="0.01ep", warmup="0.01 epochs")
    tiny.configure(steps_per_epoch=10, num_epochs=1)  # 0.1 -> window at least 1, warm-up 0
    assert (tiny.window_steps, tiny.warmup_steps) == (1, 0)


@pytest.mark.parametrize(
    "text, amount, in_epochs",
    [(100, 100, False), ("100", 100, False), ("100 steps", 100, False), ("1 step", 1, False),
     ("0.25ep", 0.25, True), ("0.5 epoch", 0.5, True), ("2 epochs", 2.0, True), (" 3EP ", 3.0, True)],
)  # fmt: skip
def test_parse_span(text, amount, in_epochs):
    span = parse_span(text, "window", allow_zero=False)
    assert (span.amount, span.in_epochs) == (amount, in_epochs)
    assert parse_span(span.to_arg(), "window", allow_zero=False) == span


def test_stability_any_versus_all():
    # GC window means as in CONFUSION_STEPS, then 1.0: stable counts 0, 1, 2 (step 8), 3, ...
    # LR window means 1, 2, 3, 4, 4, 4: changes 1, 0.5, 0.33 (unstable), 0 (count 1, step 10), 0 (count 2, step 12).
    lr = per_step(LR, [m for m in (1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0) for _ in range(2)])
    values = merge(per_step(GC, CONFUSION_STEPS + [1.0, 1.0]), lr)
    any_ = StabilityDetector([GC, LR], patience=2, window=2, warmup=0, mode="any")
    all_ = StabilityDetector([GC, LR], patience=2, window=2, warmup=0, mode="all")
    assert run(any_, 14, values) == [8]
    assert run(all_, 14, values) == [12]
    assert all_.values_at_fire == {GC: 1.0, LR: 4.0}


def test_stability_noisy_then_flat_curve():
    # 100 steps per epoch, a measurement every 10 steps, windows and warm-up of half an epoch (50 steps).
    # Up to step 300 window means alternate around 0.2 and 0.8 (noise sd 0.02): every change is > 50%.
    # From step 301 the curve is flat at 0.3 (sd 0.001, relative change of window means ~0.5%):
    # w7 (301-350) vs w6 (~0.8) is unstable, w8 gives count 1 (step 400), w9 count 2 -> fires at step 450.
    for seed in range(5):
        rng = np.random.default_rng(seed)
        values = {}
        for step in range(10, 1001, 10):
            window = (step - 1) // 50 + 1
            if step <= 300:
                value = (0.2 if window % 2 else 0.8) + rng.normal(0, 0.02)
            else:
                value = 0.3 + rng.normal(0, 0.001)
            values[step] = {GC: value}
        detector = StabilityDetector(GC, threshold=0.05, patience=2, window="0.5ep", warmup="0.5ep")
        detector.configure(steps_per_epoch=100, num_epochs=10)
        assert run(detector, 1000, values, steps_per_epoch=100) == [450], seed
        assert detector.fired_epoch == 4.5
        assert detector.values_at_fire == values[450]


def naive_stability(values, num_steps, metrics, threshold, patience, window, warmup, mode):
    """The stability rule from its definition, on the whole sequence at once (no streaming state)."""
    counts = {m: 0 for m in metrics}
    previous: dict[str, float] = {}
    for j in range(1, num_steps // window + 1):
        end = j * window
        if end <= warmup:
            continue
        for m in metrics:
            seen = [values[s][m] for s in range(end - window + 1, end + 1) if m in values.get(s, {})]
            if not seen:
                continue
            mean = sum(seen) / len(seen)
            if m in previous:
                change = abs(mean - previous[m]) / max(abs(previous[m]), 1e-12)
                counts[m] = counts[m] + 1 if change < threshold else 0
            previous[m] = mean
        stable = [counts[m] >= patience for m in metrics]
        if (any if mode == "any" else all)(stable):
            return end
    return None


@pytest.mark.parametrize("mode", ["any", "all"])
def test_stability_matches_naive_reference_on_random_curves(mode):
    for seed in range(20):
        rng = np.random.default_rng(seed)
        num_steps = 400
        # Decaying noise around a slowly settling level; about half the steps measured, per metric.
        values = {}
        for step in range(1, num_steps + 1):
            for m in (GC, LR):
                if rng.random() < 0.5:
                    level = 1.0 + math.exp(-step / 80)
                    values.setdefault(step, {})[m] = level + rng.normal(0, 0.3 * math.exp(-step / 60))
        kwargs = dict(threshold=0.02, patience=int(rng.integers(1, 4)), window=int(rng.integers(3, 20)), mode=mode)
        kwargs["warmup"] = int(rng.integers(0, 60))
        expected = naive_stability(values, num_steps, [GC, LR], **kwargs)
        detector = StabilityDetector([GC, LR], **kwargs)
        fired = run(detector, num_steps, values)
        assert fired == ([] if expected is None else [expected]), (seed, kwargs)


# ---- Fukase et al. ------------------------------------------------------------------------------


def epochs_of(metric: str, means: list[float], steps_per_epoch: int = 2) -> dict[int, dict[str, float]]:
    """Two measurements per epoch, mean - 0.1 and mean + 0.1, so each epoch's mean is ``means[e - 1]``."""
    values = {}
    for e, m in enumerate(means, start=1):
        values[(e - 1) * steps_per_epoch + 1] = {metric: m - 0.1}
        values[e * steps_per_epoch] = {metric: m + 0.1}
    return values


def test_fukase_confusion_iqr_fires_on_a_low_outlier_at_a_check_epoch():
    # Epoch means 1.0, 1.1, 0.9, 1.0, 1.05, 0.2 (2 steps per epoch), checked every 2 epochs.
    # Epoch 2: 2 means, no decision. Epoch 4: sorted [0.9, 1, 1, 1.1]: Q1 = 0.975, Q3 = 1.025,
    # bound 0.975 - 0.075 = 0.9; latest 1.0 is not below. Epoch 6: sorted [0.2, 0.9, 1, 1, 1.05, 1.1]:
    # Q1 = 0.9 + 0.25 * 0.1 = 0.925, Q3 = 1 + 0.75 * 0.05 = 1.0375, bound 0.925 - 1.5 * 0.1125 = 0.756;
    # latest 0.2 < 0.756 -> fires at the step ending epoch 6, step 12.
    values = epochs_of(GC, [1.0, 1.1, 0.9, 1.0, 1.05, 0.2, 1.0, 1.0])
    detector = FukaseConfusionIQR(check_every_epochs=2)
    detector.configure(steps_per_epoch=2, num_epochs=8)
    assert run(detector, 16, values, steps_per_epoch=2) == [12]
    assert detector.fired_epoch == 6.0
    assert detector.values_at_fire == {GC: pytest.approx(0.3)}  # the last measurement, 0.2 + 0.1


def test_fukase_confusion_iqr_checks_only_every_n_epochs():
    # A dip in epoch 5 only: epoch means 1.0, 1.1, 0.9, 1.0, 0.2, 1.0.
    # Checked every epoch: at epoch 5, sorted [0.2, 0.9, 1, 1, 1.1]: Q1 0.9, Q3 1.0, bound 0.75 > 0.2 -> step 10.
    # Checked every 2 epochs: epoch 4 (latest 1.0 >= 0.9) and epoch 6 (latest 1.0) never see the dip.
    values = epochs_of(GC, [1.0, 1.1, 0.9, 1.0, 0.2, 1.0])
    every_epoch = FukaseConfusionIQR(check_every_epochs=1)
    every_epoch.configure(steps_per_epoch=2, num_epochs=6)
    assert run(every_epoch, 12, values, steps_per_epoch=2) == [10]
    every_two = FukaseConfusionIQR(check_every_epochs=2)
    every_two.configure(steps_per_epoch=2, num_epochs=6)
    assert run(every_two, 12, values, steps_per_epoch=2) == []


def test_fukase_confusion_iqr_needs_four_epoch_means():
    # Epoch 3's 0.0 would be an outlier of [1.0, 1.1, 0.0], but 3 means give no decision; at epoch 4,
    # sorted [0, 1, 1, 1.1]: Q1 0.75, Q3 1.025, bound 0.3375, latest 1.0 -> no fire either.
    values = epochs_of(GC, [1.0, 1.1, 0.0, 1.0])
    detector = FukaseConfusionIQR(check_every_epochs=1)
    detector.configure(steps_per_epoch=2, num_epochs=4)
    assert run(detector, 8, values, steps_per_epoch=2) == []
    assert FukaseConfusionIQR().check_every_epochs == 10  # the paper's reference setting


def test_fukase_rotation_angle_fires_when_the_trend_flattens():
    # 6 planned epochs: x = (e - 1) / 5, one epoch = 0.2 in x, so an increase of d per epoch is slope 5d.
    # Epoch means 0, 0.5, 1.0, 1.5, 1.6, 1.7; fit over the last 3:
    # epochs 3, 4: slope 0.5 / 0.2 = 2.5 (68 deg); epoch 5 (1.0, 1.5, 1.6): Sxy = 0.2 * 0.6 = 0.12,
    # Sxx = 0.08, slope 1.5 (56 deg); epoch 6 (1.5, 1.6, 1.7): slope 0.5, 26.6 deg < 45 -> fires at step 12.
    values = epochs_of(LR, [0.0, 0.5, 1.0, 1.5, 1.6, 1.7])
    detector = FukaseRotationAngle(last_epochs=3)
    detector.configure(steps_per_epoch=2, num_epochs=6)
    angles = []
    for step in range(1, 13):
        if detector.update(step, step / 2, values.get(step)):
            break
        if step % 2 == 0:
            angles.append(detector.trend_angle())
    assert detector.fired_step == 12
    assert angles[:2] == [None, None]
    assert angles[2:] == pytest.approx([math.degrees(math.atan(2.5))] * 2 + [math.degrees(math.atan(1.5))])
    assert detector.trend_angle() == pytest.approx(math.degrees(math.atan(0.5)))


def test_fukase_rotation_angle_scales_x_over_the_planned_epochs():
    # Planned over 21 epochs one epoch is 0.05 in x: the flat-looking 0.1 per epoch is slope 2 (63 deg).
    values = epochs_of(LR, [0.0, 0.5, 1.0, 1.5, 1.6, 1.7])
    detector = FukaseRotationAngle(last_epochs=3)
    detector.configure(steps_per_epoch=2, num_epochs=21)
    assert run(detector, 12, values, steps_per_epoch=2) == []
    assert detector.trend_angle() == pytest.approx(math.degrees(math.atan(2.0)))


# ---- baselines ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, steps_per_epoch, expected",
    [
        (dict(step=3), 4, 3),  # steps 1-3 augmented, step 4 onward one copy
        (dict(step=0), 4, 1),  # no augmented step: fires at the first update
        (dict(epoch=0.5), 4, 2),  # 0.5 * 4 = 2
        (dict(epoch=0.625), 4, 3),  # 2.5 rounds half up to 3
        (dict(epoch=2), 4, 8),
    ],
)
def test_fixed_switch(kwargs, steps_per_epoch, expected):
    detector = FixedSwitch(**kwargs)
    detector.configure(steps_per_epoch=steps_per_epoch, num_epochs=3)
    assert run(detector, 12, {}, steps_per_epoch=steps_per_epoch) == [expected]


def test_fixed_switch_fires_at_the_first_update_past_its_step():
    detector = FixedSwitch(step=5)
    assert not detector.update(4, 1.0, None)
    assert detector.update(7, 1.75, None)  # updates skipped 5 and 6
    assert detector.fired_step == 7


def test_never_switch():
    detector = NeverSwitch()
    assert run(detector, 1000, per_step(GC, [0.5] * 1000)) == []
    assert not detector.fired and detector.fired_step is None and detector.values_at_fire is None


# ---- shared behaviour ---------------------------------------------------------------------------


def test_fires_exactly_once_and_keeps_values_at_fire():
    detector = StabilityDetector(GC, patience=2, window=2, warmup=0)
    values = merge(per_step(GC, CONFUSION_STEPS + [7.0] * 10), {4: {LR: 0.25}, 8: {"gradient_confusion_min": 0.5}})
    assert run(detector, 22, values) == [8]
    assert detector.fired_step == 8
    # Latest value of every metric seen, extra logged keys included: LR from step 4, GC from step 8.
    assert detector.values_at_fire == {GC: 1.0, LR: 0.25, "gradient_confusion_min": 0.5}


def _noisy_then_flat(step):
    if step % 3:
        return None
    value = (0.2 if (step // 12) % 2 else 0.8) if step <= 60 else 0.3 + 0.001 * (step % 7)
    return {GC: value, LR: min(step, 60) / 60 + 0.001 * step, GP: 0.1}


def _confusion_dip(step):
    epoch = (step - 1) // 6 + 1
    return None if step % 2 else {GC: (0.1 if epoch == 8 else 1.0 + 0.05 * (epoch % 3)) + 0.01 * (step % 3)}


def _rotation_flattening(step):
    return None if step % 2 else {LR: 1.0 - math.exp(-step / 15)}


RESUME_CASES = {
    "stability": (lambda: StabilityDetector(GC, window="1ep", warmup="1ep"), _noisy_then_flat),
    "stability_all": (lambda: StabilityDetector([GC, LR], window=6, warmup="1ep", mode="all"), _noisy_then_flat),
    "fukase_confusion_iqr": (lambda: FukaseConfusionIQR(check_every_epochs=2), _confusion_dip),
    "fukase_rotation_angle": (lambda: FukaseRotationAngle(last_epochs=3), _rotation_flattening),
    "fixed_step": (lambda: FixedSwitch(step=17), _noisy_then_flat),
    "fixed_epoch": (lambda: FixedSwitch(epoch=2.5), _noisy_then_flat),
    "never": (lambda: NeverSwitch(), _noisy_then_flat),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_state_round_trip_mid_sequence_fires_at_the_same_step(case):
    factory, values_at = RESUME_CASES[case]
    steps_per_epoch, num_epochs, num_steps = 6, 20, 120
    values = {s: v for s in range(1, num_steps + 1) if (v := values_at(s)) is not None}

    reference = factory()
    reference.configure(steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
    fired = run(reference, num_steps, values, steps_per_epoch)
    assert len(fired) == (0 if case == "never" else 1)

    for cut in range(0, num_steps + 1, 5):
        first = factory()
        first.configure(steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
        fired_before = run(first, cut, values, steps_per_epoch)
        restored = round_trip(first)
        assert type(restored) is type(first) and restored.describe() == first.describe()
        restored.configure(steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)  # as on resume
        fired_after = run(restored, num_steps, values, steps_per_epoch, start=cut + 1)
        assert fired_before + fired_after == fired, (case, cut)
        assert (restored.fired_step, restored.fired_epoch) == (reference.fired_step, reference.fired_epoch)
        assert restored.values_at_fire == reference.values_at_fire
        assert restored.state() == reference.state()


def test_state_is_json_and_restores_without_configure():
    detector = StabilityDetector(GC, window="0.25ep", warmup="0.5ep")
    detector.configure(steps_per_epoch=8, num_epochs=2)
    run(detector, 5, per_step(GC, CONFUSION_STEPS))
    state = json.loads(json.dumps(detector.state(), allow_nan=False))
    assert state["name"] == "stability" and state["args"]["window"] == "0.25ep"
    restored = Detector.from_state(state)  # the base class dispatches on the name
    assert isinstance(restored, StabilityDetector) and restored.window_steps == 2
    assert run(restored, 12, per_step(GC, CONFUSION_STEPS), start=6) == [10]


def test_describe():
    assert StabilityDetector().describe() == (  # the default metric is that of `detector_metrics`
        "stability(layer_rotation, threshold=0.05, patience=2, window=0.25ep, warmup=0.5ep, any)"
    )
    assert StabilityDetector([GC, LR], window=200, warmup=0, mode="all").describe() == (
        "stability(gradient_confusion+layer_rotation, threshold=0.05, patience=2, window=200 steps, "
        "warmup=0 steps, all)"
    )
    assert FukaseConfusionIQR().describe() == "fukase_confusion_iqr(gradient_confusion, check_every_epochs=10)"
    assert FukaseRotationAngle().describe() == "fukase_rotation_angle(layer_rotation, last_epochs=5, max_angle=45deg)"
    assert FixedSwitch(step=100).describe() == "fixed(step=100)"
    assert FixedSwitch(epoch=1.5).describe() == "fixed(epoch=1.5)"
    assert NeverSwitch().describe() == "never()"


def test_registry_and_build_detector():
    assert {"stability", "fukase_confusion_iqr", "fukase_rotation_angle", "fixed", "never", "fraction", "rate", "plateau"} == set(DETECTORS)
    assert all(cls.name == name for name, cls in DETECTORS.items())
    detector = build_detector("stability", metrics="layer_rotation", threshold=0.1, window="100")
    assert isinstance(detector, StabilityDetector) and detector.metrics == [LR] and detector.window_steps == 100
    assert isinstance(build_detector("fixed", epoch=1), FixedSwitch)
    from hf_critical import arguments

    names = getattr(arguments, "DETECTOR_NAMES", None)
    if names is not None:  # the argument parser's list must match the registry
        assert set(names) == set(DETECTORS)


# ---- bad input ----------------------------------------------------------------------------------


def test_unknown_detector_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown detector 'nope'.*fukase_confusion_iqr"):
        build_detector("nope")
    with pytest.raises(ValueError, match="unknown detector"):
        detector_from_state({"name": "nope", "args": {}, "attributes": {}})
    with pytest.raises(ValueError, match="state of detector 'never'"):
        StabilityDetector.from_state(NeverSwitch().state())


@pytest.mark.parametrize("threshold", [0, 0.0, -1, float("nan"), float("inf"), "0.05", True])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match="`threshold`"):
        StabilityDetector(threshold=threshold)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(patience=0), "patience"),
        (dict(patience=1.5), "patience"),
        (dict(patience=True), "patience"),
        (dict(mode="some"), "mode"),
        (dict(metrics=[]), "metrics"),
        (dict(metrics="none"), "metrics"),
        (dict(metrics=["gradient_noise"]), "metrics"),
        (dict(metrics=3), "metrics"),
        (dict(window="abc"), "window"),
        (dict(window="0.5"), "window"),  # fractional steps
        (dict(window="1.5 steps"), "window"),
        (dict(window=0.5), "window"),  # a bare float: steps or epochs?
        (dict(window=0), "window"),
        (dict(window="0ep"), "window"),
        (dict(window="-3"), "window"),
        (dict(window=""), "window"),
        (dict(window=None), "window"),
        (dict(window="2 hours"), "window"),
        (dict(warmup="-1ep"), "warmup"),
        (dict(warmup="nan ep"), "warmup"),
        (dict(warmup=-1), "warmup"),
    ],
)
def test_bad_stability_arguments(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        StabilityDetector(**kwargs)


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (FukaseConfusionIQR, dict(check_every_epochs=0), "check_every_epochs"),
        (FukaseConfusionIQR, dict(metric="loss"), "metric"),
        (FukaseRotationAngle, dict(last_epochs=1), "last_epochs"),
        (FukaseRotationAngle, dict(max_angle_degrees=90), "max_angle_degrees"),
        (FixedSwitch, dict(), "exactly one"),
        (FixedSwitch, dict(step=3, epoch=1.0), "exactly one"),
        (FixedSwitch, dict(step=-1), "step"),
        (FixedSwitch, dict(step=2.0), "step"),
        (FixedSwitch, dict(epoch=float("nan")), "epoch"),
        (FixedSwitch, dict(epoch=-0.5), "epoch"),
    ],
)
def test_bad_detector_arguments(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "0.5", None, True])
def test_non_finite_or_non_numeric_value_names_metric_and_step(value):
    detector = StabilityDetector(GC, window=2, warmup=0)
    detector.update(1, 0.1, {GC: 0.5})
    with pytest.raises(ValueError, match=r"'layer_rotation' at step 2"):
        detector.update(2, 0.2, {GC: 0.5, LR: value})


def test_steps_must_increase():
    detector = NeverSwitch()
    detector.update(3, 0.3, None)
    for step in (3, 2):
        with pytest.raises(ValueError, match=f"got step {step} after step 3"):
            detector.update(step, 0.2, None)
    with pytest.raises(ValueError, match="`step`"):
        NeverSwitch().update(0, 0.0, None)
    with pytest.raises(ValueError, match="`epoch`"):
        NeverSwitch().update(1, float("nan"), None)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: StabilityDetector(window="0.25ep", warmup=0),
        lambda: StabilityDetector(window=10, warmup="1ep"),
        lambda: FukaseConfusionIQR(),
        lambda: FukaseRotationAngle(),
        lambda: FixedSwitch(epoch=1),
    ],
)
def test_update_before_configure(factory):
    with pytest.raises(RuntimeError, match="configure"):
        factory().update(1, 0.0, None)


def test_detectors_counting_in_steps_need_no_configure():
    for detector in (StabilityDetector(window=2, warmup=0), FixedSwitch(step=2), NeverSwitch()):
        detector.update(1, 0.0, {GC: 1.0})


def test_bad_configure():
    for steps_per_epoch in (0, 1.5, True, None):
        with pytest.raises(ValueError, match="`steps_per_epoch`"):
            NeverSwitch().configure(steps_per_epoch=steps_per_epoch, num_epochs=3)
    for num_epochs in (0, float("nan"), -1):
        with pytest.raises(ValueError, match="`num_epochs`"):
            NeverSwitch().configure(steps_per_epoch=10, num_epochs=num_epochs)
    with pytest.raises(ValueError, match="num_epochs >= 2"):
        FukaseRotationAngle().configure(steps_per_epoch=10, num_epochs=1)


def test_resume_with_other_steps_per_epoch_is_refused():
    detector = StabilityDetector(window="0.5ep", warmup=0)
    detector.configure(steps_per_epoch=8, num_epochs=2)
    detector.configure(steps_per_epoch=8, num_epochs=3)  # same plan, longer run: fine
    run(detector, 3, per_step(GC, CONFUSION_STEPS))
    with pytest.raises(ValueError, match="steps_per_epoch=8"):
        detector.configure(steps_per_epoch=4, num_epochs=3)
    in_steps = StabilityDetector(window=4, warmup=0)  # nothing in epochs: nothing to misalign
    run(in_steps, 3, per_step(GC, CONFUSION_STEPS))
    in_steps.configure(steps_per_epoch=4, num_epochs=3)
