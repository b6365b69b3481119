"""The study runner: configuration checks, the grid, the validation rule, detector replay, aggregation, and a real run."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics

import pytest
from helpers import REPO_ROOT, common_args, image_dataset, tiny_vit
from scipy.stats import t as scipy_t

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer, ImageAugmentationCollator
from hf_critical.experiments import study
from hf_critical.plotting import read_dynamics


def minimal(**overrides) -> dict:
    raw = {
        "output_dir": "out",
        "seeds": [0, 1],
        "data_dir": "/data",
        "tasks": {
            "digits": {
                "recipe": "run_vit",
                "clean": {"augment_policy": "none"},
                "args": {"train_file": "{data_dir}/x.npz", "num_train_epochs": 4},
                "arms": [
                    "none",
                    "full",
                    "fixed@2ep",
                    "fixed@30",
                    "stability:all",
                    "fukase_rotation_angle",
                    "validation",
                ],
            }
        },
    }
    raw.update(overrides)
    return raw


# ---- configuration ----------------------------------------------------------------------------------


def test_arm_names_are_parsed_into_recipe_arguments():
    clean = {"augment_policy": "none"}
    assert study.parse_arm("none").recipe_args(clean) == {
        "augment_policy": "none",
        "augment_copies": 1,
        "detector": "never",
    }
    assert study.parse_arm("full").recipe_args(clean) == {"detector": "never"}
    assert study.parse_arm("fixed@2.5ep").recipe_args(clean) == {"detector": "fixed", "detector_switch_epoch": 2.5}
    assert study.parse_arm("fixed@30").recipe_args(clean) == {"detector": "fixed", "detector_switch_step": 30}
    assert study.parse_arm("stability:layer_rotation").recipe_args(clean) == {
        "detector": "stability",
        "detector_metrics": ["layer_rotation"],
    }
    both = study.parse_arm("stability:gradient_confusion+layer_rotation")
    assert both.metrics == ("gradient_confusion", "layer_rotation")
    assert study.parse_arm("stability:all").metrics == (
        "gradient_confusion",
        "gradient_predictability",
        "layer_rotation",
    )
    assert study.parse_arm("fukase_confusion_iqr").recipe_args(clean) == {"detector": "fukase_confusion_iqr"}


def test_a_detector_arm_runs_any_registry_detector_by_name_with_the_tasks_options():
    clean = {"augment_policy": "none"}
    rate = study.parse_arm("detector:rate")
    assert rate.kind == "detector" and rate.recipe_args(clean) == {"detector": "rate"}
    assert study.parse_arm("detector:plateau:augmented").recipe_args(clean) == {
        "detector": "plateau",
        "augment_after_switch": "augmented",
    }
    # Replays read the task's detector settings, as the run does.
    task = study.Task("t", "run_vit", {"detector_options": "peak_fraction=0.5"}, [rate])
    assert study.task_detector_kwargs(task, rate) == {"name": "rate", "peak_fraction": 0.5}
    config = study.config_from_dict(minimal(tasks={"d": {"recipe": "run_vit", "arms": ["full", "detector:rate"]}}))
    assert [run.args["detector"] for run in study.plan_runs(config, seeds=[0])] == ["never", "rate"]


def test_fraction_arms_switch_at_that_share_of_the_run_with_either_meaning_of_one_copy():
    clean = {"augment_policy": "none"}
    epochs = {"num_train_epochs": 60}
    arm = study.parse_arm("fixed@5%:clean")
    assert arm.fraction == pytest.approx(0.05) and arm.after_switch == "clean"
    assert arm.recipe_args(clean, epochs) == {
        "detector": "fixed",
        "detector_switch_epoch": 3.0,
        "augment_after_switch": "clean",
    }
    assert study.parse_arm("fixed@30%:augmented").recipe_args(clean, {"num_train_epochs": 30}) == {
        "detector": "fixed",
        "detector_switch_epoch": 9.0,
        "augment_after_switch": "augmented",
    }
    # A run set by max_steps switches at a step; max_steps wins over epochs, as in TrainingArguments.
    assert study.parse_arm("fixed@10%").recipe_args(clean, {"max_steps": 250, "num_train_epochs": 3}) == {
        "detector": "fixed",
        "detector_switch_step": 25,
    }
    # 0 % of the augmented meaning: one augmented copy from the first step, the augmentation kept on.
    assert study.parse_arm("fixed@0%:augmented").recipe_args(clean, epochs) == {"augment_copies": 1, "detector": "never"}
    assert study.parse_arm("fixed@10ep:augmented").recipe_args(clean) == {
        "detector": "fixed",
        "detector_switch_epoch": 10.0,
        "augment_after_switch": "augmented",
    }
    assert study.parse_arm("full").fraction is None
    with pytest.raises(ValueError, match="needs the task's `num_train_epochs`"):
        study.parse_arm("fixed@10%").recipe_args(clean, {})


@pytest.mark.parametrize(
    "name, message",
    [
        ("fixed@0%", "strictly between 0 % and 100 %"),
        ("fixed@0%:clean", "'none' or 'fixed@0%:augmented'"),
        ("fixed@100%:augmented", "100 %: 'full'"),
        ("fixed@ten%", "like 'fixed@10%'"),
        ("fixed@10%:noisy", "one of ['clean', 'augmented']"),
    ],
)
def test_bad_fraction_arms_are_named_in_the_error(name, message):
    with pytest.raises(ValueError) as err:
        study.parse_arm(name)
    assert message in str(err.value) and name in str(err.value)


def test_a_part_of_the_study_is_some_tasks_arms_and_seeds(tmp_path):
    raw = minimal(output_dir=str(tmp_path))
    raw["tasks"]["digits"]["arms"] = ["none", "fixed@50%:clean", "fixed@50%:augmented", "full"]
    config = study.config_from_dict(raw)
    part = study.plan_runs(config, arms=["fixed@50%:augmented", "full"], seeds=[1])
    assert [run.key for run in part] == ["digits/fixed@50%:augmented/seed1", "digits/full/seed1"]
    assert part[0].args["detector_switch_epoch"] == 2.0 and part[0].args["augment_after_switch"] == "augmented"
    with pytest.raises(ValueError, match=r"unknown arm\(s\) \['fixed@60%'\]"):
        study.plan_runs(config, arms=["fixed@60%"])


@pytest.mark.parametrize(
    "name, message",
    [
        ("sometimes", "unknown arm 'sometimes'"),
        ("fixed@soon", "fixed@soon"),
        ("fixed@0", "fixed@0"),
        ("stability:loss", "unknown metric(s) ['loss']"),
        ("detector:rte", "unknown detector 'rte'; allowed: ['rate', 'plateau'"),
        ("detector:rate:noisy", "one of ['clean', 'augmented']"),
        ("detector:", "unknown detector ''"),
        ("", "non-empty string"),
    ],
)
def test_bad_arm_names_are_named_in_the_error(name, message):
    with pytest.raises(ValueError) as err:
        study.parse_arm(name)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda raw: raw.update(sedes=[0]), "unknown key(s) ['sedes']"),
        (lambda raw: raw.pop("seeds"), "'seeds' is required"),
        (lambda raw: raw.update(seeds=[0, 0]), "lists a seed twice"),
        (lambda raw: raw.update(seeds=["0"]), "non-empty list of integers"),
        (lambda raw: raw.update(threads=0), "'threads' must be an integer >= 1"),
        (lambda raw: raw["tasks"]["digits"].update(recipe="run_bert"), "'recipe' must be one of"),
        (lambda raw: raw["tasks"]["digits"].update(arms=["validation", "none"]), "list 'full' too"),
        (lambda raw: raw["tasks"]["digits"].update(arms=["full", "full"]), "listed twice"),
        (lambda raw: raw["tasks"]["digits"].update(arms=[]), "at least one arm"),
        (lambda raw: raw["tasks"]["digits"]["args"].update(seed=3), "'seed' is set by the study"),
        (lambda raw: raw["tasks"]["digits"].update(epochs=3), "unknown key(s) ['epochs']"),
        (lambda raw: raw.update(depth_groups={"vit": {"digits8": 8}}), "unknown task(s) ['digits8']"),
        (lambda raw: raw.update(validation_patience=0), "'validation_patience' must be an integer >= 1"),
    ],
)
def test_bad_study_files_are_refused_with_the_reason(change, message):
    raw = minimal()
    change(raw)
    with pytest.raises(ValueError) as err:
        study.config_from_dict(raw, source="s.yaml")
    assert message in str(err.value)
    assert "s.yaml" in str(err.value)


def test_plan_orders_the_grid_and_sets_each_arms_arguments(tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps(minimal()))
    config = study.load_config(path, {"output_dir": str(tmp_path / "o"), "data_dir": None})
    runs = study.plan_runs(config)
    assert len(runs) == 7 * 2
    assert [run.arm.name for run in runs[-2:]] == ["validation", "validation"]  # after every 'full' run
    by_key = {run.key: run for run in runs}
    none = by_key["digits/none/seed1"]
    assert none.args["augment_copies"] == 1 and none.args["augment_policy"] == "none" and none.args["seed"] == 1
    assert none.args["train_file"] == "/data/x.npz"
    assert none.output_dir == os.path.join(str(tmp_path / "o"), "runs", "digits", "none", "seed1")
    assert by_key["digits/full/seed0"].args["eval_strategy"] == "epoch"  # the validation rule reads its curve
    assert "eval_strategy" not in by_key["digits/fixed@2ep/seed0"].args
    assert by_key["digits/stability:all/seed0"].output_dir.endswith(os.path.join("stability_all", "seed0"))
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['cifar'\]"):
        study.plan_runs(config, ["cifar"])


def test_validation_rule_fires_where_patience_runs_out():
    history = [(10, 1.0, 0.50), (20, 2.0, 0.60), (30, 3.0, 0.60), (40, 4.0, 0.58), (50, 5.0, 0.70)]
    assert study.validation_switch_step(history, patience=2) == 40
    assert study.validation_switch_step(history, patience=1) == 30
    assert study.validation_switch_step(history, patience=3) is None
    assert study.validation_switch_step(history, patience=1, min_delta=0.2) == 20


# ---- aggregation ------------------------------------------------------------------------------------


def test_summary_averages_seeds_and_compares_with_full():
    rows = [
        {
            "task": "t",
            "arm": "full",
            "seed": 0,
            "status": "done",
            "accuracy": 0.90,
            "train_seconds": 100.0,
            "training_rows": 400,
        },
        {
            "task": "t",
            "arm": "full",
            "seed": 1,
            "status": "done",
            "accuracy": 0.92,
            "train_seconds": 110.0,
            "training_rows": 400,
        },
        {
            "task": "t",
            "arm": "stability:all",
            "seed": 0,
            "status": "done",
            "accuracy": 0.89,
            "train_seconds": 40.0,
            "training_rows": 160,
            "switch_epoch": 2.0,
            "switch_step": 20,
            "robust/fgsm_2/255": 0.5,
        },
        {"task": "t", "arm": "stability:all", "seed": 1, "status": "failed"},
    ]
    summary = {entry["arm"]: entry for entry in study.summarize(rows)}
    full, detector = summary["full"], summary["stability:all"]
    assert full["seeds"] == 2 and full["accuracy"] == pytest.approx(0.91)
    assert full["accuracy_std"] == pytest.approx(statistics.stdev([0.90, 0.92]))
    assert detector["seeds"] == 1 and detector["switched"] == 1
    assert detector["time_saving"] == pytest.approx(1 - 40 / 105)
    assert detector["rows_saving"] == pytest.approx(0.6)
    assert detector["accuracy_vs_full_pp"] == pytest.approx(-2.0)
    table = study.markdown_table(study.summarize(rows), "t")
    assert "| stability:all | 1 | 89.00 | -2.00 | 2.0 |" in table
    assert "fgsm_2/255 %" in table.splitlines()[0]


def test_one_periods_arithmetic_and_the_steps_are_columns_of_the_summary():
    # k = 3, a switch after epoch 9 of 60: (k - 1)(E - e) / (kE) = 2 * 51 / 180.
    assert study.protocol_saving(3, 9.0, 60) == pytest.approx(102 / 180)
    assert study.protocol_saving(3, None, 60) == 0.0  # never switched: e = E
    assert study.protocol_saving(1, None, 60) is None and study.protocol_saving(3, 9.0, None) is None
    results = {
        "measured": {"optimizer_steps": 264, "train_rows": 39000, "copies_before_switch": 3},
        "critical_period": {"switch_step": 216, "switch_epoch": 9.0},
        "arguments": {"training": {"num_train_epochs": 60}},
    }
    row = study.result_row(results)
    assert row["optimizer_steps"] == 264 and row["protocol_saving"] == pytest.approx(102 / 180)
    rows = [
        {"task": "t", "arm": "full", "seed": 0, "status": "done", "optimizer_steps": 1440, "protocol_saving": 0.0},
        {"task": "t", "arm": "fixed@9ep", "seed": 0, "status": "done", **row},
    ]
    table = study.markdown_table(study.summarize(rows), "t")
    assert table.splitlines()[0].endswith("| steps | (k−1)(E−e)/(kE) |")
    assert table.splitlines()[-1].endswith("| 264 | 56.7 % |")


def test_oracle_point_is_the_earliest_fixed_switch_without_loss():
    summary = [
        {"task": "t", "arm": "full", "accuracy": 0.900},
        {"task": "t", "arm": "fixed@2ep", "switch_epoch": 2.0, "accuracy": 0.880},
        {"task": "t", "arm": "fixed@5ep", "switch_epoch": 5.0, "accuracy": 0.898},
        {"task": "t", "arm": "fixed@10ep", "switch_epoch": 10.0, "accuracy": 0.905},
    ]
    assert study.oracle_point(summary, "t")["arm"] == "fixed@5ep"
    assert study.oracle_point(summary, "t", tolerance_pp=0.0)["arm"] == "fixed@10ep"
    assert study.oracle_point(summary[:2], "t") is None


def _entry(arm, accuracy, seconds, std=0.0):
    return {"task": "t", "arm": arm, "seeds": 3, "accuracy": accuracy, "accuracy_std": std,
            "train_seconds": seconds, "train_seconds_std": 0.0}


def test_the_fraction_sweep_has_one_curve_per_meaning_of_one_copy_with_shared_ends(tmp_path):
    summary = [
        _entry("none", 0.90, 20.0),
        _entry("fixed@0%:augmented", 0.91, 21.0),
        _entry("fixed@10%:clean", 0.89, 25.0),
        _entry("fixed@50%:clean", 0.935, 40.0),
        _entry("fixed@10%:augmented", 0.93, 25.0),
        _entry("fixed@2ep", 0.5, 22.0),  # an epoch-count arm: not a point of the fraction curves
        _entry("full", 0.94, 60.0, std=0.01),
    ]
    clean = study.fraction_points(summary, "t", "clean")
    augmented = study.fraction_points(summary, "t", "augmented")
    assert [(f, e["arm"]) for f, e in clean] == [(0.0, "none"), (0.1, "fixed@10%:clean"), (0.5, "fixed@50%:clean"), (1.0, "full")]
    assert [e["arm"] for _, e in augmented] == ["fixed@0%:augmented", "fixed@10%:augmented", "full"]
    assert study.earliest_no_loss_fraction(clean) is None  # 50 % loses 0.5 pp: more than the 0.3 pp allowed
    assert study.earliest_no_loss_fraction(clean, tolerance_pp=0.6) == 0.5
    assert study.earliest_no_loss_fraction(augmented, tolerance_pp=1.0) == 0.1
    assert study.best_fraction(clean)[0] == 1.0 and study.best_fraction(augmented[:2])[0] == 0.1
    assert study.best_fraction([]) is None
    table = study.fraction_table(summary, "t").splitlines()
    assert table[2] == "| 0 % | 90.00 | 20.0 | 91.00 | 21.0 | – | 3/3 |"
    assert table[-1] == "| 100 % | 94.00 ± 1.00 | 60.0 | 94.00 ± 1.00 | 60.0 | – | 3/3 |"
    with_rows = [dict(e, rows_saving=0.75 if e["arm"] == "none" else 0.0) for e in summary]
    assert study.fraction_table(with_rows, "t").splitlines()[2].endswith("| 25 % | 3/3 |")
    assert os.path.isfile(study.plot_fraction_oracle(summary, "t", str(tmp_path / "f.png")))
    with pytest.raises(ValueError, match="`mode` must be one of"):
        study.fraction_points(summary, "t", "noisy")


def test_the_depth_oracle_table_has_one_column_per_depth_and_its_criteria(tmp_path):
    def sweep(task, accuracies, std=0.01):
        arms = ["none", "fixed@10%:clean", "fixed@50%:clean", "full"]
        return [dict(_entry(arm, a, 10.0, std), task=task) for arm, a in zip(arms, accuracies)]

    # Deep: full loses to an earlier switch, so "within 0.3 pp of full" is met at 0 %; the near-best is not.
    summary = sweep("deep", [0.88, 0.89, 0.94, 0.88]) + sweep("shallow", [0.92, 0.93, 0.935, 0.94], std=0.006)
    members = [("deep", 8), ("shallow", 2)]
    table = study.depth_oracle_table(summary, members, "clean").splitlines()
    assert table[0] == "| switch at | 2 layers: accuracy % | 8 layers: accuracy % |"  # ordered by depth
    assert table[2] == "| 0 % | 92.00 ± 0.60 | 88.00 ± 1.00 |"
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[6:])}
    assert rows["best point"] == ["100 % (94.00)", "50 % (94.00)"]
    # shallow: 50 % (93.5) reaches 94.0 - 0.6; deep: only the best point reaches 94 - 1.
    assert rows["earliest within one std of the best"] == ["50 %", "50 %"]
    assert rows["earliest within 0.3 pp of full"] == ["–", "0 %"]  # degenerate where full loses
    assert rows["best − 0 % (pp)"] == ["+2.00", "+6.00"]
    assert study.near_best_fraction([]) is None
    assert study.depth_oracle_table(summary, members, "augmented") == ""  # only the shared end, full
    assert os.path.isfile(study.plot_depth_oracle(summary, "family", members, str(tmp_path / "d.png")))
    assert study.plot_depth_oracle(summary[:2], "family", members, str(tmp_path / "e.png")) is None


def test_the_oracle_switch_table_has_one_row_per_swept_task_and_both_meanings():
    def sweep(task, arms, accuracies, std=0.01):
        return [dict(_entry(arm, a, 10.0, std), task=task) for arm, a in zip(arms, accuracies)]

    both = ["none", "fixed@0%:augmented", "fixed@10%:clean", "fixed@50%:clean", "fixed@10%:augmented",
            "fixed@50%:augmented", "full"]
    summary = (
        sweep("a", both, [0.90, 0.91, 0.89, 0.935, 0.925, 0.94, 0.93])
        + sweep("b", ["none", "fixed@10%:clean", "fixed@50%:clean", "full"], [0.80, 0.85, 0.84, 0.86], std=0.02)
        + sweep("pilot", ["none", "full"], [0.70, 0.72])  # two points: not a sweep
    )
    table = study.oracle_switch_table(summary, ["a", "b", "pilot", "absent"]).splitlines()
    assert len(table) == 4  # header, rule, a, b
    assert table[0].startswith("| task | k=1 clean: best point (accuracy %) | k=1 clean: earliest within one std")
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]] for line in table[2:]}
    # a, clean: best 50 % (93.5); one std (1 pp) below it, 92.5, is first reached at 50 %, and so is 0.3 pp
    # below full (92.7). Augmented: best 50 % (94.0); 10 % (92.5) misses both 93.0 and 92.7.
    assert cells["a"] == ["50 % (93.50)", "50 %", "50 %", "50 % (94.00)", "50 %", "50 %"]
    # b, clean: best full (86); 2 pp below is 84: 10 % (85) reaches it; 0.3 pp of full: none. No augmented sweep.
    assert cells["b"] == ["100 % (86.00)", "10 %", "–", "–", "–", "–"]
    assert study.oracle_switch_table(summary, ["pilot"]) == ""


def test_the_depth_plot_needs_a_replayed_detector_on_its_groups(tmp_path):
    groups = {"vit": [("shallow", 2), ("deep", 8)]}
    replayed = [
        {"task": "shallow", "detector": "stability:layer_rotation", "replayed_epoch": 10.0},
        {"task": "deep", "detector": "stability:layer_rotation", "replayed_epoch": 12.0},
    ]
    assert os.path.isfile(study.plot_depth(replayed, groups, str(tmp_path / "depth.png")))
    assert study.plot_depth([], groups, str(tmp_path / "none.png")) is None  # oracle sweeps only
    assert study.plot_depth([dict(replayed[0], task="other")], groups, str(tmp_path / "other.png")) is None
    assert not os.path.exists(tmp_path / "none.png")


def test_augmentation_gain_pairs_the_arms_by_seed_against_a_naive_t_test():
    none, full = [0.70, 0.72, 0.71], [0.73, 0.72, 0.74]
    rows = [{"task": "t", "arm": "none", "seed": s, "status": "done", "accuracy": a} for s, a in enumerate(none)]
    rows += [{"task": "t", "arm": "full", "seed": s, "status": "done", "accuracy": a} for s, a in enumerate(full)]
    rows += [{"task": "t", "arm": "full", "seed": 3, "status": "pending", "accuracy": None}]
    gain = study.augmentation_gain(rows, "t")
    assert gain["gain_pp"] == pytest.approx(2.0)
    assert gain["per_seed"] == pytest.approx({0: 3.0, 1: 0.0, 2: 3.0})
    # Naive references: the paired t statistic from the differences, Welch's from the two samples.
    d = [3.0, 0.0, 3.0]
    mean_d, sd_d = statistics.fmean(d), statistics.stdev(d)
    t_paired = mean_d / (sd_d / math.sqrt(3))
    assert gain["paired_p"] == pytest.approx(2 * (1 - scipy_t.cdf(t_paired, df=2)))
    va, vb = statistics.variance([100 * a for a in full]) / 3, statistics.variance([100 * a for a in none]) / 3
    t_welch = 2.0 / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    assert gain["welch_p"] == pytest.approx(2 * (1 - scipy_t.cdf(t_welch, df=df)))
    assert study.augmentation_gain(rows[:4], "t") is None  # one finished full seed
    assert study.augmentation_gain(rows, "other") is None


def test_money_is_train_hours_at_the_accelerator_price_plus_energy_at_the_kwh_price():
    row = {"train_seconds": 1800.0, "train_energy_kwh": 0.5}
    money = study.money_columns(row, price_per_accelerator_hour=4.0, price_per_kwh=0.2)
    assert money == {"machine_cost_usd": 2.0, "electricity_cost_usd": pytest.approx(0.1), "cost_usd": pytest.approx(2.1)}
    assert study.money_columns({}, 4.0, 0.2)["cost_usd"] is None
    config = study.config_from_dict(minimal(price_per_kwh=0.3))
    assert config.price_per_kwh == 0.3 and config.price_per_accelerator_hour == study.DEFAULT_PRICE_PER_ACCELERATOR_HOUR
    with pytest.raises(ValueError, match="'price_per_kwh' must be a number >= 0"):
        study.config_from_dict(minimal(price_per_kwh=-1))


def test_wall_time_of_pending_runs_is_estimated_from_the_finished_ones(tmp_path):
    raw = minimal(output_dir=str(tmp_path), seeds=[0, 1])
    raw["tasks"]["digits"]["arms"] = ["none", "fixed@50%:clean", "fixed@2ep", "full", "stability:all"]
    runs = {run.key: run for run in study.plan_runs(study.config_from_dict(raw))}

    def finish(key, seconds):
        os.makedirs(runs[key].output_dir)
        with open(runs[key].results_path, "w", encoding="utf-8") as fh:
            json.dump({}, fh)
        with open(os.path.join(runs[key].output_dir, study.WALL_FILE), "w", encoding="utf-8") as fh:
            json.dump({"wall_seconds": seconds}, fh)

    finish("digits/none/seed0", 40.0)
    finish("digits/full/seed0", 100.0)
    finish("digits/fixed@50%:clean/seed0", 80.0)
    estimates = study.estimate_wall_seconds(list(runs.values()))
    assert estimates["digits/full/seed0"] == 100.0  # measured
    assert estimates["digits/fixed@50%:clean/seed1"] == 80.0  # the same arm's other seed
    assert estimates["digits/fixed@2ep/seed1"] == pytest.approx(40.0 + 0.5 * 60.0)  # 2 of 4 epochs: halfway
    assert estimates["digits/stability:all/seed0"] is None  # a detector's switch point is not known ahead
    # A fresh clone: no outputs, the committed rows' wall times are the basis.
    committed = {"digits/none/seed1": {"wall_seconds": "30.0"}, "digits/full/seed1": {"wall_seconds": ""}}
    estimates = study.estimate_wall_seconds(list(runs.values()), committed)
    assert estimates["digits/none/seed1"] == 30.0  # committed, not the mean of the none arm's outputs (40)
    assert estimates["digits/full/seed1"] == 100.0  # a committed row without a time: its arm's mean


# ---- replay -----------------------------------------------------------------------------------------


def _train(tmp_path, name, detector_args):
    args = CriticalPeriodArguments(
        **common_args(
            tmp_path / name,
            max_steps=-1,
            num_train_epochs=6,
            per_device_train_batch_size=8,
            optim="adamw_torch",
            learning_rate=0.01,
            dynamics_every_n_steps=1,
            dynamics_metrics=["gradient_confusion", "gradient_predictability", "layer_rotation"],
            **detector_args,
        )
    )
    collator = ImageAugmentationCollator(policy="crop_flip", copies=2, on_device=True, seed=0, value_range=(-3.0, 3.0))
    trainer = CriticalPeriodTrainer(
        model=tiny_vit(), args=args, train_dataset=image_dataset(48), data_collator=collator
    )
    trainer.train()
    return trainer


def test_replaying_a_detector_on_the_full_run_gives_the_step_it_switches_at(tmp_path):
    window = {"detector_window": "1ep", "detector_warmup": "1ep", "detector_threshold": 0.3, "detector_patience": 2}
    full = _train(tmp_path, "full", {"detector": "never"})
    records = read_dynamics(os.path.join(full.args.output_dir, "dynamics.jsonl"))
    task = study.Task("t", "run_vit", dict(window), [study.parse_arm("stability:layer_rotation")])
    kwargs = study.task_detector_kwargs(task, task.arms[0])
    assert kwargs["window"] == "1ep" and kwargs["metrics"] == ["layer_rotation"]
    name = kwargs.pop("name")
    replayed = study.replay_detector(records, steps_per_epoch=6, num_epochs=6.0, name=name, **kwargs)
    assert replayed is not None and replayed < 36

    real = _train(tmp_path, "real", {"detector": "stability", "detector_metrics": ["layer_rotation"], **window})
    assert real.critical_period["switch_step"] == replayed


# ---- a real study, end to end -----------------------------------------------------------------------


def test_a_study_runs_skips_what_is_done_keeps_going_after_a_failure_and_reports(tmp_path):
    common = {
        "dataset_name": "sklearn_digits",
        "train_val_split": 100,
        "max_train_samples": 64,
        "config_overrides": "patch_size=4,hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=16",
        "augment_policy": "affine",
        "augment_copies": 2,
        "num_train_epochs": 3,
        "per_device_train_batch_size": 32,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": True,
        "dynamics_every_n_steps": 1,
        "track_energy": False,
    }
    raw = {
        "output_dir": str(tmp_path / "study"),
        "seeds": [0],
        "threads": 1,
        "validation_patience": 1,
        "tasks": {
            "digits": {
                "recipe": "run_vit",
                "clean": {"augment_policy": "none"},
                "args": common,
                "arms": ["full", "validation"],
            },
            "broken": {"recipe": "run_vit", "args": {**common, "augment_policy": "sharpen"}, "arms": ["full"]},
        },
    }
    config = study.config_from_dict(raw)
    runs = study.plan_runs(config)
    messages = []
    with pytest.raises(ValueError, match="`jobs` must be an integer >= 1"):
        study.execute(config, runs, jobs=0)
    # Two at a time: the validation run waits for the full run of its seed, which runs beside it.
    statuses = study.execute(config, runs, jobs=2, echo=messages.append)
    assert statuses == {"digits/full/seed0": "done", "broken/full/seed0": "failed", "digits/validation/seed0": "done"}
    failure = json.loads((tmp_path / "study" / "runs" / "broken" / "full" / "seed0" / study.FAILURE_FILE).read_text())
    assert failure["returncode"] != 0 and "augment_policy" in failure["log_tail"]
    full_dir = tmp_path / "study" / "runs" / "digits" / "full" / "seed0"
    assert not list(full_dir.glob("*.safetensors"))  # keep_models is off: the weights are dropped
    history = study.eval_history(str(full_dir))
    assert [step for step, _, _ in history] == [2, 4, 6]  # one evaluation per epoch, for the validation rule
    validation_args = json.loads(
        (tmp_path / "study" / "runs" / "digits" / "validation" / "seed0" / study.ARGS_FILE).read_text()
    )
    expected = study.validation_switch_step(history, patience=1)
    assert validation_args.get("detector_switch_step") == expected or (
        expected is None and validation_args["detector"] == "never"
    )

    messages.clear()
    again = study.execute(config, runs, retry_failed=False, echo=messages.append)
    assert again == statuses and all("skipped" in message for message in messages)

    paths = study.report(config, runs)
    with open(paths["runs"], encoding="utf-8") as fh:
        rows = {(row["task"], row["arm"]): row for row in csv.DictReader(fh)}
    assert rows[("broken", "full")]["status"] == "failed" and rows[("broken", "full")]["accuracy"] == ""
    full_row = rows[("digits", "full")]
    assert 0.0 <= float(full_row["accuracy"]) <= 1.0
    assert float(full_row["in_training_eval_seconds"]) > 0
    assert float(full_row["train_seconds"]) == pytest.approx(
        float(full_row["train_runtime"]) - float(full_row["in_training_eval_seconds"])
    )
    assert int(full_row["training_rows"]) == 3 * 64 * 2
    summary = (tmp_path / "study" / "summary.md").read_text()
    assert "## digits" in summary and "Failed runs" in summary and "broken/full/seed0" in summary
    for plot in ("digits_pareto.png", "digits_metrics.png", "digits_arms.png"):
        assert os.path.isfile(tmp_path / "study" / "plots" / plot)
    # The full run's metric log is kept, gzipped, beside the tables: a detector can be replayed on it later.
    log = tmp_path / "study" / "dynamics" / "digits" / "seed0.jsonl.gz"
    assert study.read_dynamics_file(log) == read_dynamics(full_dir / "dynamics.jsonl")
    first = log.read_bytes()
    study.report(config, runs)
    assert log.read_bytes() == first  # no time stamp in the gzip header: nothing to commit when nothing changed
    assert float(full_row["cost_usd"]) > 0
    assert float(full_row["wall_seconds"]) > float(full_row["train_runtime"])  # the whole process: start-up too


# ---- the quick study: every kind of testbed, tiny ---------------------------------------------------

QUICK = os.path.join(REPO_ROOT, "recipes", "configs", "study_quick.yaml")
DATA = os.path.join(REPO_ROOT, "..", "shared", "data")


@pytest.mark.slow
def test_the_quick_study_runs_every_testbed_and_writes_the_sweep_tables(tmp_path):
    """study_quick.yaml end to end (a few minutes): fractions, both meanings of k = 1, ResNet, transfer, cutoff."""
    import sys

    sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))
    import run_study

    has_data = os.path.isdir(os.path.join(DATA, "cifar10")) and os.path.isdir(os.path.join(DATA, "sst2"))
    tasks = [] if has_data else ["--tasks", "digits"]  # the CIFAR-10 and SST-2 files are not in the repository
    argv = [QUICK, "--output_dir", str(tmp_path), "--data_dir", DATA, *tasks]
    assert run_study.main(argv) == 0
    with open(tmp_path / "runs.csv", encoding="utf-8") as fh:
        rows = {(row["task"], row["arm"]): row for row in csv.DictReader(fh)}
    expected = {"digits"} | ({"resnet", "pretrain", "finetune", "sst2_cutoff"} if has_data else set())
    assert {task for task, _ in rows} == expected
    assert all(row["status"] == "done" for row in rows.values()), rows
    clean = rows[("digits", "fixed@50%:clean")]
    assert int(clean["switch_step"]) == int(clean["optimizer_steps"]) // 2  # half the run
    assert int(clean["training_rows"]) < int(clean["rows_without_switch"])
    one = rows[("digits", "fixed@0%:augmented")]
    assert int(one["training_rows"]) == int(rows[("digits", "full")]["training_rows"]) // 2  # k = 2 vs 1
    summary = (tmp_path / "summary.md").read_text()
    assert "| 50 % |" in summary and "k=1 augmented: earliest switch within 0.3 pp of full" in summary
    assert os.path.isfile(tmp_path / "plots" / "digits_fractions.png")
    assert study.read_dynamics_file(tmp_path / "dynamics" / "digits" / "seed0.jsonl.gz")
    if has_data:
        assert float(rows[("finetune", "fixed@50%:augmented")]["accuracy"]) >= 0.0
        assert not list((tmp_path / "runs" / "finetune").rglob("*.safetensors"))  # only the pretraining is kept
        assert list((tmp_path / "runs" / "pretrain").rglob("*.safetensors"))


def test_a_fresh_clone_keeps_the_committed_rows_and_does_not_redo_their_runs(tmp_path):
    """The outputs of finished runs are not committed; their rows in runs.csv and the full runs' logs are."""
    import gzip

    raw = {
        "output_dir": str(tmp_path / "outputs"),
        "results_dir": str(tmp_path / "results"),
        "seeds": [0],
        "tasks": {"digits": {"recipe": "run_vit", "args": {"num_train_epochs": 4}, "arms": ["full", "detector:fraction"]}},
    }
    config = study.config_from_dict(raw)
    runs = study.plan_runs(config)
    committed = [
        {"task": "digits", "arm": "full", "seed": 0, "status": "done", "accuracy": 0.9, "optimizer_steps": 40,
         "num_epochs": 4.0, "train_seconds": 12.5, "energy_is_estimate": True},
        {"task": "digits", "arm": "detector:fraction", "seed": 0, "status": "done", "accuracy": 0.91,
         "switch_step": 8, "optimizer_steps": 40, "num_epochs": 4.0, "train_seconds": 7.0},
    ]
    os.makedirs(config.results_dir)
    study.write_csv(committed, os.path.join(config.results_dir, "runs.csv"))
    log = study.exported_dynamics_path(os.path.join(config.results_dir, "dynamics"), runs[0])
    os.makedirs(os.path.dirname(log))
    with gzip.open(log, "wt", encoding="utf-8") as fh:
        for step in range(2, 41, 2):
            fh.write(json.dumps({"step": step, "epoch": step / 10, "layer_rotation": {"value": 1e-3 * step}}) + "\n")

    assert [study.run_status(run) for run in runs] == ["pending", "pending"]  # no outputs here
    messages = []
    statuses = study.execute(config, runs, echo=messages.append)  # would fail at once if it ran a recipe
    assert statuses == {"digits/full/seed0": "done", "digits/detector:fraction/seed0": "done"}
    assert all("committed runs.csv" in message for message in messages)
    rows = study.collect(config, runs)
    assert [row["accuracy"] for row in rows] == [0.9, 0.91] and rows[0]["energy_is_estimate"] is True
    assert rows[0]["optimizer_steps"] == 40 and rows[0]["train_seconds"] == 12.5
    # The detector is replayed on the exported log: fraction 0.2 of 40 steps, and the arm's own step beside it.
    (replayed,) = study.replay_rows(config, runs)
    assert replayed["replayed_step"] == 8 and replayed["run_switch_step"] == 8 and replayed["steps_per_epoch"] == 10
    # Rewriting the tables keeps the committed rows, and counts the committed metric log.
    study.report(config, runs)
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert "The 1 finished full runs' dynamics.jsonl" in summary
    # The metric curves are drawn from the committed log, as they would be from the outputs.
    assert "![digits_metrics.png](plots/digits_metrics.png)" in summary
    assert (tmp_path / "results" / "plots" / "digits_metrics.png").stat().st_size > 0
    again = study.read_csv_rows(os.path.join(config.results_dir, "runs.csv"))
    assert [(row["arm"], row["status"], row["accuracy"]) for row in again] == [
        ("full", "done", 0.9),
        ("detector:fraction", "done", 0.91),
    ]


def test_a_committed_run_that_keeps_its_model_is_rerun_when_the_model_is_not_here(tmp_path, monkeypatch):
    """A pretraining's row may be committed, but a fresh clone lacks the model the fine-tuning arms read."""
    from pathlib import Path

    from hf_critical.experiments.study import runner

    raw = {
        "output_dir": str(tmp_path / "outputs"),
        "results_dir": str(tmp_path / "results"),
        "seeds": [0],
        "tasks": {
            "pretrain": {"recipe": "run_vit", "keep_models": True, "args": {}, "arms": ["fixed@0%:augmented"]},
            "digits": {"recipe": "run_vit", "args": {}, "arms": ["full"]},
        },
    }
    config = study.config_from_dict(raw)
    runs = study.plan_runs(config)
    os.makedirs(config.results_dir)
    study.write_csv(
        [{"task": run.task, "arm": run.arm.name, "seed": 0, "status": "done", "accuracy": 0.5} for run in runs],
        os.path.join(config.results_dir, "runs.csv"),
    )
    executed = []

    def fake_execute_one(run, args, keep, timeout, env, prefix, echo):
        executed.append((run.key, keep))
        os.makedirs(run.output_dir, exist_ok=True)
        (Path(run.output_dir) / "model.safetensors").write_bytes(b"")
        return "done"

    monkeypatch.setattr(runner, "_execute_one", fake_execute_one)
    messages = []
    # Everything committed: nothing left to run needs the model, so the pretraining is not redone either.
    assert study.execute(config, runs, echo=messages.append) == {
        "pretrain/fixed@0%:augmented/seed0": "done", "digits/full/seed0": "done"
    }
    assert executed == [] and all("committed runs.csv), skipped" in m for m in messages)
    # A run left to do (here the fine-tuning's row is not committed): the pretraining is rerun first.
    study.write_csv(
        [{"task": "pretrain", "arm": "fixed@0%:augmented", "seed": 0, "status": "done", "accuracy": 0.5}],
        os.path.join(config.results_dir, "runs.csv"),
    )
    messages.clear()
    statuses = study.execute(config, runs, echo=messages.append)
    assert statuses == {"pretrain/fixed@0%:augmented/seed0": "done", "digits/full/seed0": "done"}
    assert executed == [("pretrain/fixed@0%:augmented/seed0", True), ("digits/full/seed0", False)]
    assert "kept model is not here; rerunning" in messages[0]
    # With the model here, the committed pretraining is skipped like any other committed run (the fake
    # fine-tuning wrote no results, so it is still left to do).
    executed.clear()
    study.execute(config, runs, echo=messages.append)
    assert executed == [("digits/full/seed0", False)]
