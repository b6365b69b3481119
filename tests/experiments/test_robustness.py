"""Adversarial robustness: budgets, known properties of FGSM/PGD, worst-of-n text, determinism, the recipes' key."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO_ROOT, tiny_bert, tiny_tokenizer, tiny_vit

from hf_critical.experiments.model_card import model_card_section, summary_lines
from hf_critical.experiments.robustness import (
    RobustnessArguments,
    epsilon_label,
    image_robustness,
    parse_epsilons,
    perturb_texts,
    projected_gradient_attack,
    robustness_columns,
    select_examples,
    text_robustness,
)

MEAN, STD = [0.5], [0.5]
GOOD = ["the film is good", "a very good movie", "good plot", "the movie was good fun", "good"]
BAD = ["the film is bad", "a very bad movie", "bad plot", "the movie was bad", "bad"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def separable_images(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark (class 0, pixels in [0, 0.4]) and bright (class 1, [0.6, 1]) 8x8 images."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(rows) % 2
    pixels = torch.rand(rows, 1, 8, 8, generator=g) * 0.4 + 0.6 * labels.view(-1, 1, 1, 1)
    return pixels, labels


def normalised(model):
    return lambda x: model(pixel_values=(x - MEAN[0]) / STD[0]).logits


@pytest.fixture(scope="module")
def vit_and_data():
    model = tiny_vit(seed=0, num_labels=2)
    pixels, labels = separable_images(64, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = F.cross_entropy(normalised(model)(pixels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_pixels, test_labels = separable_images(40, seed=1)
    return model, test_pixels, test_labels


def sentiment_rows(count: int) -> tuple[list[str], list[int]]:
    texts = [(GOOD if i % 2 else BAD)[i // 2 % len(GOOD)] for i in range(count)]
    return texts, [i % 2 for i in range(count)]


@pytest.fixture(scope="module")
def bert_and_data():
    tokenizer = tiny_tokenizer()
    model = tiny_bert(seed=0, vocab_size=len(tokenizer))
    texts, labels = sentiment_rows(20)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    # Not to saturation: longer training saturates BERT's tanh pooler and masks the gradients (docs/robustness.md).
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):
        loss = model(**batch, labels=torch.tensor(labels)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, tokenizer, texts, labels


class ConstantClassifier(torch.nn.Module):
    """Ignores its input: the same logits for every example (class 1)."""

    def __init__(self, vocab_size: int = 100):
        super().__init__()
        self.embeddings = torch.nn.Embedding(vocab_size, 8)
        self.bias = torch.nn.Parameter(torch.tensor([0.0, 1.0]))

    def get_input_embeddings(self):
        return self.embeddings

    def forward(self, pixel_values=None, input_ids=None, inputs_embeds=None, **kwargs):
        rows = next(t for t in (pixel_values, input_ids, inputs_embeds) if t is not None).shape[0]
        return type("Output", (), {"logits": self.bias.expand(rows, 2)})()


def without_seconds(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "seconds"}


# ---- images ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps, random_start", [(1, False), (7, True)])
def test_linf_attacks_stay_in_the_ball_and_the_pixel_range(vit_and_data, steps, random_start):
    model, pixels, labels = vit_and_data
    eps = 8 / 255
    noise = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1 if random_start else None
    adversarial, _ = projected_gradient_attack(
        normalised(model), pixels, labels, epsilon=eps, steps=steps, step_size=2.5 * eps / steps,
        random_start=noise, lower=0.0, upper=1.0,
    )  # fmt: skip
    assert (adversarial - pixels).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    assert (adversarial != pixels).any()
    edge = torch.zeros(2, 1, 8, 8)  # black images: every negative step is clipped away
    adversarial, _ = projected_gradient_attack(
        normalised(model), edge, torch.tensor([1, 1]), epsilon=0.1, steps=steps, step_size=0.1, lower=0.0, upper=1.0
    )
    assert adversarial.min() >= 0.0 and adversarial.max() <= 0.1 + 1e-6


def test_fgsm_and_pgd_raise_the_loss(vit_and_data):
    model, pixels, labels = vit_and_data
    forward = normalised(model)
    eps = 8 / 255
    with torch.no_grad():
        clean_loss = F.cross_entropy(forward(pixels), labels)
    losses = {}
    for name, kwargs in {
        "fgsm": dict(steps=1, step_size=eps),
        "pgd": dict(steps=10, step_size=2.5 * eps / 10),
    }.items():
        adversarial, _ = projected_gradient_attack(
            forward, pixels, labels, epsilon=eps, lower=0.0, upper=1.0, **kwargs
        )
        with torch.no_grad():
            losses[name] = F.cross_entropy(forward(adversarial), labels)
    assert losses["fgsm"] > clean_loss and losses["pgd"] > clean_loss


def test_pgd_at_a_large_epsilon_breaks_an_undefended_model(vit_and_data):
    model, pixels, labels = vit_and_data
    results = image_robustness(model, pixels, labels, mean=MEAN, std=STD, epsilons=[2 / 255, 8 / 255, 0.5], steps=10)
    attacks = results["attacks"]
    assert results["clean_accuracy"] >= 0.95 and results["num_examples"] == 40
    assert list(attacks) == ["fgsm_2/255", "fgsm_8/255", "fgsm_0.5", "pgd10_2/255", "pgd10_8/255", "pgd10_0.5"]
    assert attacks["pgd10_0.5"]["accuracy"] <= 0.05
    assert all(0.0 <= entry["accuracy"] <= results["clean_accuracy"] for entry in attacks.values())
    assert attacks["pgd10_2/255"]["accuracy"] >= attacks["pgd10_8/255"]["accuracy"] >= attacks["pgd10_0.5"]["accuracy"]
    assert attacks["pgd10_8/255"] | {"accuracy": None} == {
        "accuracy": None, "kind": "pgd", "epsilon": 8 / 255, "steps": 10, "step_size": 2.5 * 8 / 255 / 10,
        "norm": "linf", "random_start": True, "space": "pixels in [0, 1], before normalisation",
    }  # fmt: skip
    assert attacks["fgsm_8/255"]["steps"] == 1 and attacks["fgsm_8/255"]["random_start"] is False


def test_image_model_that_ignores_its_input_is_unaffected(vit_and_data):
    _, pixels, labels = vit_and_data
    results = image_robustness(ConstantClassifier(), pixels, labels, epsilons=[8 / 255, 0.5], steps=3)
    assert results["clean_accuracy"] == 0.5
    assert {entry["accuracy"] for entry in results["attacks"].values()} == {0.5}


def test_image_robustness_is_deterministic_and_independent_of_the_batch_size(vit_and_data):
    model, pixels, labels = vit_and_data
    model.train()
    model.zero_grad(set_to_none=True)
    kwargs = dict(mean=MEAN, std=STD, epsilons=[0.1], steps=3, seed=5)
    first = image_robustness(model, pixels, labels, batch_size=40, **kwargs)
    assert model.training and all(p.requires_grad for p in model.parameters())  # mode and flags restored
    assert all(p.grad is None for p in model.parameters())
    again = image_robustness(model, pixels, labels, batch_size=40, **kwargs)
    smaller = image_robustness(model, pixels, labels, batch_size=7, **kwargs)
    assert without_seconds(first) == without_seconds(again) == without_seconds(smaller)
    assert first["seed"] == 5 and first["seconds"] > 0


# ---- text -----------------------------------------------------------------------------------------


def test_char_perturbations_stay_within_the_edit_budget():
    texts = ["the film was very good and really funny", "plot", "", "a nice movie"]
    copies = perturb_texts(texts, "char", candidates=6, edits=2, seed=0)
    assert [len(c) for c in copies] == [6] * len(texts)
    for text, candidates in zip(texts, copies):
        for candidate in candidates:
            assert len(candidate) == len(text)  # substitutions only
            changed_words = [(a, b) for a, b in zip(text.split(), candidate.split()) if a != b]
            assert len(changed_words) <= 2
            assert all(sum(x != y for x, y in zip(a, b)) == 1 for a, b in changed_words)
    assert any(c != texts[0] for c in copies[0]) and copies[2] == [""] * 6


def test_word_perturbations_stay_within_the_edit_budget():
    text = "the film was very good and really funny"
    words = text.split()
    copies = perturb_texts([text], "word", candidates=6, edits=2, seed=1)[0]
    for j, candidate in enumerate(copies):
        out = candidate.lower().split()
        if j % 2 == 0:  # swaps: the same words, at most 2 x 2 positions moved
            assert Counter(out) == Counter(words)
            assert sum(a != b for a, b in zip(words, out)) <= 4
        else:  # deletions: at most 2 words gone, the rest in order
            assert len(words) - 2 <= len(out) < len(words)
            assert not Counter(out) - Counter(words)
    assert len(set(copies)) > 1


def test_text_perturbations_are_seeded_and_leave_the_global_rngs_alone():
    texts = ["the film was very good and really funny", "a very bad movie with a silly plot"]
    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    first = perturb_texts(texts, "char", candidates=4, seed=3)
    assert (random.random(), np.random.rand()) == before
    assert perturb_texts(texts, "char", candidates=4, seed=3) == first
    assert perturb_texts(texts, "char", candidates=4, seed=4) != first
    assert perturb_texts(texts[1:], "char", candidates=4, seed=3, offset=1) == first[1:]  # per example


def test_embedding_attacks_respect_the_per_token_budget_and_skip_special_tokens(bert_and_data):
    model, tokenizer, texts, labels = bert_and_data
    encoded = tokenizer(texts[:6], padding=True, return_special_tokens_mask=True, return_tensors="pt")
    movable = ((1 - encoded["special_tokens_mask"]) * encoded["attention_mask"]).unsqueeze(-1)
    embeds = model.get_input_embeddings()(encoded["input_ids"]).detach()
    eps = 0.05
    noise = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(0))
    noise = noise / noise.norm(dim=-1, keepdim=True)

    def forward(x):
        return model(inputs_embeds=x, attention_mask=encoded["attention_mask"]).logits

    for steps, start in ((1, None), (5, noise)):
        adversarial, _ = projected_gradient_attack(
            forward, embeds, torch.tensor(labels[:6]), epsilon=eps, steps=steps, step_size=eps,
            norm="l2_per_token", mask=movable, random_start=start,
        )  # fmt: skip
        delta = adversarial - embeds
        assert delta.norm(dim=-1).max() <= eps + 1e-6
        assert torch.equal(adversarial * (1 - movable), embeds * (1 - movable))  # [CLS], [SEP], padding unchanged
        assert (delta.norm(dim=-1) > 0).sum() == movable.sum()


def test_text_robustness_on_a_trained_model(bert_and_data):
    model, tokenizer, texts, labels = bert_and_data
    results = text_robustness(
        model, tokenizer, texts, labels, epsilons=[0.05, 5.0], steps=5, candidates=3, edits=1, batch_size=8
    )
    attacks = results["attacks"]
    assert list(attacks) == [
        "char_worst_of_3", "word_worst_of_3", "embedding_fgsm_0.05", "embedding_fgsm_5",
        "embedding_pgd5_0.05", "embedding_pgd5_5",
    ]  # fmt: skip
    assert results["clean_accuracy"] == 1.0 and results["num_examples"] == 20
    assert all(0.0 <= entry["accuracy"] <= results["clean_accuracy"] for entry in attacks.values())
    # five times the typical embedding norm per token: "good" can become "bad"
    assert attacks["embedding_pgd5_5"]["accuracy"] <= 0.1
    assert attacks["embedding_pgd5_0.05"]["accuracy"] >= attacks["embedding_pgd5_5"]["accuracy"]
    entry = attacks["embedding_pgd5_0.05"]
    assert entry["kind"] == "pgd" and entry["norm"] == "l2_per_token" and entry["steps"] == 5
    assert entry["epsilon_absolute"] == pytest.approx(0.05 * entry["embedding_scale"])
    scale = model.get_input_embeddings().weight.detach().norm(dim=-1).mean()
    assert entry["embedding_scale"] == pytest.approx(float(scale))
    assert attacks["char_worst_of_3"] | {"accuracy": None} == {
        "accuracy": None, "kind": "worst_of_n", "epsilon": None, "steps": None, "candidates": 3, "edits": 1,
        "augmenter": "nlpaug KeyboardAug (one typo per word)",
    }  # fmt: skip
    pairs = text_robustness(model, tokenizer, list(zip(texts, texts)), labels, attacks=["word", "embedding_fgsm"],
                            epsilons=[0.05], candidates=2, batch_size=8)  # fmt: skip
    assert set(pairs["attacks"]) == {"word_worst_of_2", "embedding_fgsm_0.05"}


def test_text_model_that_ignores_its_input_is_unaffected():
    tokenizer = tiny_tokenizer()
    texts, labels = sentiment_rows(8)
    results = text_robustness(ConstantClassifier(len(tokenizer)), tokenizer, texts, labels, epsilons=[1.0], steps=2,
                              candidates=2)  # fmt: skip
    assert results["clean_accuracy"] == 0.5
    assert {entry["accuracy"] for entry in results["attacks"].values()} == {0.5}


def test_text_robustness_is_deterministic(bert_and_data):
    model, tokenizer, texts, labels = bert_and_data
    kwargs = dict(epsilons=[0.5], steps=2, candidates=2, seed=9)
    first = text_robustness(model, tokenizer, texts, labels, batch_size=20, **kwargs)
    assert without_seconds(first) == without_seconds(
        text_robustness(model, tokenizer, texts, labels, batch_size=6, **kwargs)
    )


# ---- arguments, subset, columns, reporting -----------------------------------------------------------


def test_parse_epsilons_and_labels():
    assert parse_epsilons("2/255, 8/255") == (2 / 255, 8 / 255)
    assert parse_epsilons([0.1, "1/2"]) == (0.1, 0.5)
    labels = [epsilon_label(e) for e in (2 / 255, 8 / 255, 0.1, 0.0, 5.0, 0.2, 1 / 7)]
    assert labels == ["2/255", "8/255", "0.1", "0", "5", "0.2", "0.142857"]


def test_bad_arguments_are_rejected_with_the_argument_named(vit_and_data, bert_and_data):
    model, pixels, labels = vit_and_data
    with pytest.raises(ValueError, match="`epsilons` must hold numbers >= 0"):
        image_robustness(model, pixels, labels, epsilons=[-0.1])
    with pytest.raises(ValueError, match="`steps` must be a whole number >= 1"):
        image_robustness(model, pixels, labels, steps=0)
    with pytest.raises(ValueError, match=r"`attacks` must name attacks from \['fgsm', 'pgd'\]"):
        image_robustness(model, pixels, labels, attacks=["cw"])
    with pytest.raises(ValueError, match=r"`pixels` must lie in \[0, 1\]"):
        image_robustness(model, pixels * 2 - 1, labels)
    with pytest.raises(ValueError, match="`epsilon` must be >= 0"):
        projected_gradient_attack(normalised(model), pixels, labels, epsilon=-1.0, steps=1, step_size=0.1)
    bert, tokenizer, texts, text_labels = bert_and_data
    with pytest.raises(ValueError, match="`candidates` must be a whole number >= 1"):
        text_robustness(bert, tokenizer, texts, text_labels, candidates=0)
    with pytest.raises(ValueError, match="`edits` must be a whole number >= 1"):
        perturb_texts(texts, "char", edits=0)
    with pytest.raises(ValueError, match="`examples` must be a whole number >= 1"):
        select_examples(10, 0, seed=0)
    for field, value, message in [
        ("robustness_epsilons", "2/255,-1", "`robustness_epsilons` must hold numbers >= 0"),
        ("robustness_epsilons", "big", "`robustness_epsilons` must hold numbers or fractions"),
        ("robustness_steps", 0, "`robustness_steps` must be a whole number >= 1"),
        ("robustness_candidates", 0, "`robustness_candidates` must be a whole number >= 1"),
        ("robustness_examples", 0, "`robustness_examples` must be a whole number >= 1"),
        ("robustness_attacks", "fgsm,deepfool", "`robustness_attacks` must name attacks from"),
    ]:
        with pytest.raises(ValueError, match=message):
            RobustnessArguments(**{field: value})
    with pytest.raises(ValueError, match=r"`robustness_attacks` must name attacks from \['fgsm', 'pgd'\]"):
        RobustnessArguments(robustness_attacks="char").attacks_for("image")
    arguments = RobustnessArguments()
    assert arguments.attacks_for("image") == ("fgsm", "pgd") and arguments.epsilons_for("image") == (2 / 255, 8 / 255)
    assert arguments.epsilons_for("text") == (0.1, 0.5)


def test_select_examples_is_a_seeded_prefix():
    first = select_examples(100, 10, seed=0)
    assert first == select_examples(100, 10, seed=0) and len(set(first)) == 10
    assert select_examples(100, 20, seed=0)[:10] == first
    assert select_examples(100, 10, seed=1) != first
    assert sorted(select_examples(7, 50, seed=0)) == list(range(7))


ROBUSTNESS = {
    "num_examples": 40, "seed": 0, "clean_accuracy": 0.9, "seconds": 1.5,
    "attacks": {
        "fgsm_8/255": {"accuracy": 0.5, "kind": "fgsm", "epsilon": 8 / 255, "steps": 1},
        "pgd10_8/255": {"accuracy": 0.25, "kind": "pgd", "epsilon": 8 / 255, "steps": 10},
    },
}  # fmt: skip


def test_robustness_columns():
    assert robustness_columns({"robustness": ROBUSTNESS}) == {"robust/fgsm_8/255": 0.5, "robust/pgd10_8/255": 0.25}
    assert robustness_columns({}) == {} and robustness_columns({"robustness": None}) == {}


def test_model_card_and_summary_show_the_robustness_table():
    results = {
        "measured": {"copies_before_switch": 2, "train_rows": 10, "train_seconds": 1.0, "optimizer_steps": 2,
                     "train_energy_kwh": None, "train_emissions_kg": None},
        "derived": {"train_rows_without_switch": 20, "train_rows_saved_fraction": 0.5,
                    "train_seconds_without_switch_estimate": None, "train_seconds_saved_fraction_estimate": None,
                    "train_energy_kwh_without_switch_estimate": None, "train_energy_saved_fraction_estimate": None,
                    "cost": {"currency": "USD", "with_switch": {"machine_cost": None, "electricity_cost": None},
                             "without_switch_estimate": {"machine_cost": None, "electricity_cost": None}}},
        "critical_period": None, "detector": "never", "metrics": {"eval": {}}, "energy": {},
    }  # fmt: skip
    assert "Robustness" not in model_card_section(results)
    card = model_card_section(results | {"robustness": ROBUSTNESS})
    assert "| clean | 0.9000 |" in card and "| pgd10_8/255 | 0.2500 | pgd | 8/255 | 10 |" in card
    assert "40 evaluation examples" in card
    lines = summary_lines(results | {"robustness": ROBUSTNESS})
    assert any(line.startswith("robust pgd10_8/255") and "0.2500" in line for line in lines)
    assert any("clean 0.9000 on 40 examples" in line for line in lines)


# ---- the recipes ----------------------------------------------------------------------------------------


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", os.path.join(REPO_ROOT, "recipes", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


COMMON = [
    "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true", "--seed", "0",
    "--track_energy", "false", "--robustness_eval", "true", "--robustness_examples", "12", "--robustness_steps", "2",
]  # fmt: skip


def read_results(output_dir) -> dict:
    with open(os.path.join(output_dir, "critical_period_results.json"), encoding="utf-8") as f:
        return json.load(f)


def check_shape(robustness: dict, names: list[str], examples: int):
    assert set(robustness) == {"num_examples", "seed", "clean_accuracy", "attacks", "seconds"}
    assert robustness["num_examples"] == examples and robustness["seed"] == 0 and robustness["seconds"] > 0
    assert list(robustness["attacks"]) == names
    for entry in robustness["attacks"].values():
        assert 0.0 <= entry["accuracy"] <= robustness["clean_accuracy"] <= 1.0
        assert entry["kind"] in ("fgsm", "pgd", "worst_of_n")
        assert entry["epsilon"] is None or isinstance(entry["epsilon"], float)
        assert entry["steps"] is None or isinstance(entry["steps"], int)


def test_run_vit_writes_robustness(tmp_path, capsys):
    out = tmp_path / "digits"
    argv = [
        "--dataset_name", "sklearn_digits", "--train_val_split", "1737", "--max_eval_samples", "30",
        "--config_overrides", "patch_size=4,hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=24",
        "--augment_policy", "affine", "--augment_copies", "2", "--max_steps", "2", "--per_device_train_batch_size", "30",
        "--dynamics_every_n_steps", "1", "--output_dir", str(out), *COMMON,
    ]  # fmt: skip
    results = load_recipe("run_vit").main(argv)
    written = read_results(out)
    assert written["robustness"] == json.loads(json.dumps(results["robustness"]))
    check_shape(written["robustness"], ["fgsm_2/255", "fgsm_8/255", "pgd2_2/255", "pgd2_8/255"], 12)
    assert "robust/pgd2_8/255" in robustness_columns(written)
    assert "| pgd2_8/255 |" in (out / "README.md").read_text(encoding="utf-8")
    assert "robust pgd2_8/255" in capsys.readouterr().out


def test_run_glue_writes_robustness(tmp_path):
    folder = tmp_path / "bert"
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(folder)
    tiny_bert(vocab_size=len(tokenizer)).save_pretrained(folder)
    texts, labels = sentiment_rows(24)
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)), encoding="utf-8")
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", str(folder), "--task_name", "sst2", "--train_file", str(data),
        "--validation_file", str(data), "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--augment_copies", "2", "--dynamics_every_n_steps", "1",
        "--robustness_candidates", "2", "--robustness_epsilons", "0.2", *COMMON,
    ]  # fmt: skip
    load_recipe("run_glue").main(argv)
    robustness = read_results(out)["robustness"]
    check_shape(robustness, ["char_worst_of_2", "word_worst_of_2", "embedding_fgsm_0.2", "embedding_pgd2_0.2"], 12)
    with pytest.raises(ValueError, match="`robustness_eval` needs a classification task"):
        load_recipe("run_glue").main([*argv[:3], "stsb", *argv[4:]])
    with pytest.raises(ValueError, match=r"`robustness_attacks` must name attacks from \['char'"):
        load_recipe("run_glue").main([*argv, "--robustness_attacks", "pgd"])
