"""Kwon et al.'s layer-wise mask tuning (kprune.md §3.5): one scale per kept head and neuron, solved by damped
least squares so that each sublayer's pre-LayerNorm output matches a teacher-assistant mask's."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.adapter import EncoderAdapter
from ..core.mask_hooks import attach_masks
from ..core.masks import StructuralMasks
from ..data.task_kinds import TASK_KIND_TABLE
from .distributed import all_reduce_sum, world
from .layer_stream import embedding_output, layer_outputs
from .sample_set import SampleSet


def damped_scales(gram: torch.Tensor, rhs: torch.Tensor, num_scales: int, damping: float) -> torch.Tensor:
    """Scales ``s = 1 + δ`` for the first ``num_scales`` columns of the system ``G x = R``.

    As the reference LSMR call on the normal equations, ``δ`` minimises ``‖G δ − b'‖² + damping²‖δ‖²`` with
    ``b' = R − G·[1…1, 0…0]`` (the extra free columns, e.g. the all-ones column, start at 0 and are dropped).
    """
    g, r = gram.double(), rhs.double()
    start = torch.zeros_like(r)
    start[:num_scales] = 1
    b = r - g @ start
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    delta = torch.linalg.solve(g.T @ g + damping**2 * eye, g.T @ b)
    return 1 + delta[:num_scales]


@torch.no_grad()
def tune_mask_scales(
    model: nn.Module,
    samples: SampleSet,
    masks: StructuralMasks,
    assistant: StructuralMasks,
    task_kind: str,
    config,
    progress: bool = True,
) -> list[str]:
    """Multiply the kept values of ``masks`` by tuned scales, layer by layer (in place).

    The attention sublayer of layer 0 is not tuned; for heads that read the first token only (classification,
    multiple choice) the last FFN is fitted on that token only (what the classifier reads). If a system has
    non-finite scales or one outside ``±config.scale_bound``, tuning stops there, as in the reference code.

    Returns:
        Notes for the report.
    """
    adapter = EncoderAdapter(model)
    notes: list[str] = []
    student_hidden, teacher_hidden = {}, {}
    for i, batch in samples.batches():
        student_hidden[i] = teacher_hidden[i] = embedding_output(model, samples.model_inputs(batch))
    last = len(adapter.layers) - 1
    bar = tqdm(adapter.layers, desc="Kwon mask tuning", disable=not progress or world()[0] != 0)
    for view in bar:
        layer = view.index
        targets = {}
        with attach_masks(model, assistant):
            for i, batch in samples.batches():
                capture = {kind: view.sum_input(kind) for kind in ("attention", "ffn")}
                teacher_hidden[i], targets[i] = layer_outputs(
                    model, layer, teacher_hidden[i], samples.model_inputs(batch), capture
                )
        for kind in ("attention", "ffn"):
            values = masks.head[layer] if kind == "attention" else masks.neuron[layer]
            kept = torch.nonzero(values).flatten()
            if not len(kept) or (kind == "attention" and layer == 0):
                continue
            cls_only = kind == "ffn" and layer == last and TASK_KIND_TABLE[task_kind].first_token_readout
            gram, rhs = _layer_system(model, view, kind, kept, samples, student_hidden, targets, masks, cls_only)
            scales = damped_scales(all_reduce_sum(gram), all_reduce_sum(rhs), len(kept), config.damping)
            if not torch.isfinite(scales).all() or bool((scales.abs() > config.scale_bound).any()):
                notes.append(
                    f"Kwon mask tuning stopped at layer {layer} ({kind}): scales outside ±{config.scale_bound}; "
                    "this and later sublayers keep their 0/1 masks (reference behaviour)"
                )
                return notes
            values[kept] = values[kept] * scales.to(values.dtype)
        with attach_masks(model, masks):
            for i, batch in samples.batches():
                student_hidden[i], _ = layer_outputs(model, layer, student_hidden[i], samples.model_inputs(batch))
    return notes


def _layer_system(model, view, kind, kept, samples, student_hidden, targets, masks, cls_only):
    """Accumulate ``AᵀA`` and ``AᵀB`` over the sample set for one sublayer's kept units plus a ones column."""
    proj = view.attention_out if kind == "attention" else view.ffn_down
    norm = view.sum_input(kind)  # where the residual sum is read (None: the layer output)
    weight = proj.weight.detach().float()
    k = len(kept)
    gram = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=samples.device)
    rhs = torch.zeros(k + 1, dtype=torch.float64, device=samples.device)
    with attach_masks(model, masks):
        for i, batch in samples.batches():
            tokens = samples.token_mask(batch)
            if cls_only:
                tokens = torch.zeros_like(tokens)
                tokens[:, 0] = True
            _, seen = layer_outputs(
                model, view.index, student_hidden[i], samples.model_inputs(batch), {"a": proj, "s": norm}
            )
            a = seen["a"][tokens].float()
            b = targets[i][kind][tokens].float() - seen["s"][tokens].float() + a @ weight.T  # Y_T − X_S − bias
            if kind == "attention":
                dh = view.head_size
                contrib = torch.stack([a[:, h * dh : (h + 1) * dh] @ weight[:, h * dh : (h + 1) * dh].T for h in kept])
                g_units = torch.einsum("knd,jnd->kj", contrib, contrib)
                g_ones = contrib.sum((1, 2))
                r_units = torch.einsum("knd,nd->k", contrib, b)
            else:
                h_k, w_k = a[:, kept], weight[:, kept]
                g_units = (w_k.T @ w_k) * (h_k.T @ h_k)
                g_ones = h_k.sum(0) * w_k.sum(0)
                r_units = (h_k * (b @ w_k)).sum(0)
            gram[:k, :k] += g_units.double()
            gram[:k, k] += g_ones.double()
            gram[k, :k] += g_ones.double()
            gram[k, k] += b.numel()
            rhs[:k] += r_units.double()
            rhs[k] += b.sum().double()
    return gram, rhs
