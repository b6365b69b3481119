"""Scorecard of every detector on synthetic metric streams with known answers (hf_critical.experiments.detector_bench).

    python benchmarks/detectors.py [--seeds 40] [--quick] [--tradeoff]

For each detector: false fires on streams that never settle (clean steady growth at 4 scales and
3 learning-rate schedules; noisy steady trends at the noise of real logs), the delay after the
knee of saturating and power-law curves (epochs, and in units of the time constant tau), how the
fire epoch scales with tau, and the invariances (metric units, steps per epoch, measurement
interval). ``--tradeoff`` adds the plateau rule's false-fire / delay trade-off as `peak_fraction`
varies, at single-pair and multi-pair noise, and the slope below which no rule tells a trend from
noise. Pure numpy/scipy: no model is trained. Output is markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from hf_critical import build_detector
from hf_critical.experiments import (
    MULTI_PAIR_NOISE,
    SINGLE_PAIR_NOISE,
    Plan,
    Stream,
    detectable_slope,
    linear,
    noisy_decay,
    noisy_trend,
    power_law,
    saturating,
    simulate,
    sqrt_growth,
)

#: name in the table -> detector factory. Metric-watching rules see the same stream under every name.
DETECTORS: dict[str, Callable[[], object]] = {
    "rate (default)": lambda: build_detector("rate"),
    "plateau": lambda: build_detector("plateau"),
    "stability, arguments' defaults (0.25ep window)": lambda: build_detector(
        "stability", metrics="layer_rotation", window="0.25ep", warmup="0.5ep"
    ),
    "stability, demo/study (1ep window, 2ep warm-up)": lambda: build_detector(
        "stability", metrics="layer_rotation", window="1ep", warmup="2ep"
    ),
    "fukase_rotation_angle": lambda: build_detector("fukase_rotation_angle"),
    "fukase_confusion_iqr (every epoch)": lambda: build_detector("fukase_confusion_iqr", check_every_epochs=1),
    "fraction(0.2) (schedule-only null)": lambda: build_detector("fraction", fraction=0.2),
}

BASE = Plan(steps_per_epoch=8, every=2, epochs=200)
ROTATION_NOISE = 0.003  # layer rotation about its trend in real logs, relative to its range (0.001 / 0.34)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "never" if value is None else f"{value:.{digits}f}"


def _spread(values: list[float | None]) -> str:
    """Relative spread (max/min - 1) of fire epochs, or which fired and which did not."""
    fired = [v for v in values if v is not None]
    if not fired:
        return "never (all)"
    if len(fired) < len(values):
        return f"fires in {len(fired)}/{len(values)}"
    return f"{max(fired) / min(fired) - 1:.0%}"


def scorecard(make: Callable[[], object], seeds: int, quick: bool) -> dict[str, str]:
    row: dict[str, str] = {}
    # 1. Clean streams that never settle: linear growth at 4 scales x 3 schedules (progress per lr).
    never_total = never_fired = 0
    for schedule in ("constant", "cosine", "linear"):
        for scale in (1e-6, 1e-3, 1.0, 1e3):
            plan = Plan(8, 2, 60, schedule)
            never_total += 1
            never_fired += simulate(make, linear(0.01), plan, scale=scale) is not None
    row["clean steady growth: fired"] = f"{never_fired}/{never_total}"
    # 2. Knees of clean (rotation-like, 0.3 % noise) saturating and power-law curves.
    taus = (2, 5, 10) if quick else (2, 5, 10, 20, 40)
    delays, delays_tau, early = [], [], 0
    fires: dict[tuple[str, float], float | None] = {}
    for family in (saturating, power_law):
        for tau in taus:
            stream = family(tau)
            stream = Stream(stream.name, stream.curve, stream.knee, ROTATION_NOISE, tau)
            fire = simulate(make, stream, BASE, seed=0)
            fires[(family.__name__, tau)] = fire
            knee = stream.knee_epoch(BASE)
            if fire is not None and knee is not None:
                delays.append(fire - knee)
                delays_tau.append((fire - knee) / tau)
                early += fire < knee
    row["knee delay, epochs (median)"] = _fmt(statistics.median(delays) if delays else None)
    row["knee delay / tau (min..max)"] = f"{min(delays_tau):.2f}..{max(delays_tau):.2f}" if delays_tau else "never"
    row["fired before the knee"] = f"{early}/{len(delays)}" if delays else "-"
    short, long = (2, 10) if quick else (5, 20)
    a, b = fires.get(("saturating", short)), fires.get(("saturating", long))
    row[f"fire({long // short} tau) / fire(tau)"] = _fmt(b / a if a and b else None)
    row["sqrt growth (no time scale) fires at"] = _fmt(simulate(make, sqrt_growth(), Plan(8, 2, 60)), 1)
    # 3. Invariances on exp(tau=5).
    stream = saturating(5)
    row["x1e-6..1e3: fire epochs"] = _spread([simulate(make, stream, BASE, scale=s) for s in (1e-6, 1e-3, 1.0, 1e3)])
    spe = (4, 8, 40) if quick else (4, 8, 40, 200)
    row["steps/epoch 4..200 (every 2)"] = _spread([simulate(make, stream, Plan(n, 2, 60)) for n in spe])
    every = (1, 5, 20) if quick else (1, 2, 5, 10, 20)
    row["interval 1..20 (40 steps/ep)"] = _spread([simulate(make, stream, Plan(40, e, 60)) for e in every])
    # 4. Noise of real single-pair logs: a detectable steady trend (3 standard errors of a quarter-epoch
    #    mean per quarter epoch, falling), and a decay to a plateau.
    plan = Plan(8, 2, 60)
    slope = detectable_slope(SINGLE_PAIR_NOISE, plan)
    trend = noisy_trend(-slope, SINGLE_PAIR_NOISE)
    row["noisy detectable trend: fired"] = f"{sum(simulate(make, trend, plan, seed=s) is not None for s in range(seeds))}/{seeds}"
    decay = noisy_decay(5, SINGLE_PAIR_NOISE)
    knee = decay.knee_epoch(plan)
    outcomes = [simulate(make, decay, plan, seed=s) for s in range(seeds)]
    detected = [f for f in outcomes if f is not None and f >= knee]
    row["noisy knee (tau=5): detected / early"] = (
        f"{len(detected)}/{sum(f is not None and f < knee for f in outcomes)} of {seeds}"
    )
    row["noisy knee: median delay, epochs"] = _fmt(statistics.median([f - knee for f in detected]) if detected else None)
    return row


def tradeoff(seeds: int) -> str:
    """Plateau rule: false fires on steady noisy trends vs delay after a noisy knee, as peak_fraction varies."""
    plan = Plan(8, 2, 60)
    slopes = (0.05, 0.1, 0.25, 0.5)  # in standard errors of a quarter-epoch mean per quarter epoch
    knees = ((5.0, 0.3), (2.0, None))  # (tau, amplitude): confusion's 0.4 -> 0.1, and twice the noise
    lines = [
        "| noise | peak_fraction | false fires on trends of " + " / ".join(f"{s:g}" for s in slopes)
        + " SE per window | knee tau=5, amplitude 0.3: detected / early, delay | knee tau=2, amplitude 2 sigma: detected / early, delay |",
        "|---|---|---|---|---|",
    ]
    for noise_name, noise in (("single-pair", SINGLE_PAIR_NOISE), ("multi-pair (4 chunks)", MULTI_PAIR_NOISE)):
        for fraction in (0.1, 0.25, 0.5):
            make = lambda f=fraction: build_detector("plateau", peak_fraction=f)
            cells = []
            for se in slopes:
                trend = noisy_trend(-detectable_slope(noise, plan, standard_errors=se), noise)
                cells.append(f"{sum(simulate(make, trend, plan, seed=s) is not None for s in range(seeds)) / seeds:.0%}")
            knee_cells = []
            for tau, amplitude in knees:
                decay = noisy_decay(tau, noise, start=0.1 + (amplitude if amplitude is not None else 2 * noise))
                knee = decay.knee_epoch(plan)
                outcomes = [simulate(make, decay, plan, seed=s) for s in range(seeds)]
                detected = [f for f in outcomes if f is not None and f >= knee]
                early = sum(f is not None and f < knee for f in outcomes)
                delay = _fmt(statistics.median([f - knee for f in detected]) if detected else None, 1)
                knee_cells.append(f"{len(detected)}/{early} of {seeds}, {delay} ep")
            lines.append(f"| {noise_name} ({noise:g}) | {fraction:g} | {' / '.join(cells)} | {' | '.join(knee_cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40, help="seeds per noisy stream (default 40)")
    parser.add_argument("--quick", action="store_true", help="fewer time constants and plans (for smoke tests)")
    parser.add_argument("--tradeoff", action="store_true", help="add the plateau rule's trade-off table")
    parser.add_argument("--only", default=None, help="comma-separated substrings of detector names to run")
    parser.add_argument("--tradeoff_only", action="store_true", help="only the plateau rule's trade-off table")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    names = list(DETECTORS)
    if args.only:
        names = [n for n in names if any(part in n for part in args.only.split(","))]
    if args.tradeoff_only:
        print(tradeoff(args.seeds))
        print(f"\n({time.perf_counter() - start:.0f} s)")
        return 0
    rows = {name: scorecard(DETECTORS[name], args.seeds, args.quick) for name in names}
    columns = list(next(iter(rows.values())))
    print(f"Detector scorecard ({args.seeds} seeds per noisy stream; base plan: 8 steps/epoch, a measurement every 2 steps)\n")
    # Transposed: one column per detector reads better with many properties.
    print("| property | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for column in columns:
        print(f"| {column} | " + " | ".join(rows[name][column] for name in names) + " |")
    if args.tradeoff:
        print("\nPlateau rule trade-off (8 steps/epoch, a measurement every 2 steps, 60 epochs)\n")
        print(tradeoff(args.seeds))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
