"""benchmarks/replay_detectors.py --score: fire points set against the oracle sweep's own rows."""

from __future__ import annotations

import os
import sys

import pytest
from helpers import REPO_ROOT

BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")


@pytest.fixture
def replay(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    monkeypatch.delitem(sys.modules, "replay_detectors", raising=False)
    import replay_detectors

    return replay_detectors


def _rows(task, seed, accuracies):
    return [
        {"task": task, "arm": arm, "seed": str(seed), "status": "done", "accuracy": str(a)}
        for arm, a in accuracies.items()
    ]


def test_each_seed_gets_its_own_sweep_of_one_meaning(replay):
    rows = _rows("t", 0, {"none": 0.80, "fixed@0%:augmented": 0.82, "fixed@50%:clean": 0.90,
                          "fixed@50%:augmented": 0.88, "full": 0.86, "fixed@2ep": 0.1})
    rows += _rows("t", 1, {"none": 0.70, "full": 0.75})  # no point between the ends: not a sweep
    rows += [{"task": "t", "arm": "fixed@10%:clean", "seed": "0", "status": "failed", "accuracy": ""}]
    clean = replay.seed_sweeps(rows, "clean")
    assert list(clean) == [("t", 0)]
    assert clean[("t", 0)] == [(0.0, pytest.approx(80.0)), (0.5, pytest.approx(90.0)), (1.0, pytest.approx(86.0))]
    assert replay.seed_sweeps(rows, "augmented")[("t", 0)][0] == (0.0, pytest.approx(82.0))


def test_the_accuracy_at_a_fire_point_is_linear_between_its_neighbours(replay):
    points = [(0.0, 80.0), (0.5, 90.0), (1.0, 86.0)]
    assert replay.accuracy_at(points, 0.5) == 90.0  # on a measured point: that point
    assert replay.accuracy_at(points, 0.25) == pytest.approx(85.0)
    assert replay.accuracy_at(points, 0.75) == pytest.approx(88.0)
    assert replay.accuracy_at(points, 1.0) == 86.0 and replay.accuracy_at(points, 1.7) == 86.0  # never: full
    with pytest.raises(ValueError, match="outside the sweep"):
        replay.accuracy_at([(0.2, 1.0), (1.0, 2.0)], 0.1)


def test_a_fixed_fraction_at_the_best_point_has_no_regret_and_its_rows_follow_k(replay, monkeypatch, tmp_path):
    from hf_critical.experiments.study import config_from_dict

    monkeypatch.setattr(replay, "NULL_FRACTIONS", (0.5, 0.0))
    config = config_from_dict({
        "output_dir": str(tmp_path), "results_dir": str(tmp_path), "seeds": [0],
        "tasks": {"t": {"recipe": "run_vit", "args": {"augment_copies": 4, "num_train_epochs": 2},
                        "arms": ["none", "fixed@50%:clean", "full"]}},
    })
    rows = _rows("t", 0, {"none": 0.80, "fixed@50%:clean": 0.90, "full": 0.86})
    scored = {r["rule"]: r for r in replay.score(config, rows, "clean")}  # no logs: only the nulls
    assert set(scored) == {"fixed 50 %", "fixed 0 %"}
    assert scored["fixed 50 %"]["regret"] == pytest.approx(0.0)
    assert scored["fixed 50 %"]["rows_kept"] == pytest.approx((1 + 3 * 0.5) / 4)
    assert scored["fixed 0 %"]["regret"] == pytest.approx(10.0) and scored["fixed 0 %"]["rows_kept"] == 0.25


def test_the_committed_digits_sweep_scores_rate_where_docs_say_it_fires(replay, capsys, monkeypatch):
    config = os.path.join(REPO_ROOT, "recipes", "configs", "study_testbeds.yaml")
    monkeypatch.chdir(REPO_ROOT)  # the study file's results_dir is relative to the repository
    assert replay.main([config, "--score", "--after_switch", "clean", "--tasks", "digits_lr3e-3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| digits_lr3e-3 | rate |")]
    # docs/detectors.md: rate fires at epochs 8.0, 9.75 and 10.0 of 60 on the three seeds.
    assert lines and lines[0].split(" | ")[2] == "15 [13-17]"
