"""Which ``nn.Linear`` weights a sparsity method acts on: encoder layers by default, or name patterns."""

from __future__ import annotations

import re

from torch import nn

from kp_lightning.core.adapter import EncoderAdapter, UnsupportedModelError
from kp_lightning.errors import KPError


class NoWeightsSelectedError(KPError, ValueError):
    """The include/exclude patterns match no ``nn.Linear`` layer."""


def encoder_linear_names(model: nn.Module) -> list[str]:
    """Qualified names of the Linear layers inside the encoder layers (Q, K, V, attention output, FFN up/down).

    Embeddings, LayerNorms, the pooler and task or MLM heads are not part of it.
    """
    try:
        layers = EncoderAdapter(model).encoder_modules()
    except UnsupportedModelError as err:
        raise NoWeightsSelectedError(
            f"{err} Without a known layout, name the layers to sparsify with include patterns (regular expressions)."
        ) from None
    inside = {id(module) for module in layers.modules()}
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and id(module) in inside]


def select_linear_names(model: nn.Module, include: list[str] | None = None, exclude: list[str] = ()) -> list[str]:
    """Linear layers whose qualified name matches an ``include`` regex (default: the encoder layers') and no
    ``exclude`` regex (``re.search`` semantics).

    Raises:
        NoWeightsSelectedError: nothing is left, with the candidate names in the message.
    """
    for pattern in [*(include or []), *exclude]:
        try:
            re.compile(pattern)
        except re.error as err:
            raise NoWeightsSelectedError(f"invalid name pattern {pattern!r}: {err}") from None
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if include is None:
        candidates = encoder_linear_names(model)
    else:
        candidates = [name for name in linears if any(re.search(p, name) for p in include)]
    selected = [name for name in candidates if not any(re.search(p, name) for p in exclude)]
    if not selected:
        shown = ", ".join(linears[:8]) + (", ..." if len(linears) > 8 else "")
        raise NoWeightsSelectedError(
            f"no Linear layer matched include={include} / exclude={list(exclude)}. Linear layers of this model: "
            f"{shown or 'none'}."
        )
    return selected
