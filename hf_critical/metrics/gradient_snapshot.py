"""Keeping one step's gradients until the next step (for gradient predictability) without copying them.

The Trainer's ``zero_grad`` sets gradients to ``None`` (``set_to_none=True``, PyTorch's default) and
torch's optimizers read gradients without writing to them, so the gradient tensors of step ``s``
are never touched again once the optimizer step is done: holding a reference keeps them exactly,
at no cost, and the memory they hold is the same as a copy's. Where something does write to them
in place (``zero_grad(set_to_none=False)``, an optimizer or hook that modifies gradients, DDP's
``gradient_as_bucket_view`` buckets being refilled), PyTorch's per-tensor version counter moves;
then that one measurement is reported unavailable, and from then on the gradients are copied.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

__all__ = ["GradientKeeper"]

logger = logging.getLogger(__name__)


class GradientKeeper:
    """Keeps gradients by reference while their version counters show they stay unmodified, else copies them.

    Args:
        copy: Start by copying (``True``) instead of keeping references.
    """

    def __init__(self, copy: bool = False):
        self.copies = bool(copy)
        self._kept: list[torch.Tensor | None] | None = None
        self._versions: list[int | None] = []

    def keep(self, grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """The tensors to hold for the next step: references (checked in :meth:`take`) or copies."""
        if self.copies:
            self._kept = None
            return [None if g is None else g.detach().clone() for g in grads]
        kept = [None if g is None else g.detach() for g in grads]  # detach shares the version counter
        self._kept = kept
        self._versions = [None if g is None else g._version for g in kept]
        return kept

    def take(self, kept: list[torch.Tensor | None]) -> list[torch.Tensor | None] | None:
        """``kept`` if its values are still those of the step that kept them, else ``None`` (then copies from now on).

        Tensors this keeper did not hand out (copies, or read back from a checkpoint) are returned as they are.
        """
        if kept is not self._kept:
            return kept
        self._kept = None
        changed = [i for i, (g, v) in enumerate(zip(kept, self._versions)) if g is not None and g._version != v]
        if not changed:
            return kept
        logger.warning(
            "gradient_predictability unavailable at this measurement: %d kept gradients were modified in place after "
            "the optimizer step (zero_grad(set_to_none=False), an optimizer or hook writing to .grad, or DDP bucket "
            "views); the gradients are copied from now on.",
            len(changed),
        )
        self.copies = True
        return None
