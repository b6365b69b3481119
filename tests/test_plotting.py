"""Fast tests for hf_critical.plotting: each test writes its own dynamics.jsonl in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_critical.plotting import plot_dynamics, read_dynamics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(step: int, k: int | None = 4, **overrides) -> dict:
    rec = {
        "step": step,
        "epoch": step / 20,
        "gradient_confusion": {
            "value": 0.1 + 0.01 * step,
            "min": 0.05,
            "num_pairs": 1,
            "per_layer": {"bert.encoder.layer.0.attention.self.query.weight": 0.2},
            "skipped": {"non_finite": 0, "zero_norm": 0, "missing": 0},
        },
        "gradient_predictability": {"value": 0.4, "per_layer": {}, "skipped": {}},
        "layer_rotation": {"value": 0.001 * step, "weighted_mean": 0.0012 * step, "per_layer": {}, "skipped": {}},
    }
    if k is not None:
        rec["augment_copies"] = k
    rec.update(overrides)
    return rec


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


def test_plot_writes_valid_png(tmp_path: Path) -> None:
    records = [_record(s, k=4 if s < 50 else 1) for s in range(10, 110, 10)]
    jsonl = _write(tmp_path / "dynamics.jsonl", records)
    out = tmp_path / "sub" / "dynamics.png"
    result = plot_dynamics(jsonl, out, switch_step=50, title="test run")
    assert result == str(out)
    _assert_png(out)


def test_read_dynamics_roundtrip_and_blank_lines(tmp_path: Path) -> None:
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps(_record(1)) + "\n\n" + json.dumps(_record(2)) + "\n", encoding="utf-8")
    records = read_dynamics(jsonl)
    assert [r["step"] for r in records] == [1, 2]


def test_null_values_and_missing_metrics(tmp_path: Path) -> None:
    records = [
        {"step": 1, "gradient_confusion": {"value": None, "min": None}},
        {"step": 2, "gradient_confusion": {"value": 0.2}},  # no min, no other metrics
        {"step": 3, "layer_rotation": {"value": None, "weighted_mean": 0.01}},
        {"step": 4, "gradient_predictability": None},
        {"step": 5, "gradient_confusion": {"value": 0.3, "min": 0.1}},
    ]
    jsonl = _write(tmp_path / "d.jsonl", records)
    _assert_png(Path(plot_dynamics(jsonl, tmp_path / "d.png")))


def test_only_nulls_is_an_error(tmp_path: Path) -> None:
    records = [
        {"step": 1, "epoch": 0.1, "augment_copies": 4, "gradient_confusion": {"value": None, "min": None}},
        {"step": 2, "layer_rotation": {"value": None, "weighted_mean": None}},
    ]
    jsonl = _write(tmp_path / "nulls.jsonl", records)
    with pytest.raises(ValueError, match="nulls.jsonl"):
        plot_dynamics(jsonl, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_empty_file(tmp_path: Path) -> None:
    jsonl = tmp_path / "empty.jsonl"
    jsonl.write_text("\n", encoding="utf-8")
    assert read_dynamics(jsonl) == []
    with pytest.raises(ValueError, match="empty.jsonl"):
        plot_dynamics(jsonl, tmp_path / "x.png")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_dynamics(missing)
    with pytest.raises(FileNotFoundError):
        plot_dynamics(missing, tmp_path / "x.png")


def test_malformed_json_names_line(tmp_path: Path) -> None:
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps(_record(1)) + "\n" + '{"step": 2, "gradient_confusion": {\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl.*line 2"):
        read_dynamics(jsonl)
    with pytest.raises(ValueError, match="line 2"):
        plot_dynamics(jsonl, tmp_path / "x.png")


def test_non_object_line_rejected(tmp_path: Path) -> None:
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        read_dynamics(jsonl)


def test_no_augment_copies_and_single_metric(tmp_path: Path) -> None:
    records = [{"step": s, "layer_rotation": {"value": 0.01 * s}} for s in range(1, 6)]
    jsonl = _write(tmp_path / "d.jsonl", records)
    _assert_png(Path(plot_dynamics(str(jsonl), str(tmp_path / "d.png"))))


def test_the_copies_line_drops_at_the_switch_step_not_at_the_next_measurement():
    from hf_critical.plotting import copies_line

    records = [{"step": s, "augment_copies": 4 if s <= 6 else 1} for s in (2, 4, 6, 8, 10)]
    assert copies_line(records, switch_step=7) == ([2.0, 4.0, 6.0, 7.0, 8.0, 10.0], [4.0, 4.0, 4.0, 1.0, 1.0, 1.0])
    # Switched at a measured step: that record still trained on 4 copies; the drop is drawn there.
    records = [{"step": s, "augment_copies": 4 if s <= 6 else 1} for s in (2, 4, 6, 8)]
    assert copies_line(records, switch_step=6) == ([2.0, 4.0, 6.0, 8.0], [4.0, 4.0, 1.0, 1.0])
    assert copies_line(records) == ([2.0, 4.0, 6.0, 8.0], [4.0, 4.0, 4.0, 1.0])  # no switch step given
    assert copies_line(records[:3], switch_step=6) == ([2.0, 4.0, 6.0], [4.0, 4.0, 4.0])  # switched at the end
