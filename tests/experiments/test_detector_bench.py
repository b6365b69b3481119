"""Properties of the trend detectors on the synthetic bench (hf_critical.experiments.detector_bench): null models
where they must not fire, must not care, and must move."""

from __future__ import annotations

import logging
import os

import pytest
from helpers import REPO_ROOT

from hf_critical import build_detector
from hf_critical.experiments.detector_bench import (
    KNEE_FRACTION,
    SINGLE_PAIR_NOISE,
    Plan,
    detectable_slope,
    linear,
    noisy_decay,
    noisy_trend,
    power_law,
    saturating,
    simulate,
)

RATE = lambda: build_detector("rate")  # the default of CriticalPeriodArguments
PLATEAU = lambda: build_detector("plateau")


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def test_knees_are_where_the_rate_falls_below_the_stated_fraction():
    plan = Plan(steps_per_epoch=100, every=1, epochs=50)
    for stream in (saturating(4.0), power_law(4.0)):
        u = plan.progress()
        values = stream.curve(u)
        rate = [(values[i + 1] - values[i]) / (u[i + 1] - u[i]) for i in range(len(u) - 1)]
        below = next(i for i, r in enumerate(rate) if r < KNEE_FRACTION * rate[0])
        assert abs(u[below] - stream.knee) < 0.05, stream.name


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e3])
def test_default_never_fires_on_a_clean_steady_trend(schedule, scale):
    # Increments proportional to the learning rate: a decaying schedule must not look like settling.
    assert simulate(RATE, linear(0.01), Plan(8, 2, 60, schedule), scale=scale) is None


@pytest.mark.parametrize("family", [saturating, power_law])
def test_default_fires_at_the_same_step_whatever_the_metric_units(family):
    plan = Plan(8, 2, 120)
    fires = {scale: simulate(RATE, family(5.0), plan, scale=scale) for scale in (1e-6, 1e-3, 1.0, 1e3)}
    assert fires[1.0] is not None and len(set(fires.values())) == 1, fires


@pytest.mark.parametrize(("family", "tau"), [(saturating, 2.5), (saturating, 5.0), (power_law, 5.0)])
def test_default_fire_epoch_grows_with_the_time_constant(family, tau):
    # 4x the time constant gives 2.5-5.5x the fire epoch. (A power law with tau = 2.5 gives 2.4x:
    # the fixed delay of about 3 epochs, lookback plus patience, weighs on its early knee.)
    plan = Plan(8, 2, 200)
    short, long = simulate(RATE, family(tau), plan), simulate(RATE, family(4 * tau), plan)
    assert short is not None and long is not None
    assert 2.5 <= long / short <= 5.5, (short, long)
    # ... and after the knee, never before it.
    assert short >= family(tau).knee_epoch(plan) and long >= family(4 * tau).knee_epoch(plan)


def test_default_fire_epoch_does_not_depend_on_steps_per_epoch():
    fires = [simulate(RATE, saturating(5.0), Plan(spe, 2, 60)) for spe in (8, 40)]
    assert None not in fires and max(fires) / min(fires) - 1 <= 0.15, fires


@pytest.mark.parametrize("make", [RATE, PLATEAU], ids=["rate", "plateau"])
def test_noisy_detectable_trends_rarely_fire(make):
    # The noise of real single-pair confusion logs; a trend of 3 standard errors of a quarter-epoch
    # mean per quarter epoch, falling as confusion does.
    plan = Plan(8, 2, 60)
    trend = noisy_trend(-detectable_slope(SINGLE_PAIR_NOISE, plan), SINGLE_PAIR_NOISE)
    fired = sum(simulate(make, trend, plan, seed=seed) is not None for seed in range(40))
    assert fired <= 4, f"{fired}/40 false fires"


def test_plateau_detects_a_noisy_knee_after_it():
    # A decay to a plateau of twice the single-pair noise in amplitude (tau = 2 epochs).
    plan = Plan(8, 2, 60)
    decay = noisy_decay(2.0, SINGLE_PAIR_NOISE, start=0.1 + 2 * SINGLE_PAIR_NOISE)
    knee = decay.knee_epoch(plan)
    fires = [simulate(PLATEAU, decay, plan, seed=seed) for seed in range(40)]
    detected = sum(f is not None and f >= knee for f in fires)
    assert detected >= 28, f"detected after the knee in {detected}/40: {fires}"


def test_a_detector_that_needs_no_metric_is_a_clock_by_construction():
    # The schedule-only null: the fraction rule fires at the same epoch on every stream.
    fires = {simulate(lambda: build_detector("fraction", fraction=0.25), s, Plan(8, 2, 40)) for s in (linear(), saturating(2))}
    assert fires == {10.0}


def test_clean_knee_delay_is_a_fraction_of_the_time_constant():
    plan = Plan(8, 2, 200)
    for tau in (5.0, 20.0):
        stream = saturating(tau)
        fire, knee = simulate(RATE, stream, plan), stream.knee_epoch(plan)
        assert fire is not None and 0 <= (fire - knee) / tau <= 1.0, (tau, fire, knee)


def test_bench_script_prints_a_scorecard(capsys):
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["detectors.py", "--quick", "--seeds", "2", "--only", "rate,fraction"]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(os.path.join(REPO_ROOT, "benchmarks", "detectors.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "| clean steady growth: fired | 0/12 | 12/12 |" in out
