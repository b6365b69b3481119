"""Layer rotation of LoRA-adapted layers: the effective weight ``W0 + scaling * B A``, not the adapter factors.

A `peft` LoRA layer trains two small factors beside a frozen weight ``W0``. Gradient confusion and
gradient predictability are measured over the trainable parameters (the factors), as for any model.
Layer rotation is not: ``B`` starts at zero (``1 - cos(B_0, B_t)`` is undefined, so the layer would be
skipped) and the rotation of ``A`` alone says nothing about the layer. What rotates is the layer's
effective weight ``W_t = W0 + scaling * B_t A_t`` (summed over the active adapters), which starts at
``W_0 = W0 + scaling * B_0 A_0`` (= ``W0`` with the standard zero init of ``B``).

:class:`EffectiveWeights` is a mapping that, indexed by ``<module>.weight``, computes that weight from
the factors held in another mapping (the current parameters, or the initial ones streamed from disk)
and the frozen ``W0`` on the model, one layer at a time: nothing beyond the factors is stored, and
:func:`hf_critical.metrics.layer_rotation` reads it like any other mapping. Parameters that are not
LoRA factors (e.g. a new classifier head in ``modules_to_save``) pass through under their own names.

Supported: `peft` LoRA on ``nn.Linear`` layers (``lora_A``/``lora_B`` module dicts, ``fan_in_fan_out``
honoured), unmerged. Other adapter kinds (LoRA on embeddings or convolutions, DoRA) keep their factors
measured as parameters, and are listed in :attr:`EffectiveWeights.unsupported`. `peft` itself is not
imported: layers are recognised by their attributes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LoraLayer", "lora_layers", "EffectiveWeights"]


@dataclass(frozen=True)
class LoraLayer:
    """One LoRA-adapted linear layer: its frozen weight and, per active adapter, the names of its factors."""

    module: nn.Module
    base_weight: torch.Tensor
    factors: tuple[tuple[str, str, float], ...]  # (A parameter name, B parameter name, scaling) per adapter
    fan_in_fan_out: bool


def _is_lora_linear(module: nn.Module) -> bool:
    return (
        isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and isinstance(getattr(module, "lora_B", None), nn.ModuleDict)
        and isinstance(getattr(module, "base_layer", None), nn.Module)
        and isinstance(getattr(module.base_layer, "weight", None), torch.Tensor)
    )


def lora_layers(model: nn.Module, names: Mapping[str, torch.Tensor]) -> tuple[dict[str, LoraLayer], list[str]]:
    """The LoRA linear layers of ``model`` whose factors are among ``names`` (measured parameter name -> tensor).

    Returns the layers keyed by the effective weight's name (``<module>.weight``), and the names of
    adapted modules left as plain parameters (DoRA, merged adapters, a trainable ``W0``).
    """
    by_id = {id(t): n for n, t in names.items()}
    layers: dict[str, LoraLayer] = {}
    unsupported: list[str] = []
    for module_name, module in model.named_modules():
        if not _is_lora_linear(module):
            continue
        active = [a for a in _active_adapters(module) if a in module.lora_A and a in module.lora_B]
        factors = []
        for adapter in active:
            a_name = by_id.get(id(module.lora_A[adapter].weight))
            b_name = by_id.get(id(module.lora_B[adapter].weight))
            if a_name is not None and b_name is not None:
                factors.append((a_name, b_name, float(module.scaling[adapter])))
        if not factors:
            continue
        dora = any(bool(getattr(module, "use_dora", {}).get(a, False)) for a in active)
        if dora or bool(getattr(module, "merged", False)) or module.base_layer.weight.requires_grad:
            unsupported.append(module_name)
            continue
        key = f"{module_name}.weight" if module_name else "weight"
        layers[key] = LoraLayer(
            module, module.base_layer.weight, tuple(factors), bool(getattr(module, "fan_in_fan_out", False))
        )
    return layers, unsupported


def _active_adapters(module: nn.Module) -> list[str]:
    active = getattr(module, "active_adapters", None)
    if active is None:
        active = getattr(module, "active_adapter", [])
    return [active] if isinstance(active, str) else list(active)


class EffectiveWeights(Mapping):
    """Read-only mapping: LoRA layers' effective weights computed from ``factors``; other names passed through.

    Args:
        factors: Parameter name -> tensor: the measured parameters (current, or initial from disk).
        layers: From :func:`lora_layers` (effective weight name -> layer).
    """

    def __init__(self, factors: Mapping[str, torch.Tensor], layers: Mapping[str, LoraLayer]):
        self.factors = factors
        self.layers = dict(layers)
        hidden = {name for layer in self.layers.values() for a, b, _ in layer.factors for name in (a, b)}
        self._passed = [name for name in factors if name not in hidden]

    def __getitem__(self, name: str) -> torch.Tensor:
        layer = self.layers.get(name)
        if layer is None:
            if name in self._passed:
                return self.factors[name]
            raise KeyError(name)
        weight = layer.base_weight.detach()
        # A fresh float64 tensor (W0 itself is never written to): the rotation of W0 + BA is second order in
        # the adapters' update, often below float32's resolution of 1 - cos (about 1e-7) early in training.
        effective = weight.to(dtype=torch.float64, copy=True)
        for a_name, b_name, scaling in layer.factors:
            a = self.factors[a_name].to(device=weight.device, dtype=effective.dtype)
            b = self.factors[b_name].to(device=weight.device, dtype=effective.dtype)
            delta = b @ a
            effective.add_(delta.T if layer.fan_in_fan_out else delta, alpha=scaling)
        return effective

    def __contains__(self, name: object) -> bool:
        return name in self.layers or name in self._passed

    def __iter__(self) -> Iterator[str]:
        yield from self.layers
        yield from self._passed

    def __len__(self) -> int:
        return len(self.layers) + len(self._passed)
