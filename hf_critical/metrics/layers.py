"""Which parameters the dynamics metrics look at."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

__all__ = ["LAYER_SELECTIONS", "LayerSelection", "select_parameters", "validate_layer_selection"]

#: Named selections; any other value is a regular expression matched against parameter names.
LAYER_SELECTIONS = ("weights", "all")

_WEIGHT_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
try:  # GPT-2 style models use transformers' own Conv1D for their linear layers.
    from transformers.pytorch_utils import Conv1D

    _WEIGHT_MODULES = _WEIGHT_MODULES + (Conv1D,)
except ImportError:  # pragma: no cover - transformers is a dependency
    pass


def validate_layer_selection(selection: str, field_name: str = "dynamics_layers") -> None:
    """Raise ``ValueError`` naming ``field_name`` unless ``selection`` is a named selection or a regex."""
    if not isinstance(selection, str) or not selection:
        raise ValueError(
            f"`{field_name}` must be one of {LAYER_SELECTIONS} or a regular expression over parameter names, "
            f"got {selection!r}"
        )
    if selection in LAYER_SELECTIONS:
        return
    try:
        re.compile(selection)
    except re.error as err:
        raise ValueError(
            f"`{field_name}`={selection!r} is neither one of {LAYER_SELECTIONS} nor a valid regular expression: {err}"
        ) from None


@dataclass
class LayerSelection:
    """The parameters a metric measures, plus what was left out and why."""

    parameters: dict[str, nn.Parameter]
    frozen: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.parameters)


def select_parameters(model: nn.Module, selection: str = "weights") -> LayerSelection:
    """Pick the parameters to measure, one "layer" per parameter tensor.

    ``"weights"`` (default) takes the weight matrix of every Linear, Conv and Embedding module
    (biases and normalisation parameters excluded, as in Carbonnelle & De Vleeschouwer 2019); a
    model without such modules (weights held as bare ``nn.Parameter``s) has every trainable
    parameter measured instead, 0-dimensional ones included (each is a layer of one value).
    ``"all"`` takes every parameter; any other string is a regular expression searched in
    parameter names, and one that matches no trainable parameter is refused. Parameters that do
    not require a gradient (frozen) are left out and listed in ``frozen``; a model with nothing
    trainable gets an empty selection (nothing to measure). Tied parameters are measured once,
    under their first name.
    """
    validate_layer_selection(selection)
    if selection == "weights":
        candidates = [
            (f"{module_name}.weight" if module_name else "weight", module.weight)
            for module_name, module in model.named_modules()
            if isinstance(module, _WEIGHT_MODULES) and isinstance(getattr(module, "weight", None), nn.Parameter)
        ]
        if not any(p.requires_grad for _, p in candidates):
            candidates = list(model.named_parameters())
    elif selection == "all":
        candidates = list(model.named_parameters())
    else:
        pattern = re.compile(selection)
        candidates = [(name, p) for name, p in model.named_parameters() if pattern.search(name)]
    chosen: dict[str, nn.Parameter] = {}
    frozen: list[str] = []
    seen: set[int] = set()
    for name, param in candidates:
        if id(param) in seen:
            continue
        seen.add(id(param))
        if param.requires_grad:
            chosen[name] = param
        else:
            frozen.append(name)
    if not chosen and selection not in LAYER_SELECTIONS:
        raise ValueError(
            f"`dynamics_layers`={selection!r} selects no trainable parameter in {type(model).__name__}"
            + (f" ({len(frozen)} matching parameters are frozen)" if frozen else "")
        )
    return LayerSelection(chosen, frozen)
