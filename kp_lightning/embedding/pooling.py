"""Pooling of token states into one sentence embedding, stored in the model's config.

The pooling settings live in ``config.kp_pooling`` (``{"mode": "mean", "normalize": true, "max_seq_length": 256}``),
so they travel with the model through compaction, ``save_pretrained`` and every export, and a reloaded model
pools exactly as the one that was pruned. The arithmetic is sentence-transformers' ``Pooling`` and
``Normalize`` modules'.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kp_lightning.errors import ConfigError

POOLING_KEY = "kp_pooling"
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
"""``mean``: average of the non-padding token states; ``cls``: the first token's state; ``max``: element-wise
maximum over non-padding tokens; ``mean_sqrt_len``: their sum divided by the square root of their number."""


@dataclass(frozen=True)
class Pooling:
    """How a sentence embedding is read from the last hidden state.

    Attributes:
        mode: One of :data:`POOLING_MODES`.
        normalize: L2-normalize the pooled vector (sentence-transformers' ``Normalize`` module).
        max_seq_length: Tokens per text the model was built for (sentence-transformers truncates there).
    """

    mode: str = "mean"
    normalize: bool = False
    max_seq_length: int | None = None

    def __post_init__(self):
        if self.mode not in POOLING_MODES:
            raise ConfigError(f"unknown pooling mode {self.mode!r}", fix=f"use one of {', '.join(POOLING_MODES)}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ConfigError(f"max_seq_length must be positive, got {self.max_seq_length}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Pooling:
        return cls(**{k: data[k] for k in ("mode", "normalize", "max_seq_length") if k in data})


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: Pooling) -> torch.Tensor:
    """``[batch, seq, dim]`` token states to ``[batch, dim]`` sentence embeddings (padding ignored)."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    if pooling.mode == "cls":
        pooled = hidden[:, 0]
    elif pooling.mode == "max":
        keep = attention_mask.unsqueeze(-1).bool()
        pooled = hidden.masked_fill(~keep, torch.finfo(hidden.dtype).min).max(dim=1).values
    else:
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * weights).sum(dim=1)
        counts = weights.sum(dim=1).clamp(min=1e-9)
        pooled = summed / (counts if pooling.mode == "mean" else counts.sqrt())
    return F.normalize(pooled, p=2, dim=1) if pooling.normalize else pooled


def set_model_pooling(model: nn.Module, pooling: Pooling) -> None:
    """Record ``pooling`` in ``model.config`` (saved with the model)."""
    setattr(model.config, POOLING_KEY, pooling.to_dict())


def has_pooling(config) -> bool:
    return isinstance(getattr(config, POOLING_KEY, None), dict)


def model_pooling(model: nn.Module) -> Pooling:
    """The pooling recorded in ``model.config``.

    Raises:
        ConfigError: the model was not loaded as an embedding model.
    """
    data = getattr(getattr(model, "config", None), POOLING_KEY, None)
    if not isinstance(data, dict):
        raise ConfigError(
            "this model has no pooling settings (config.kp_pooling): it was not loaded as a sentence-embedding model",
            fix="load it through an embedding task (a sentence-transformers folder, or a bare encoder with "
            "--model.init_args.pooling mean)",
        )
    return Pooling.from_dict(data)


def sentence_embeddings(model: nn.Module, outputs, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The pooled embeddings of a forward pass of ``model`` (its ``last_hidden_state``)."""
    return pool(outputs.last_hidden_state, attention_mask, model_pooling(model))


def add_sentence_embedding(model: nn.Module, outputs, attention_mask: torch.Tensor | None):
    """``outputs`` with a ``sentence_embedding`` entry added (returned for chaining)."""
    outputs["sentence_embedding"] = sentence_embeddings(model, outputs, attention_mask)
    return outputs
