"""K-prune knowledge measurement: predictive (squared mask gradients) and representational (closed form).

Scores come from auxiliary masks of ones placed on the inputs of the output projections (one per attention
head dimension, one per FFN neuron) of every sublayer from the target upward (kprune.md §2.2). The same
pass accumulates the normal equations of the target sublayer's weight tuning (§2.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kp_lightning.data.task_kinds import (
    ALL_TOKENS,
    EMBEDDING,
    LABELLED_TOKENS,
    SEQUENCE,
    SPAN,
    TASK_KIND_TABLE,
    VALUE,
)
from kp_lightning.embedding.losses import DEFAULT_EMBEDDING_LOSS, embedding_loss
from kp_lightning.embedding.pooling import sentence_embeddings
from kp_lightning.errors import ConfigError

from ..core.adapter import EncoderAdapter
from .layer_stream import layer_hidden

ATTENTION, FFN = "attention", "ffn"


@dataclass(frozen=True)
class Sublayer:
    """One sublayer: ``kind`` is ``"attention"`` or ``"ffn"``."""

    layer: int
    kind: str

    @property
    def order(self) -> int:
        """Position in the bottom-up visiting order MHA₀, FFN₀, MHA₁, ..."""
        return 2 * self.layer + (self.kind == FFN)

    def __str__(self) -> str:
        return f"{'MHA' if self.kind == ATTENTION else 'FFN'}{self.layer}"


def sublayer_order(num_layers: int) -> list[Sublayer]:
    """All sublayers bottom-up."""
    return [Sublayer(layer, kind) for layer in range(num_layers) for kind in (ATTENTION, FFN)]


def prediction_outputs(kind: str, model: nn.Module, out, inputs: dict) -> dict[str, torch.Tensor]:
    """The outputs of a forward pass that :func:`prediction_loss` compares: the kind's ``outputs`` entries, or
    the pooled ``sentence_embedding`` of an embedding model."""
    if TASK_KIND_TABLE[kind].pooled:
        return {"sentence_embedding": sentence_embeddings(model, out, inputs.get("attention_mask"))}
    return {k: getattr(out, k) for k in TASK_KIND_TABLE[kind].outputs}


def prediction_loss(
    kind: str,
    student: dict,
    teacher: dict,
    token_mask: torch.Tensor,
    temperature: float,
    embedding_loss_name: str = DEFAULT_EMBEDDING_LOSS,
):
    """Batch-mean distance of the student's predictions to the teacher's (kprune.md §2.2), by the kind's
    ``predictions`` entry (:mod:`kp_lightning.data.task_kinds`).

    Classification and multiple choice: ``T²·KL(p_T ‖ p_S)`` at temperature ``T`` (over classes / choices);
    regression: MSE; question answering: mean of the start- and end-position KL (softmax over the tokens of
    ``token_mask``); masked LM and token classification: KL per token, averaged over the tokens of
    ``token_mask`` (non-padding ones, or for token classification the labelled ones:
    :meth:`SampleSet.prediction_mask`); embeddings: ``embedding_loss_name``
    (:mod:`kp_lightning.embedding.losses`) between the pooled sentence embeddings.
    """
    t2 = temperature**2
    predictions = TASK_KIND_TABLE[kind].predictions if kind in TASK_KIND_TABLE else None
    if predictions == VALUE:
        return F.mse_loss(student["logits"].float(), teacher["logits"].float())
    if predictions == EMBEDDING:
        return embedding_loss(student["sentence_embedding"], teacher["sentence_embedding"], embedding_loss_name)
    if predictions == SEQUENCE:
        return _kl(student["logits"], teacher["logits"], temperature) * t2
    if predictions == SPAN:
        neg = torch.finfo(torch.float32).min
        parts = []
        for key in ("start_logits", "end_logits"):
            s = student[key].float().masked_fill(~token_mask, neg)
            t = teacher[key].float().masked_fill(~token_mask, neg)
            parts.append(_kl(s, t, temperature) * t2)
        return (parts[0] + parts[1]) / 2
    if predictions in (ALL_TOKENS, LABELLED_TOKENS):
        s = student["logits"][token_mask]
        t = teacher["logits"][token_mask]
        return _kl(s, t, temperature) * t2
    raise ConfigError(f"unknown task kind {kind!r}")


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean")


def output_projection(adapter: EncoderAdapter, sub: Sublayer) -> nn.Linear:
    view = adapter.layers[sub.layer]
    return view.attention_out if sub.kind == ATTENTION else view.ffn_down


def sum_input(adapter: EncoderAdapter, sub: Sublayer) -> nn.Module | None:
    """Where the sublayer's residual sum is read (:meth:`LayerView.sum_input`; None: the layer output)."""
    return adapter.layers[sub.layer].sum_input(sub.kind)


def present(adapter: EncoderAdapter, sub: Sublayer) -> bool:
    view = adapter.layers[sub.layer]
    return view.has_attention if sub.kind == ATTENTION else view.has_ffn


class KnowledgeProbe:
    """Hooks that measure knowledge of every unit in sublayers ``>= target`` over a pass of the sample set.

    Per input dimension ``j`` of each probed output projection it accumulates ``Σ_batches ½ (∂L/∂m_j)²``
    (``pred``) and ``Σ_tokens a_j² · mean(w_j²)`` (``rep``). For the target sublayer it also accumulates
    the normal equations ``AᵀA`` and ``AᵀB`` with ``A`` the projection's inputs and
    ``B = Y_T − X_S − b`` the residual the re-solved weight must produce (kprune.md §2.4).

    Args:
        model: The student, in eval mode, with parameters not requiring grad.
        target: The sublayer being pruned.
    """

    def __init__(self, model: nn.Module, target: Sublayer):
        self.adapter = EncoderAdapter(model)
        self.target = target
        self.subs = [
            s for s in sublayer_order(len(self.adapter.layers)) if s.order >= target.order and present(self.adapter, s)
        ]
        param = next(model.parameters())
        self.masks: dict[Sublayer, torch.Tensor] = {}
        self.pred: dict[Sublayer, torch.Tensor] = {}
        self.rep: dict[Sublayer, torch.Tensor] = {}
        for s in self.subs:
            width = output_projection(self.adapter, s).in_features
            self.masks[s] = torch.ones(width, device=param.device, dtype=param.dtype, requires_grad=True)
            self.pred[s] = torch.zeros(width, dtype=torch.float64, device=param.device)
            self.rep[s] = torch.zeros(width, dtype=torch.float64, device=param.device)
        self.gram: torch.Tensor | None = None
        self.rhs: torch.Tensor | None = None
        self.token_mask: torch.Tensor | None = None
        self.teacher_sum: torch.Tensor | None = None  # Y_T of the target for the current batch
        self._handles: list = []

    def __enter__(self) -> KnowledgeProbe:
        for s in self.subs:
            self._handles.append(output_projection(self.adapter, s).register_forward_pre_hook(self._mask_hook(s)))
        if self.target in self.masks:
            reader = sum_input(self.adapter, self.target)
            if reader is not None:
                self._handles.append(reader.register_forward_pre_hook(self._norm_hook))
            else:  # the sum is the layer's output
                layer = self.adapter.encoder_modules()[self.target.layer]
                self._handles.append(layer.register_forward_hook(lambda m, args, out: self._norm_hook(m, (out,))))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _mask_hook(self, sub: Sublayer):
        def hook(module, args):
            a = args[0]
            tokens = a.detach()[self.token_mask].to(torch.float64)
            w2 = module.weight.detach().to(torch.float64).pow(2).mean(0)
            self.rep[sub] += tokens.pow(2).sum(0) * w2
            if sub == self.target:
                self._target_input = a.detach()
            return (a * self.masks[sub],) + tuple(args[1:])

        return hook

    def _norm_hook(self, module, args):
        """Accumulate the target's normal equations from the residual sum ``S = X_S + W·a + b``."""
        proj = output_projection(self.adapter, self.target)
        a = self._target_input[self.token_mask].float()
        s = layer_hidden(args[0]).detach()[self.token_mask].float()
        y = self.teacher_sum[self.token_mask].float()
        b = y - s + a @ proj.weight.detach().float().T  # = Y_T − X_S − bias
        gram, rhs = (a.T @ a).double(), (a.T @ b).double()  # per-batch products in fp32, sums in fp64
        self.gram = gram if self.gram is None else self.gram + gram
        self.rhs = rhs if self.rhs is None else self.rhs + rhs

    def after_backward(self) -> None:
        """Add ``½ g²`` of this batch's mask gradients and clear them."""
        for s, m in self.masks.items():
            if m.grad is not None:
                self.pred[s] += 0.5 * m.grad.detach().to(torch.float64).pow(2)
                m.grad = None
