"""The rate, plateau and fraction detectors: reference computations, state round trips, bad input."""

from __future__ import annotations

import itertools
import json
import logging
import math
import statistics

import numpy as np
import pytest

from hf_critical.detectors import (
    FixedSwitch,
    FractionSwitch,
    PlateauDetector,
    RateDetector,
    build_detector,
    detector_from_state,
    detector_options_of,
    parse_detector_options,
    theil_sen,
)

LR = "layer_rotation"


def test_theil_sen_slope_is_the_median_of_pairwise_slopes():
    rng = np.random.default_rng(0)
    xs = np.sort(rng.uniform(0, 10, 25))
    ys = 0.3 * xs + rng.standard_normal(25)
    slope, low, high = theil_sen(xs, ys, 0.9)
    naive = statistics.median((ys[j] - ys[i]) / (xs[j] - xs[i]) for i, j in itertools.combinations(range(25), 2))
    assert slope == pytest.approx(naive)
    assert low < slope < high


def _feed(detector, values, every=2, spe=8, lr=None, start=1):
    """Feed values[i] at step i+1 when (i+1) % every == 0; the fire step or None."""
    for index in range(start - 1, len(values)):
        step = index + 1
        measured = {LR: values[index]} if step % every == 0 else None
        rate = None if lr is None else lr[index]
        if detector.update(step, step / spe, measured, learning_rate=rate):
            return step
    return None


def _saturating(steps, spe=8, tau=5.0):
    return [1 - math.exp(-(s / spe) / tau) for s in range(1, steps + 1)]


def test_rate_rule_uses_the_learning_rate_as_its_clock():
    """The same curve in learning-rate time fires at the same cumulative learning rate, whatever the schedule."""
    spe, steps = 8, 8 * 120
    constant = [1e-3] * steps
    halved = [5e-4] * steps  # half the learning rate: the metric moves half as fast per step
    u_const = np.cumsum(constant) / 1e-3 / spe
    u_half = np.cumsum(halved) / 1e-3 / spe
    f = lambda u: 1 - math.exp(-u / 5.0)
    fire_const = _feed(_configured(RateDetector()), [f(u) for u in u_const], lr=constant)
    fire_half = _feed(_configured(RateDetector()), [f(u) for u in u_half], lr=halved)
    assert fire_const is not None and fire_half is not None
    # At half the learning rate it takes about twice the steps to the same point of the curve.
    # (Not exactly twice: the lookback and warm-up are fixed spans in epochs.)
    assert 1.6 <= fire_half / fire_const <= 2.2
    # Per optimizer step instead, a cosine-decayed linear trend looks like settling: the schedule's clock.
    t = np.arange(steps) / steps
    cosine = 1e-3 * 0.5 * (1 + np.cos(math.pi * t))
    trend = list(0.01 * np.cumsum(cosine) / 1e-3 / spe)
    assert _feed(_configured(RateDetector()), trend, lr=list(cosine)) is None
    assert _feed(_configured(RateDetector(progress="step")), trend, lr=list(cosine)) is not None


def _configured(detector, spe=8, epochs=120):
    detector.configure(steps_per_epoch=spe, num_epochs=epochs)
    return detector


@pytest.mark.parametrize("name", ["rate", "plateau"])
def test_state_round_trip_mid_run_fires_at_the_same_step(name):
    logging.disable(logging.WARNING)
    values = _saturating(8 * 120)
    lr = [1e-3] * len(values)
    whole = _feed(_configured(build_detector(name, metric=LR)), values, lr=lr)
    assert whole is not None
    for cut in (37, whole // 2, whole - 3):
        first = _configured(build_detector(name, metric=LR))
        assert _feed(first, values[:cut], lr=lr) is None
        restored = detector_from_state(json.loads(json.dumps(first.state())))
        restored.configure(steps_per_epoch=8, num_epochs=120)
        assert _feed(restored, values, lr=lr, start=cut + 1) == whole
    logging.disable(logging.NOTSET)


def test_rate_rule_needs_the_learning_rate_and_says_so():
    detector = _configured(RateDetector())
    with pytest.raises(ValueError, match="needs the learning rate of every step"):
        detector.update(1, 0.125, None)
    with pytest.raises(ValueError, match="`learning_rate` at step 1"):
        detector.update(1, 0.125, None, learning_rate=float("nan"))
    # A rule per step does not need it.
    assert _configured(RateDetector(progress="step")).update(1, 0.125, None) is False


def test_a_metric_that_never_moves_never_fires():
    detector = _configured(RateDetector())
    assert _feed(detector, [0.5] * 800, lr=[1e-3] * 800) is None
    assert detector.peak_slope == 0.0  # a constant metric: no rate to fall from


def test_too_few_measurements_take_no_decision_and_warn_once(caplog):
    detector = _configured(PlateauDetector(metric=LR, lookback="1ep"))  # 4 measurements per epoch < min_points 8
    with caplog.at_level(logging.WARNING, logger="hf_critical.detectors"):
        values = [math.exp(-s / 40) for s in range(1, 8 * 20 + 1)]
        # The slope is fitted to the latest 8 measurements instead once they exist: it decides, later.
        _feed(detector, values)
    assert sum("no decision yet" in r.message for r in caplog.records) <= 1
    assert detector.decisions and detector.decisions[0][0] >= 16


def test_fraction_fires_at_its_share_of_the_planned_steps():
    detector = FractionSwitch(0.3)
    detector.configure(steps_per_epoch=10, num_epochs=5)
    assert detector.switch_step == 15
    assert [s for s in range(1, 51) if detector.update(s, s / 10, None)] == [15]
    # Planned in steps: max_steps wins over steps_per_epoch * num_epochs.
    planned = FractionSwitch(0.5)
    planned.configure(steps_per_epoch=10, num_epochs=5, max_steps=33)
    assert planned.switch_step == 17  # 16.5 rounded half up
    zero = FractionSwitch(0.0)
    zero.configure(steps_per_epoch=10, num_epochs=5)
    assert zero.update(1, 0.1, None) is True
    with pytest.raises(ValueError, match=r"`fraction` must be a number in \[0, 1\]"):
        FractionSwitch(1.5)
    with pytest.raises(RuntimeError, match="configure"):
        FractionSwitch(0.5).update(1, 0.1, None)


def test_states_written_before_max_steps_existed_still_load():
    detector = FixedSwitch(epoch=1.0)
    detector.configure(steps_per_epoch=4, num_epochs=3)
    state = detector.state()
    del state["attributes"]["max_steps"]
    restored = detector_from_state(state)
    assert restored.max_steps is None and restored.switch_step == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"peak_fraction": 0}, "peak_fraction"),
        ({"peak_fraction": 1}, "peak_fraction"),
        ({"confidence": 1.0}, "confidence"),
        ({"lookback": "soon"}, "lookback"),
        ({"progress": "epoch"}, "progress"),
        ({"min_points": 2}, "min_points"),
        ({"metric": "loss"}, "metric"),
        ({"patience": 0}, "patience"),
    ],
)
def test_bad_trend_options_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_detector("rate", **kwargs)


def test_options_are_declared_once_and_parsed_generically():
    assert detector_options_of("rate")["progress"] == "lr"
    assert detector_options_of("plateau")["metric"] == "gradient_confusion"
    assert detector_options_of("fraction") == {"fraction": 0.2}
    assert parse_detector_options("peak_fraction=0.3, metric=layer_rotation,window=0.5ep") == {
        "peak_fraction": 0.3,
        "metric": "layer_rotation",
        "window": "0.5ep",
    }
    assert parse_detector_options('{"patience": 3}') == {"patience": 3}
    with pytest.raises(ValueError, match="detector 'rate' has no option"):
        build_detector("rate", threshold=0.1)
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_detector_options("{patience: 3}")


def test_replay_follows_the_logged_learning_rate_like_the_live_run():
    """replay_detector feeds the rate rule the learning rates recovered from learning_rate_sum."""
    from hf_critical.detectors import learning_rates_from_records, replay_detector

    spe, epochs = 8, 60
    total = spe * epochs
    t = np.arange(total) / total
    rates = 1e-3 * 0.5 * (1 + np.cos(math.pi * t))
    sums = np.cumsum(rates)
    u = sums / 1e-3 / spe
    records = [
        {"step": s, "epoch": s / spe, "learning_rate_sum": float(sums[s - 1]),
         LR: {"value": float(1 - math.exp(-u[s - 1] / 5.0))}}
        for s in range(2, total + 1, 2)
    ]
    recovered = learning_rates_from_records(records, total)
    assert len(recovered) == total
    assert np.allclose(np.cumsum(recovered)[1::2], sums[1::2])  # exact at every measured step
    live = _configured(RateDetector(), spe, epochs)
    live.max_steps = total
    fired_live = None
    for s in range(1, total + 1):
        measured = {LR: records[s // 2 - 1][LR]["value"]} if s % 2 == 0 else None
        if live.update(s, s / spe, measured, learning_rate=float(recovered[s - 1])):
            fired_live = s
            break
    assert fired_live is not None
    assert replay_detector(records, spe, epochs, "rate") == fired_live
    assert learning_rates_from_records([{"step": 2}], total) is None
