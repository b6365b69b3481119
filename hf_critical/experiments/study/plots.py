"""The study's plots: accuracy against cost, the oracle curve with each detector on it, metric curves, depth.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from ...arguments import AFTER_SWITCH_MODES, METRIC_NAMES
from .config import Run, parse_arm
from .summary import _mean_std, fraction_points


def plot_fraction_oracle(summary: Sequence[Mapping[str, Any]], task: str, path: str) -> str | None:
    """Accuracy and train time against the switch point (% of the run), one line per meaning of k = 1."""
    curves = {mode: fraction_points(summary, task, mode) for mode in AFTER_SWITCH_MODES}
    if sum(len(points) for points in curves.values()) < 3:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (mode, points) in enumerate(curves.items()):
        if not points:
            continue
        xs = [100 * fraction for fraction, _ in points]
        label = "k=1 clean after the switch" if mode == "clean" else "k=1 augmented after the switch"
        for ax, key, scale in ((axes[0], "accuracy", 100.0), (axes[1], "train_seconds", 1.0)):
            ax.errorbar(
                [x + (i - 0.5) * 0.6 for x in xs],  # a small offset keeps the error bars apart
                [scale * entry[key] for _, entry in points],
                yerr=[scale * (entry.get(f"{key}_std") or 0) for _, entry in points],
                fmt="o-" if mode == "clean" else "s--",
                color=f"C{i}",
                capsize=2,
                label=label,
            )
    axes[0].set_ylabel("accuracy (%, mean ± std over seeds)")
    axes[1].set_ylabel("train time (s)")
    for ax in axes:
        ax.set_xlabel("switch point (% of the run; 0: never k copies, 100: k copies throughout)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"{task}: accuracy vs switch point")
    axes[1].set_title(f"{task}: train time vs switch point")
    fig.tight_layout()
    return _save(fig, path)


def plot_depth_oracle(
    summary: Sequence[Mapping[str, Any]], family: str, members: Sequence[tuple[str, int]], path: str
) -> str | None:
    """Accuracy against the switch point, one line per depth; one panel per meaning of k = 1."""
    ordered = sorted(members, key=lambda member: member[1])
    curves = {mode: [(depth, fraction_points(summary, task, mode)) for task, depth in ordered] for mode in AFTER_SWITCH_MODES}
    if not any(len(points) >= 3 for lines in curves.values() for _, points in lines):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.2), squeeze=False)
    for ax, (mode, lines) in zip(axes[0], curves.items()):
        for i, (depth, points) in enumerate(lines):
            if not points:
                continue
            ax.errorbar(
                [100 * fraction + (i - 1) * 0.6 for fraction, _ in points],  # offsets keep the error bars apart
                [100 * entry["accuracy"] for _, entry in points],
                yerr=[100 * (entry.get("accuracy_std") or 0) for _, entry in points],
                fmt="o-",
                color=f"C{i}",
                capsize=2,
                label=f"{depth} layers",
            )
        _label_axes(
            ax,
            "switch point (% of the run; 0: never k copies, 100: k copies throughout)",
            "accuracy (%, mean ± std over seeds)",
            f"{family}: k=1 {mode} after the switch",
        )
    fig.tight_layout()
    return _save(fig, path)


# ---- plots ------------------------------------------------------------------------------------------


def plot_task(summary: Sequence[Mapping[str, Any]], task: str, path_prefix: str) -> list[str]:
    """Accuracy vs train time and energy (the Pareto view), and the oracle curve with each detector on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in summary if e["task"] == task and e.get("accuracy") is not None]
    if not entries:
        return []
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, scale, label in (
        (axes[0], "train_seconds", 1.0, "train time (s)"),
        (axes[1], "train_energy_kwh", 1000.0, "train energy (Wh, codecarbon estimate)"),
    ):
        for e in entries:
            if e.get(key) is None:
                continue
            ax.errorbar(
                e[key] * scale,
                100 * e["accuracy"],
                xerr=(e.get(f"{key}_std") or 0) * scale,
                yerr=100 * (e.get("accuracy_std") or 0),
                fmt=_marker(e["arm"]),
                capsize=2,
                label=e["arm"],
            )
            ax.annotate(
                e["arm"], (e[key] * scale, 100 * e["accuracy"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{task}: accuracy vs cost (mean ± std over seeds)")
    fig.tight_layout()
    paths.append(_save(fig, f"{path_prefix}_pareto.png"))

    # Arms at fractions of the run have their own plot (`plot_fraction_oracle`), one line per meaning of k = 1.
    fixed = sorted(
        (
            e
            for e in entries
            if e["arm"].startswith("fixed@") and e.get("switch_epoch") is not None and parse_arm(e["arm"]).fraction is None
        ),
        key=lambda e: e["switch_epoch"],
    )
    if fixed:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.errorbar(
            [e["switch_epoch"] for e in fixed],
            [100 * e["accuracy"] for e in fixed],
            yerr=[100 * (e.get("accuracy_std") or 0) for e in fixed],
            fmt="o-",
            color="black",
            capsize=2,
            label="fixed switch (oracle sweep)",
        )
        for arm, style in (("full", "--"), ("none", ":")):
            base = next((e for e in entries if e["arm"] == arm), None)
            if base is not None:
                ax.axhline(
                    100 * base["accuracy"],
                    linestyle=style,
                    color="gray",
                    label=f"{arm} ({100 * base['accuracy']:.2f} %)",
                )
        for e in entries:
            if e["arm"].startswith("fixed@") or e["arm"] in ("full", "none") or e.get("switch_epoch") is None:
                continue
            ax.errorbar(
                e["switch_epoch"],
                100 * e["accuracy"],
                xerr=e.get("switch_epoch_std") or 0,
                yerr=100 * (e.get("accuracy_std") or 0),
                fmt=_marker(e["arm"]),
                capsize=2,
                label=e["arm"]
                if e["switched"] == e["seeds"]
                else f"{e['arm']} (fired in {e['switched']}/{e['seeds']} seeds)",
            )
        _label_axes(ax, "switch epoch (k copies -> 1)", "accuracy (%)", f"{task}: accuracy vs switch epoch")
        fig.tight_layout()
        paths.append(_save(fig, f"{path_prefix}_oracle.png"))
    return paths


def _metric_points(records: Sequence[Mapping[str, Any]], metric: str) -> list[tuple[float, float]]:
    """(epoch, global value) of every ``dynamics.jsonl`` record that measured ``metric``."""
    return [
        (float(r["epoch"]), float(r[metric]["value"]))
        for r in records
        if isinstance(r.get(metric), Mapping) and isinstance(r[metric].get("value"), (int, float))
    ]


def plot_metric_curves(
    run: Run, replayed: Sequence[Mapping[str, Any]], path: str, records: Sequence[Mapping[str, Any]] | None = None
) -> str | None:
    """The three metrics of one ``full`` run against epochs, with the replayed fire point of each detector.

    ``records``: the run's metric log when it is not in its output folder (a committed, exported log).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...io.dynamics_log import read_dynamics
    from ...names import DYNAMICS_FILE

    if records is None:
        try:
            records = read_dynamics(os.path.join(run.output_dir, DYNAMICS_FILE))
        except (FileNotFoundError, ValueError):
            return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axes, METRIC_NAMES):
        points = _metric_points(records, metric)
        if points:
            ax.plot(*zip(*points), lw=1, color="black")
        for i, row in enumerate(r for r in replayed if r.get("replayed_epoch") is not None):
            style = ("-", "--", ":", "-.")[i % 4]
            ax.axvline(row["replayed_epoch"], color=f"C{i % 10}", lw=1.2, linestyle=style, label=row["detector"])
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if any(row.get("replayed_epoch") is not None for row in replayed):
        axes[0].legend(fontsize=6)
    fig.suptitle(f"{run.task} ({run.arm.name}, seed {run.seed}); vertical lines: where each detector fires")
    fig.tight_layout()
    return _save(fig, path)


def _smoothed(points: Sequence[tuple[float, float]], width: int) -> list[tuple[float, float]]:
    """Trailing moving average over ``width`` measurements (confusion and predictability are noisy step to step)."""
    out = []
    for i in range(len(points)):
        window = points[max(0, i - width + 1) : i + 1]
        out.append((points[i][0], statistics.fmean(y for _, y in window)))
    return out


def plot_arm_curves(runs: Sequence[Run], path: str, width: int = 8) -> str | None:
    """The three metrics of several runs (one per arm) against epochs, smoothed; a dot where each run switched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...io.dynamics_log import read_dynamics
    from ...names import DYNAMICS_FILE

    curves = []
    for run in runs:
        try:
            records = read_dynamics(os.path.join(run.output_dir, DYNAMICS_FILE))
        except (FileNotFoundError, ValueError):
            continue
        switch_epoch = None
        if os.path.isfile(run.results_path):
            with open(run.results_path, encoding="utf-8") as fh:
                switch_epoch = (json.load(fh).get("critical_period") or {}).get("switch_epoch")
        curves.append((run, records, switch_epoch))
    if not curves:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, metric in zip(axes, METRIC_NAMES):
        for i, (run, records, switch_epoch) in enumerate(curves):
            points = _metric_points(records, metric)
            if not points:
                continue
            points = _smoothed(points, width)
            ax.plot(*zip(*points), lw=0.9, color=f"C{i % 10}", label=run.arm.name)
            if switch_epoch is not None:
                y = min(points, key=lambda p: abs(p[0] - switch_epoch))[1]
                ax.plot([switch_epoch], [y], "o", color=f"C{i % 10}", ms=4)
        ax.set_title(f"{metric} (moving mean of {width})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    labelled = [ax for ax in axes if ax.get_legend_handles_labels()[0]]
    if labelled:
        labelled[0].legend(fontsize=6)
    first = curves[0][0]
    fig.suptitle(f"{first.task}, seed {first.seed}: each arm's metrics; dots: where the arm switched to one copy")
    fig.tight_layout()
    return _save(fig, path)


def plot_depth(
    replayed: Sequence[Mapping[str, Any]], groups: Mapping[str, Sequence[tuple[str, int]]], path: str
) -> str | None:
    """Fire epoch (mean over seeds) of each detector against model depth; ``groups``: family -> [(task, depth)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members_of = {task for members in groups.values() for task, _ in members}
    if not any(r["task"] in members_of for r in replayed):
        return None  # no detector was replayed on any task of the groups (an oracle-only study)
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for ax, (family, members) in zip(axes[0], groups.items()):
        detectors = sorted({r["detector"] for r in replayed if r["task"] in {t for t, _ in members}})
        for i, name in enumerate(detectors):
            xs, ys, es = [], [], []
            for task, depth in sorted(members, key=lambda m: m[1]):
                epochs = [r.get("replayed_epoch") for r in replayed if r["task"] == task and r["detector"] == name]
                mean, std = _mean_std([e for e in epochs if e is not None])
                if mean is not None:
                    xs.append(depth)
                    ys.append(mean)
                    es.append(std or 0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, fmt="o-", color=f"C{i}", capsize=2, label=name)
        ax.set_xlabel("layers")
        ax.set_ylabel("fire epoch (replayed on the full arm)")
        ax.set_title(family)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _label_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _marker(arm: str) -> str:
    if arm in ("full", "none"):
        return "s"
    if arm.startswith("fixed@"):
        return "o"
    if arm == "validation":
        return "D"
    return "^"


def _save(fig: Any, path: str) -> str:
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
