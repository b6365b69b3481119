"""Read and plot the ``dynamics.jsonl`` file written by the training callback.

Each line of the file is one JSON object, one measurement, for example::

    {"step": 10, "epoch": 0.5, "current_copies": 4,
     "gradient_confusion": {"value": 0.12, "min": 0.05, ...},
     "gradient_predictability": {"value": 0.4, ...},
     "layer_rotation": {"value": 0.001, "weighted_mean": 0.0012, ...}}

Any metric key may be absent from a record, any ``value`` may be ``null``, and ``current_copies``
(``augment_copies`` in logs written before 0.2) is optional. Matplotlib is imported lazily so that importing this module has no side effects.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from .io.dynamics_log import read_dynamics
from .names import CURRENT_COPIES_FIELD, LEGACY_CURRENT_COPIES_FIELD, METRIC_NAMES

__all__ = ["METRIC_KEYS", "read_dynamics", "plot_dynamics"]

#: Metric keys plotted, in subplot order, with the y-axis label of each.
METRIC_KEYS: dict[str, str] = {name: name.replace("_", " ") for name in METRIC_NAMES}


def _is_number(x: Any) -> bool:
    """True for finite real numbers; False for None, NaN/inf, bools and anything else."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _series(records: Sequence[dict[str, Any]], metric: str, field: str) -> tuple[list[float], list[float]]:
    """Collect ``(step, record[metric][field])`` pairs, skipping absent, null and non-finite values."""
    xs: list[float] = []
    ys: list[float] = []
    for rec in records:
        step = rec.get("step")
        entry = rec.get(metric)
        if not _is_number(step) or not isinstance(entry, dict):
            continue
        val = entry.get(field)
        if _is_number(val):
            xs.append(float(step))
            ys.append(float(val))
    return xs, ys


def _current_copies(record: dict[str, Any]) -> Any:
    """A record's copies per sample (``current_copies``; ``augment_copies`` in logs written before 0.2)."""
    return record.get(CURRENT_COPIES_FIELD, record.get(LEGACY_CURRENT_COPIES_FIELD))


def copies_line(records: list[dict[str, Any]], switch_step: int | float | None = None) -> tuple[list[float], list[float]]:
    """Points of the k (augmented copies) step line, drawn with ``where="post"``.

    A record carries the copies of the batches up to its step; the switch cuts them after
    ``switch_step``, which may fall between two measurements. With ``switch_step`` the line drops at
    ``switch_step`` itself (where the dashed "switch" line is), not at the next measurement.
    """
    points = [
        (float(rec["step"]), float(_current_copies(rec)))
        for rec in records
        if _is_number(rec.get("step")) and _is_number(_current_copies(rec))
    ]
    if switch_step is not None and _is_number(switch_step):
        later = [(step, k) for step, k in points if step > switch_step]
        if later:
            earlier = [(step, k) for step, k in points if step < switch_step]
            points = [*earlier, (float(switch_step), later[0][1]), *later]
    points.sort(key=lambda p: p[0])
    return [p[0] for p in points], [p[1] for p in points]


def plot_dynamics(
    jsonl_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str],
    *,
    switch_step: int | float | None = None,
    title: str | None = None,
) -> str:
    """Plot the training-dynamics metrics of a ``dynamics.jsonl`` file to a PNG.

    One subplot per metric present (gradient confusion: mean, and minimum as a lighter line when
    present; gradient predictability; layer rotation: mean and parameter-weighted mean), x = optimizer
    step. A dashed vertical line labelled "switch" marks ``switch_step`` if given. If records carry an
    ``current_copies`` field, the number of augmented copies k is drawn as a step line on a twin axis
    of the last subplot. Null, absent and non-finite values are skipped.

    Args:
        jsonl_path: the ``dynamics.jsonl`` file.
        png_path: where to write the figure; parent directories are created.
        switch_step: optimizer step at which augmentation was cut, or None.
        title: figure title, or None.

    Returns:
        ``png_path`` as a string.

    Raises:
        FileNotFoundError: if ``jsonl_path`` does not exist.
        ValueError: if the file is malformed, empty, or holds no metric values.
    """
    path = os.fspath(jsonl_path)
    records = read_dynamics(path)
    if not records:
        raise ValueError(f"{path}: dynamics file is empty")

    # (metric, [(field, label, style kwargs), ...]) for every metric with at least one value.
    panels: list[tuple[str, list[tuple[list[float], list[float], str, dict[str, Any]]]]] = []
    for metric in METRIC_KEYS:
        lines = []
        fields: list[tuple[str, str, dict[str, Any]]] = [("value", "mean", {"color": "C0", "lw": 1.6})]
        if metric == "gradient_confusion":
            fields.append(("min", "min", {"color": "C0", "lw": 1.0, "alpha": 0.4}))
        elif metric == "layer_rotation":
            fields.append(("weighted_mean", "param-weighted mean", {"color": "C1", "lw": 1.2, "ls": "-."}))
        for field, label, style in fields:
            xs, ys = _series(records, metric, field)
            if xs:
                lines.append((xs, ys, label, style))
        if lines:
            panels.append((metric, lines))
    if not panels:
        raise ValueError(f"{path}: no metric records (none of {', '.join(METRIC_KEYS)} has a value)")

    k_steps, k_vals = copies_line(records, switch_step)

    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            "plotting the dynamics: matplotlib is not installed; pip install matplotlib "
            "(or pip install 'hf-critical[experiments]')"
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(8, 2.6 * len(panels) + 0.6), squeeze=False)
    try:
        for ax, (metric, lines) in zip(axes[:, 0], panels):
            for xs, ys, label, style in lines:
                ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=label, **style)
            if switch_step is not None:
                ax.axvline(float(switch_step), color="red", ls="--", lw=1.2, label="switch")
            ax.set_ylabel(METRIC_KEYS[metric])
            ax.grid(True, alpha=0.3)
            handles, labels = ax.get_legend_handles_labels()
            if len(labels) > 1:
                ax.legend(handles, labels, loc="best", fontsize="small")

        last = axes[-1, 0]
        if k_steps:
            twin = last.twinx()
            twin.step(k_steps, k_vals, where="post", color="gray", lw=1.2, ls=":", label="augment copies k")
            twin.set_ylabel("augment copies k")
            twin.set_ylim(0, max(k_vals) + 1)
            twin.yaxis.get_major_locator().set_params(integer=True)
            h1, l1 = last.get_legend_handles_labels()
            h2, l2 = twin.get_legend_handles_labels()
            last.legend(h1 + h2, l1 + l2, loc="best", fontsize="small")
        last.set_xlabel("optimizer step")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        out = os.fspath(png_path)
        parent = os.path.dirname(out)
        if parent:
            os.makedirs(parent, exist_ok=True)
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return out
