"""benchmarks/gpu.py runs end to end on the CPU with tiny models (the GPU run uses the same code)."""

from __future__ import annotations

import os

import pytest
from helpers import REPO_ROOT

BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")


def _run(tmp_path, monkeypatch, *models):
    monkeypatch.syspath_prepend(BENCHMARKS)
    monkeypatch.delitem(__import__("sys").modules, "gpu", raising=False)
    import gpu

    output = tmp_path / "gpu.md"
    argv = ["--tiny", "--steps", "2", "--warmup", "1", "--reps", "1", "--no-bf16", "--output", str(output)]
    report = gpu.main(argv + (["--models", *models] if models else []))
    assert output.read_text() == report
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith(("| bert-tiny", "| vit-tiny"))]
    assert [row[1] for row in rows] == list(gpu.CONFIGURATIONS) * (len(models) or 2)
    assert all("(vs k1)" in row[3] for row in rows if row[1] == "k4")
    assert all(float(row[2]) > 0 for row in rows)
    return report


def test_gpu_benchmark_smoke_on_cpu(tmp_path, monkeypatch):
    report = _run(tmp_path, monkeypatch, "vit-tiny")
    assert "GPU benchmark" in report and "Machine:" in report


@pytest.mark.slow
def test_gpu_benchmark_both_models_on_cpu(tmp_path, monkeypatch):
    _run(tmp_path, monkeypatch)
