"""Adversarial robustness of a trained classifier: accuracy under bounded attacks, seeded and of bounded cost.

Images (pixel space, before the model's normalisation):

* ``fgsm_<eps>``: one signed-gradient step of size ε (Goodfellow et al. 2015), L∞ ball of radius ε.
* ``pgd<steps>_<eps>``: projected gradient descent in the same ball (Madry et al. 2018): a random
  start drawn uniformly in the ball, ``steps`` signed steps of 2.5·ε/steps, projection onto the
  ball and onto the valid pixel range [0, 1] after each.

Text:

* ``char_worst_of_<n>`` / ``word_worst_of_<n>``: n perturbed copies of each sentence from nlpaug
  (keyboard typos; adjacent word swaps or word deletions), each within a budget of ``edits``
  changes per sentence; a sentence counts as robust only if the model is right on the clean text
  and on all n copies.
* ``embedding_fgsm_<eps>`` / ``embedding_pgd<steps>_<eps>``: FGSM / PGD on the input embeddings
  (Miyato et al. 2017), an L2 ball per token of radius ε·s, s the mean L2 norm of the rows of the
  word-embedding matrix; padding and special tokens ([CLS], [SEP], ...) are not perturbed.

Every attack counts an example as robust only if the model classifies it correctly both clean and
under the attack (so robust accuracy <= clean accuracy), and a PGD example as broken as soon as one
iterate fools the model. The model runs in eval mode (no dropout) and its parameters receive no
gradient. Random starts and nlpaug draws are seeded per example, so the same model, examples and
seed give the same robust accuracy whatever the batch size. The evaluated examples are the first
``examples`` of the data set after a shuffle with ``seed`` (`select_examples`). See
``docs/robustness.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..extras import require

__all__ = [
    "DEFAULT_IMAGE_EPSILONS",
    "DEFAULT_TEXT_EPSILONS",
    "IMAGE_ATTACKS",
    "TEXT_ATTACKS",
    "RobustnessArguments",
    "attack_accuracy",
    "epsilon_label",
    "image_robustness",
    "parse_epsilons",
    "perturb_texts",
    "projected_gradient_attack",
    "robustness_columns",
    "robustness_for_images",
    "robustness_for_text",
    "select_examples",
    "text_robustness",
]

IMAGE_ATTACKS = ("fgsm", "pgd")
TEXT_ATTACKS = ("char", "word", "embedding_fgsm", "embedding_pgd")
DEFAULT_IMAGE_EPSILONS = "2/255,8/255"
DEFAULT_TEXT_EPSILONS = "0.1,0.5"
#: PGD step size as a multiple of ε / steps (Madry et al. use 2.5 ε / steps).
PGD_STEP_FACTOR = 2.5


# ---- arguments ----------------------------------------------------------------------------------


def parse_epsilons(value: str | float | Sequence[str | float], name: str = "robustness_epsilons") -> tuple[float, ...]:
    """Budgets from ``"2/255,8/255"``, ``"0.1"``, a number or a list of either; each must be >= 0."""
    items = value.split(",") if isinstance(value, str) else (value if isinstance(value, Sequence) else [value])
    out = []
    for item in items:
        try:
            number = float(Fraction(item.strip())) if isinstance(item, str) else float(item)
        except (ValueError, ZeroDivisionError, TypeError):
            raise ValueError(f"`{name}` must hold numbers or fractions such as 2/255, got {item!r}") from None
        if isinstance(item, bool) or not math.isfinite(number) or number < 0:
            raise ValueError(f"`{name}` must hold numbers >= 0, got {item!r}")
        out.append(number)
    if not out:
        raise ValueError(f"`{name}` must hold at least one budget, got {value!r}")
    return tuple(dict.fromkeys(out))


def epsilon_label(epsilon: float) -> str:
    """The shortest decimal when it has at most 4 decimals (``0.1``, ``5``), else ``k/255`` (``2/255``) or ``%g``."""
    decimal = repr(float(epsilon))
    if "e" not in decimal and len(decimal.split(".")[1]) <= 4:
        return f"{epsilon:g}"
    scaled = epsilon * 255
    if abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{epsilon:g}"


def _names(value: str | None, allowed: Sequence[str], name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"`{name}` must name attacks from {list(allowed)}, got {value!r}")
    return names


def _check_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be a whole number >= {minimum}, got {value!r}")
    return value


@dataclass
class RobustnessArguments:
    """Whether and how a recipe measures adversarial robustness after its final evaluation."""

    robustness_eval: bool = field(
        default=False,
        metadata={
            "help": "After training and evaluation, measure accuracy under adversarial attacks (docs/robustness.md)."
        },
    )
    robustness_examples: int = field(
        default=500,
        metadata={"help": "Attack the first N evaluation examples after a shuffle with `robustness_seed`."},
    )
    robustness_seed: int = field(
        default=0, metadata={"help": "Seed of the example subset, the PGD random starts and the text perturbations."}
    )
    robustness_attacks: str | None = field(
        default=None,
        metadata={
            "help": f"Comma-separated attacks to run; default all. Images: {', '.join(IMAGE_ATTACKS)}; "
            f"text: {', '.join(TEXT_ATTACKS)}."
        },
    )
    robustness_epsilons: str | None = field(
        default=None,
        metadata={
            "help": f"Comma-separated budgets (fractions allowed). Images: L-inf in [0, 1] pixel units (default "
            f"{DEFAULT_IMAGE_EPSILONS}); text embeddings: per-token L2 relative to the mean embedding norm "
            f"(default {DEFAULT_TEXT_EPSILONS})."
        },
    )
    robustness_steps: int = field(default=10, metadata={"help": "PGD steps (images and text embeddings)."})
    robustness_candidates: int = field(
        default=8, metadata={"help": "Text: perturbed copies per sentence in the worst-of-n attacks."}
    )
    robustness_edits: int = field(
        default=2, metadata={"help": "Text: edits per sentence in the worst-of-n attacks (characters or words)."}
    )
    robustness_batch_size: int = field(default=64, metadata={"help": "Examples per forward/backward pass."})

    def __post_init__(self):
        if not isinstance(self.robustness_eval, bool):
            raise ValueError(f"`robustness_eval` must be True or False, got {self.robustness_eval!r}")
        for name in ("robustness_examples", "robustness_steps", "robustness_candidates", "robustness_edits",
                     "robustness_batch_size"):  # fmt: skip
            _check_int(getattr(self, name), name)
        _check_int(self.robustness_seed, "robustness_seed", minimum=0)
        _names(self.robustness_attacks, IMAGE_ATTACKS + TEXT_ATTACKS, "robustness_attacks")
        if self.robustness_epsilons is not None:
            parse_epsilons(self.robustness_epsilons)

    def attacks_for(self, modality: str) -> tuple[str, ...]:
        """The attacks to run on ``"image"`` or ``"text"`` models; a ValueError for ones of the other modality."""
        allowed = IMAGE_ATTACKS if modality == "image" else TEXT_ATTACKS
        names = _names(self.robustness_attacks, allowed, "robustness_attacks")
        return allowed if names is None else names

    def epsilons_for(self, modality: str) -> tuple[float, ...]:
        default = DEFAULT_IMAGE_EPSILONS if modality == "image" else DEFAULT_TEXT_EPSILONS
        return parse_epsilons(default if self.robustness_epsilons is None else self.robustness_epsilons)


# ---- the subset -----------------------------------------------------------------------------------


def select_examples(num_rows: int, examples: int, seed: int) -> list[int]:
    """Row indices of the evaluated subset: the first ``examples`` of a permutation drawn with ``seed``.

    ``numpy.random.default_rng(seed).permutation(num_rows)``: the same rows for the same data set
    size and seed, in every arm of a study.
    """
    _check_int(examples, "examples")
    _check_int(num_rows, "num_rows")
    return [int(i) for i in np.random.default_rng(seed).permutation(num_rows)[:examples]]


# ---- gradient attacks ------------------------------------------------------------------------------


def _per_token_norm(x: torch.Tensor) -> torch.Tensor:
    return x.norm(dim=-1, keepdim=True)


def projected_gradient_attack(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    epsilon: float,
    steps: int,
    step_size: float,
    norm: str = "linf",
    random_start: torch.Tensor | None = None,
    lower: float | None = None,
    upper: float | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise the cross-entropy of ``forward(x)`` over x in the ε-ball around ``inputs``; FGSM is one step.

    Args:
        forward: inputs -> logits.
        epsilon: the radius: of the L∞ ball (``norm="linf"``), or of an L2 ball per vector along
            the last dimension (``norm="l2_per_token"``, e.g. one per token embedding).
        steps, step_size: ascent steps (the signed gradient for L∞, the per-token normalised
            gradient for L2), each followed by the projection.
        random_start: None, or a tensor shaped like ``inputs`` in the unit ball of ``norm``
            (uniform in [-1, 1] for L∞), scaled by ε to give the starting point.
        lower, upper: the valid range of the inputs (pixels), enforced after every step.
        mask: broadcastable to ``inputs``; 0 where nothing may change (padding, special tokens).

    Returns:
        (adversarial inputs, fooled): for each example, the first iterate the model misclassified,
        else the last one; ``fooled`` is True where some iterate was misclassified.
    """
    if not epsilon >= 0:
        raise ValueError(f"`epsilon` must be >= 0, got {epsilon!r}")
    _check_int(steps, "steps")
    if not step_size >= 0:
        raise ValueError(f"`step_size` must be >= 0, got {step_size!r}")
    if norm not in ("linf", "l2_per_token"):
        raise ValueError(f"`norm` must be 'linf' or 'l2_per_token', got {norm!r}")
    original = inputs.detach()
    keep = torch.ones_like(original) if mask is None else mask.to(original.dtype).expand_as(original)

    def project(x: torch.Tensor) -> torch.Tensor:
        delta = (x - original) * keep
        if norm == "linf":
            delta = delta.clamp(-epsilon, epsilon)
        else:
            delta = delta * torch.clamp(epsilon / _per_token_norm(delta).clamp_min(1e-12), max=1.0)
        x = original + delta
        if lower is not None or upper is not None:
            x = x.clamp(lower, upper)
        return x

    x = original.clone() if random_start is None else project(original + epsilon * random_start.to(original))
    best = x.clone()
    fooled = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    for step in range(steps + 1):
        x = x.detach().requires_grad_(step < steps)
        with torch.set_grad_enabled(step < steps):
            logits = forward(x)
        wrong = logits.argmax(-1) != labels
        newly = wrong & ~fooled
        best[newly] = x.detach()[newly]
        fooled |= wrong
        if step == steps:
            break
        loss = F.cross_entropy(logits.double(), labels, reduction="sum")
        grad = torch.autograd.grad(loss, x, allow_unused=True)[0] if loss.requires_grad else None
        if grad is None:  # the model ignores its input
            grad = torch.zeros_like(x)
        if norm == "linf":
            direction = grad.sign()
        else:
            direction = grad / _per_token_norm(grad).clamp_min(1e-12)
        x = project(x.detach() + step_size * direction * keep)
    best[~fooled] = x.detach()[~fooled]
    return best, fooled


def _uniform_linf(seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Example ``index``'s random start, uniform in [-1, 1]: the same whatever the batch it falls in."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
    return torch.rand(shape, generator=generator) * 2 - 1


def _uniform_l2_per_token(seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Per token, a random direction with a radius uniform in [0, 1]."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
    direction = torch.randn(shape, generator=generator)
    radius = torch.rand((*shape[:-1], 1), generator=generator)
    return direction / _per_token_norm(direction).clamp_min(1e-12) * radius


def attack_accuracy(clean_correct: torch.Tensor, fooled: torch.Tensor) -> float:
    """Robust accuracy: right on the clean example and not fooled by the attack."""
    return float((clean_correct & ~fooled).double().mean())


class _EvalMode:
    """Eval mode and no parameter gradients for the duration; restores both."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.training = self.model.training
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.eval()
        for p, _ in self.flags:
            p.requires_grad_(False)
        return self.model

    def __exit__(self, *exc):
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.model.train(self.training)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---- images -------------------------------------------------------------------------------------------


def image_robustness(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    attacks: Sequence[str] = IMAGE_ATTACKS,
    epsilons: Sequence[float] = (2 / 255, 8 / 255),
    steps: int = 10,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Accuracy of an image classifier under FGSM and PGD-L∞ in pixel space.

    Args:
        model: takes ``pixel_values`` (normalised) and returns ``.logits``.
        pixels: [N, C, H, W] images in [0, 1], before normalisation; the attacks perturb these,
            clip them to [0, 1], then normalise with ``mean`` / ``std`` (None: none).
        labels: [N] class indices.
        attacks: from ``("fgsm", "pgd")``; epsilons: L∞ budgets in pixel units; steps: PGD steps
            (step size 2.5·ε/steps, uniform random start in the ball).
        seed: the random starts (per example: independent of ``batch_size``).

    Returns:
        ``{"num_examples", "seed", "clean_accuracy", "attacks": {name: {...}}, "seconds"}``.
    """
    attacks = _check_attacks(attacks, IMAGE_ATTACKS)
    epsilons = parse_epsilons(list(epsilons), "epsilons")
    _check_int(steps, "steps")
    _check_int(batch_size, "batch_size")
    if pixels.dim() != 4 or len(pixels) != len(labels) or len(pixels) == 0:
        raise ValueError(f"`pixels` must be [N, C, H, W] with N = len(labels) >= 1, got {tuple(pixels.shape)}")
    if pixels.min() < 0 or pixels.max() > 1:
        raise ValueError(
            f"`pixels` must lie in [0, 1] (before normalisation), got [{pixels.min():.3g}, {pixels.max():.3g}]"
        )
    start = time.perf_counter()
    device = _device(model)
    channels = pixels.shape[1]
    shift = torch.tensor(mean if mean is not None else [0.0] * channels, device=device).view(1, -1, 1, 1)
    scale = torch.tensor(std if std is not None else [1.0] * channels, device=device).view(1, -1, 1, 1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=(x - shift) / scale).logits

    plan = [(attack, eps) for attack in attacks for eps in epsilons]
    fooled = {key: [] for key in plan}
    clean_correct = []
    with _EvalMode(model):
        for begin in range(0, len(pixels), batch_size):
            x = pixels[begin : begin + batch_size].to(device, torch.float32)
            y = labels[begin : begin + batch_size].to(device)
            with torch.no_grad():
                clean_correct.append(forward(x).argmax(-1) == y)
            for attack, eps in plan:
                if attack == "fgsm":
                    kwargs = dict(steps=1, step_size=eps)
                else:
                    noise = torch.stack(
                        [_uniform_linf(seed, i, tuple(x.shape[1:])) for i in range(begin, begin + len(x))]
                    )
                    kwargs = dict(steps=steps, step_size=PGD_STEP_FACTOR * eps / steps, random_start=noise)
                _, broken = projected_gradient_attack(forward, x, y, epsilon=eps, lower=0.0, upper=1.0, **kwargs)
                fooled[(attack, eps)].append(broken)
    clean = torch.cat(clean_correct)
    results = {}
    for attack, eps in plan:
        name, record = _gradient_attack_record(
            "", attack == "pgd", eps, steps, attack_accuracy(clean, torch.cat(fooled[(attack, eps)])),
            norm="linf", space="pixels in [0, 1], before normalisation",
        )  # fmt: skip
        results[name] = record
    return _summary(len(clean), seed, clean, results, start)


def _check_attacks(attacks: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    attacks = tuple(attacks)
    unknown = [a for a in attacks if a not in allowed]
    if unknown or not attacks:
        raise ValueError(f"`attacks` must name attacks from {list(allowed)}, got {list(attacks)}")
    return tuple(dict.fromkeys(attacks))


def _gradient_attack_record(
    prefix: str, pgd: bool, eps: float, steps: int, accuracy: float, *, norm: str, space: str, **extra: Any
) -> tuple[str, dict[str, Any]]:
    """The result name (``<prefix>pgd<steps>_<eps>`` / ``<prefix>fgsm_<eps>``) and record of one FGSM/PGD run."""
    name = f"{prefix}pgd{steps}_{epsilon_label(eps)}" if pgd else f"{prefix}fgsm_{epsilon_label(eps)}"
    record = {
        "accuracy": accuracy,
        "kind": "pgd" if pgd else "fgsm",
        "epsilon": eps,
        "steps": steps if pgd else 1,
        "step_size": PGD_STEP_FACTOR * eps / steps if pgd else eps,
        "norm": norm,
        "random_start": pgd,
        "space": space,
        **extra,
    }
    return name, record


def _summary(num_examples: int, seed: int, clean: torch.Tensor, attacks: dict, start: float) -> dict[str, Any]:
    return {
        "num_examples": int(num_examples),
        "seed": int(seed),
        "clean_accuracy": float(clean.double().mean()),
        "attacks": attacks,
        "seconds": time.perf_counter() - start,
    }


def robustness_for_images(
    model: torch.nn.Module,
    dataset: Any,
    arguments: RobustnessArguments,
    *,
    size: tuple[int, int],
    num_channels: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> dict[str, Any]:
    """`image_robustness` on the seeded subset of ``dataset`` (an ``image`` and a ``label`` column).

    The images go through `hf_critical.experiments.image_data.ImageTransform` without normalisation (pixels
    in [0, 1], resized and with the model's channels); the attacks normalise with mean / std.
    """
    from .image_data import ImageTransform

    indices = select_examples(len(dataset), arguments.robustness_examples, arguments.robustness_seed)
    rows = dataset.select(indices).with_transform(ImageTransform(size, None, None, num_channels))[:]
    return image_robustness(
        model,
        torch.stack(rows["pixel_values"]),
        torch.as_tensor(rows["labels"]),
        mean=mean,
        std=std,
        attacks=arguments.attacks_for("image"),
        epsilons=arguments.epsilons_for("image"),
        steps=arguments.robustness_steps,
        seed=arguments.robustness_seed,
        batch_size=arguments.robustness_batch_size,
    )


# ---- text: worst of n ----------------------------------------------------------------------------------


def _text_augmenter(kind: str, edits: int, action: str | None = None):
    # A slow import (it pulls in transformers): only when used.
    nac = require("nlpaug.augmenter.char", "the text robustness attacks")
    naw = require("nlpaug.augmenter.word", "the text robustness attacks")

    if kind == "char":
        # One typo in each of up to `edits` words (words of 4+ characters, nlpaug's default).
        return nac.KeyboardAug(
            aug_char_p=1.0, aug_char_min=1, aug_char_max=1, aug_word_p=1.0, aug_word_min=1, aug_word_max=edits,
            include_special_char=False, include_numeric=False, include_upper_case=False,
        )  # fmt: skip
    return naw.RandomWordAug(action=action, aug_p=1.0, aug_min=1, aug_max=edits)


def perturb_texts(
    texts: Sequence[str],
    kind: str,
    *,
    candidates: int = 8,
    edits: int = 2,
    seed: int = 0,
    offset: int = 0,
    stream: int = 0,
) -> list[list[str]]:
    """``candidates`` perturbed copies of each text, each with at most ``edits`` changes.

    ``kind="char"``: nlpaug ``KeyboardAug``, one keyboard-neighbour typo in each of up to ``edits``
    words. ``kind="word"``: nlpaug ``RandomWordAug``, even-numbered candidates swap up to ``edits``
    words with a neighbour, odd-numbered ones delete up to ``edits`` words. Text ``i`` is drawn
    with python ``random`` / numpy seeded from ``(seed, offset + i, candidate, kind, stream)`` (their global
    states are restored afterwards), one text at a time (nlpaug flows drop inputs): the same
    copies whatever else is perturbed. A text nlpaug cannot change stays as it is.
    """
    from ..augmentation import seeded_python_numpy_rng

    if kind not in ("char", "word"):
        raise ValueError(f"`kind` must be 'char' or 'word', got {kind!r}")
    _check_int(candidates, "candidates")
    _check_int(edits, "edits")
    augmenters = (
        [_text_augmenter("char", edits)]
        if kind == "char"
        else [_text_augmenter("word", edits, "swap"), _text_augmenter("word", edits, "delete")]
    )
    out = []
    for i, text in enumerate(texts):
        copies = []
        for j in range(candidates):
            seeds = [
                int(s)
                for s in np.random.SeedSequence([seed, offset + i, j, int(kind == "word"), stream]).generate_state(2)
            ]
            with seeded_python_numpy_rng(seeds):
                changed = augmenters[j % len(augmenters)].augment(text) if text.strip() else []
            if isinstance(changed, str):
                changed = [changed]
            if len(changed) > 1:
                raise RuntimeError(f"nlpaug returned {len(changed)} texts for one input")
            copies.append(changed[0] if changed else text)
        out.append(copies)
    return out


def _predict(model, tokenizer, rows: Sequence[Sequence[str]], max_length: int, batch_size: int) -> torch.Tensor:
    device = _device(model)
    predictions = []
    for begin in range(0, len(rows), batch_size):
        columns = [list(column) for column in zip(*rows[begin : begin + batch_size])]
        encoded = tokenizer(*columns, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        with torch.no_grad():
            predictions.append(model(**encoded.to(device)).logits.argmax(-1).cpu())
    return torch.cat(predictions)


# ---- text: embeddings --------------------------------------------------------------------------------------


def embedding_scale(model: torch.nn.Module) -> float:
    """The mean L2 norm of the rows of the model's word-embedding matrix (text budgets are relative to it)."""
    weight = model.get_input_embeddings().weight.detach()
    return float(weight.float().norm(dim=-1).mean())


def _embedding_attack_fooled(
    model, encoded: Mapping[str, torch.Tensor], labels: torch.Tensor, *, epsilon: float, steps: int | None,
    seed: int, offset: int,
) -> torch.Tensor:  # fmt: skip
    inputs = {k: v for k, v in encoded.items() if k not in ("input_ids", "special_tokens_mask")}
    embeds = model.get_input_embeddings()(encoded["input_ids"]).detach()
    movable = (1 - encoded["special_tokens_mask"]) * encoded.get(
        "attention_mask", torch.ones_like(encoded["input_ids"])
    )
    mask = movable.unsqueeze(-1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(inputs_embeds=x, **inputs).logits

    if steps is None:  # FGSM
        kwargs = dict(steps=1, step_size=epsilon)
    else:
        shape = tuple(embeds.shape[1:])
        noise = torch.stack([_uniform_l2_per_token(seed, offset + i, shape) for i in range(len(embeds))])
        kwargs = dict(steps=steps, step_size=PGD_STEP_FACTOR * epsilon / steps, random_start=noise)
    _, fooled = projected_gradient_attack(
        forward, embeds, labels, epsilon=epsilon, norm="l2_per_token", mask=mask, **kwargs
    )
    return fooled


def text_robustness(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str | Sequence[str]],
    labels: Sequence[int] | torch.Tensor,
    *,
    attacks: Sequence[str] = TEXT_ATTACKS,
    epsilons: Sequence[float] = (0.1, 0.5),
    steps: int = 10,
    candidates: int = 8,
    edits: int = 2,
    seed: int = 0,
    batch_size: int = 64,
    max_length: int = 128,
) -> dict[str, Any]:
    """Accuracy of a sequence classifier under worst-of-n text perturbations and embedding FGSM/PGD.

    Args:
        model: a transformers sequence classifier (``input_ids`` or ``inputs_embeds`` -> ``.logits``).
        tokenizer: its tokenizer (called with one or two text columns, like the recipes do).
        texts: one string per example, or a tuple of strings (sentence pairs); each sentence is
            perturbed on its own, with its own budget.
        labels: class indices.
        attacks: from ``("char", "word", "embedding_fgsm", "embedding_pgd")``.
        epsilons: embedding budgets, per-token L2 relative to `embedding_scale` (ε·s absolute).
        steps: PGD steps (step 2.5·ε·s/steps, random start in the ball); candidates, edits: the
            worst-of-n attacks (`perturb_texts`).
        seed: the perturbations and random starts (per example: independent of ``batch_size``).

    Returns:
        ``{"num_examples", "seed", "clean_accuracy", "attacks": {name: {...}}, "seconds"}``.
    """
    attacks = _check_attacks(attacks, TEXT_ATTACKS)
    epsilons = parse_epsilons(list(epsilons), "epsilons")
    for name, value in (("steps", steps), ("candidates", candidates), ("edits", edits), ("batch_size", batch_size),
                        ("max_length", max_length)):  # fmt: skip
        _check_int(value, name)
    rows = [(t,) if isinstance(t, str) else tuple(t) for t in texts]
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(rows) == 0 or len(rows) != len(labels):
        raise ValueError(f"`texts` and `labels` must have the same length >= 1, got {len(rows)} and {len(labels)}")
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with _EvalMode(model):
        clean = _predict(model, tokenizer, rows, max_length, batch_size) == labels
        for kind in ("char", "word"):
            if kind not in attacks:
                continue
            # fields[f][i][j]: candidate j of field f of example i
            fields = [
                perturb_texts([row[f] for row in rows], kind, candidates=candidates, edits=edits, seed=seed, stream=f)
                for f in range(len(rows[0]))
            ]
            flat = [tuple(field[i][j] for field in fields) for i in range(len(rows)) for j in range(candidates)]
            right = _predict(model, tokenizer, flat, max_length, batch_size).view(len(rows), candidates)
            survived = (right == labels.view(-1, 1)).all(dim=1)
            results[f"{kind}_worst_of_{candidates}"] = {
                "accuracy": float((clean & survived).double().mean()),
                "kind": "worst_of_n",
                "epsilon": None,
                "steps": None,
                "candidates": candidates,
                "edits": edits,
                "augmenter": "nlpaug KeyboardAug (one typo per word)" if kind == "char"
                else "nlpaug RandomWordAug (swap / delete, alternating over candidates)",
            }  # fmt: skip
        scale = embedding_scale(model) if any(a.startswith("embedding") for a in attacks) else None
        device = _device(model)
        for attack in [a for a in attacks if a.startswith("embedding")]:
            pgd = attack == "embedding_pgd"
            for eps in epsilons:
                fooled = []
                for begin in range(0, len(rows), batch_size):
                    columns = [list(column) for column in zip(*rows[begin : begin + batch_size])]
                    encoded = tokenizer(*columns, truncation=True, max_length=max_length, padding=True,
                                        return_special_tokens_mask=True, return_tensors="pt").to(device)  # fmt: skip
                    fooled.append(_embedding_attack_fooled(
                        model, encoded, labels[begin : begin + batch_size].to(device), epsilon=eps * scale,
                        steps=steps if pgd else None, seed=seed, offset=begin,
                    ).cpu())  # fmt: skip
                name, record = _gradient_attack_record(
                    "embedding_", pgd, eps, steps, attack_accuracy(clean, torch.cat(fooled)),
                    norm="l2_per_token",
                    space="input embeddings; epsilon relative to the mean embedding-row L2 norm",
                    embedding_scale=scale, epsilon_absolute=eps * scale,
                )  # fmt: skip
                results[name] = record
    return _summary(len(rows), seed, clean, results, start)


def robustness_for_text(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: Any,
    arguments: RobustnessArguments,
    *,
    text_fields: Sequence[str],
    label_field: str = "label",
    max_length: int = 128,
) -> dict[str, Any]:
    """`text_robustness` on the seeded subset of ``dataset`` (columns ``text_fields`` and ``label_field``)."""
    indices = select_examples(len(dataset), arguments.robustness_examples, arguments.robustness_seed)
    subset = dataset.select(indices)
    columns = [list(subset[name]) for name in text_fields]
    return text_robustness(
        model,
        tokenizer,
        list(zip(*columns)),
        list(subset[label_field]),
        attacks=arguments.attacks_for("text"),
        epsilons=arguments.epsilons_for("text"),
        steps=arguments.robustness_steps,
        candidates=arguments.robustness_candidates,
        edits=arguments.robustness_edits,
        seed=arguments.robustness_seed,
        batch_size=arguments.robustness_batch_size,
        max_length=max_length,
    )


# ---- the study table ---------------------------------------------------------------------------------------


def robustness_columns(results: Mapping[str, Any]) -> dict[str, float]:
    """``{"robust/<attack name>": accuracy}`` from a results dict (empty when it has no robustness)."""
    robustness = (results or {}).get("robustness") or {}
    return {f"robust/{name}": float(entry["accuracy"]) for name, entry in (robustness.get("attacks") or {}).items()}
