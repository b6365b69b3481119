"""benchmarks/overhead.py with ``--isolate``: each timed run in a fresh child process, the table as usual."""

from __future__ import annotations

import os
import sys

from helpers import REPO_ROOT

BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")


def test_isolated_runs_fill_the_table(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    monkeypatch.delitem(sys.modules, "overhead", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import overhead

    output = tmp_path / "overhead.md"
    argv = ["--models", "tiny_bert", "--reps", "1", "--steps", "3", "--warmup", "1", "--threads", "1",
            "--no-memory", "--isolate", "--allocator", "default", "--output", str(output)]
    overhead.main(argv)
    report = output.read_text()
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| tiny_bert")]
    assert [row[1] for row in rows] == ["plain", "default", "every_step"]
    assert all(float(row[2]) > 0 for row in rows)  # each child timed its steps and handed them back
    assert "each run in a fresh process of its own (`--isolate`)" in report
    assert "adaptive malloc thresholds left as they are" in report
