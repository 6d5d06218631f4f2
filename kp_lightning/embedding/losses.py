"""Embedding-distillation losses between a student's and a teacher's sentence embeddings of the same batch.

``similarity_kl`` (the default part): for each sentence, the softmax over its cosine similarities to the
other sentences of the batch (scale ``1/τ``, the diagonal left out) is compared as ``τ⁻²``-free
``KL(teacher ‖ student)``, averaged over sentences. It measures what STS and retrieval read from an embedding
model, how sentences are placed relative to each other, and ignores rotations and scale of the space.
``cosine_mse``: ``‖ŝ − t̂‖²`` of the L2-normalized embeddings (``= 2 − 2 cos``), averaged over sentences.
It anchors each embedding to where the teacher put it, which matters when compressed queries are matched
against documents indexed by the dense model. The default ``similarity_kl+cosine_mse`` sums both: the first
keeps the geometry, the second keeps the coordinates.

Both vanish with a zero gradient when the student equals the teacher, which is right for K-prune (its first
sublayer is measured by representational knowledge alone, as for classification) but leaves Kwon et al.'s
Fisher information of the dense model identically zero. ``contrastive`` is InfoNCE of each student embedding
against the teacher embeddings of the batch (its own is the positive): the same in-batch similarity
objective in a form whose gradient at the dense model is not zero, used as Kwon's Fisher objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kp_lightning.errors import ConfigError

EMBEDDING_LOSS_PARTS = ("similarity_kl", "cosine_mse", "contrastive")
DEFAULT_EMBEDDING_LOSS = "similarity_kl+cosine_mse"
FISHER_EMBEDDING_LOSS = "contrastive"
SIMILARITY_TEMPERATURE = 0.05
"""``τ`` of the in-batch similarity softmax (cosines lie in [-1, 1]; 0.05 is the usual contrastive scale)."""


def check_embedding_loss(name: str) -> tuple[str, ...]:
    """The parts of a ``+``-joined loss name.

    Raises:
        ConfigError: an unknown part.
    """
    parts = tuple(part.strip() for part in str(name).split("+"))
    unknown = [p for p in parts if p not in EMBEDDING_LOSS_PARTS]
    if unknown or not parts:
        raise ConfigError(
            f"unknown embedding loss {name!r}",
            fix=f"use one of {', '.join(EMBEDDING_LOSS_PARTS)} or several joined by '+' "
            f"(default {DEFAULT_EMBEDDING_LOSS})",
        )
    return parts


def _similarity_logits(a: torch.Tensor, b: torch.Tensor, temperature: float, drop_diagonal: bool) -> torch.Tensor:
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature
    if drop_diagonal:
        eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(eye, torch.finfo(logits.dtype).min)
    return logits


def similarity_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = SIMILARITY_TEMPERATURE):
    """Mean over sentences of ``KL(p_T ‖ p_S)`` of the in-batch cosine-similarity distributions."""
    if len(student) < 2:
        return student.float().sum() * 0.0  # one sentence has no neighbours to compare
    log_p_s = F.log_softmax(_similarity_logits(student, student, temperature, True), dim=-1)
    p_t = F.softmax(_similarity_logits(teacher, teacher, temperature, True), dim=-1)
    eye = torch.eye(len(student), dtype=torch.bool, device=student.device)
    terms = (p_t * (torch.log(p_t.clamp(min=1e-12)) - log_p_s)).masked_fill(eye, 0.0)
    return terms.sum(-1).mean()


def cosine_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over sentences of ``‖ŝ − t̂‖²`` of the normalized embeddings."""
    diff = F.normalize(student.float(), dim=-1) - F.normalize(teacher.float(), dim=-1)
    return diff.pow(2).sum(-1).mean()


def contrastive(student: torch.Tensor, teacher: torch.Tensor, temperature: float = SIMILARITY_TEMPERATURE):
    """InfoNCE: each student embedding must pick its own teacher embedding among the batch's."""
    logits = _similarity_logits(student, teacher, temperature, False)
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


_PARTS = {"similarity_kl": similarity_kl, "cosine_mse": cosine_mse, "contrastive": contrastive}


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, name: str = DEFAULT_EMBEDDING_LOSS) -> torch.Tensor:
    """The loss ``name`` (parts joined by ``+`` are summed) between ``[batch, dim]`` embeddings."""
    return sum(_PARTS[part](student, teacher) for part in check_embedding_loss(name))
