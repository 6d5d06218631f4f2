"""Kwon et al. (NeurIPS 2022) retraining-free pruning baseline (kprune.md §3): Fisher importance from the
task loss, one global mask search under the FLOPs budget, per-layer mask rearrangement, and layer-wise
least-squares tuning of the kept mask values toward a less-pruned "teacher-assistant" mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..core.adapter import EncoderAdapter
from ..core.compaction import compact
from ..core.masks import StructuralMasks
from ..data.task_kinds import TASK_KIND_TABLE
from ..embedding.losses import FISHER_EMBEDDING_LOSS, embedding_loss
from ..embedding.pooling import sentence_embeddings
from .distributed import all_reduce_sum
from .kwon_tuning import tune_mask_scales
from .mask_search import kwon_search
from .pruning_run import PruningRun, check_flops_batch_size, check_reduction, check_task_kind, freeze
from .result import PruneError, PruneResult
from .sample_set import SampleSet


@dataclass
class KwonConfig:
    """Kwon et al. settings (defaults from kprune.md §3.6).

    Attributes:
        flops_reduction: Fraction of encoder FLOPs to REMOVE, in (0, 1). Kwon's own ``--constraint`` is the
            fraction KEPT; ``flops_reduction = 1 − constraint``.
        rearrange: Run the per-layer greedy mask rearrangement.
        mask_tuning: Run the layer-wise least-squares tuning of mask values.
        damping: LSMR damping of the tuning (pulls the scales toward 1).
        scale_bound: Tuning stops at the first layer whose scales leave ``[−bound, bound]``.
        seq_len: Sequence length of the FLOPs model; default the sample set's mean non-padding length.
        flops_batch_size: Deployment batch size of the FLOPs model: a cost shared by the batch (DeBERTa's
            relative-position projection) counts ``1/flops_batch_size`` per sequence; no effect on other models.
    """

    flops_reduction: float
    rearrange: bool = True
    mask_tuning: bool = True
    damping: float = 1.0
    scale_bound: float = 10.0
    seq_len: float | None = None
    flops_batch_size: int = 1

    def validate(self) -> None:
        check_reduction(self.flops_reduction)
        check_flops_batch_size(self.flops_batch_size)
        if self.damping < 0:
            raise PruneError(f"damping must be >= 0, got {self.damping}")


def kwon_prune(
    model: nn.Module, samples: SampleSet, task_kind: str, config: KwonConfig, progress: bool = True
) -> PruneResult:
    """Prune ``model`` with Kwon et al.'s method and return a compact copy with the tuned scales folded in.

    Args:
        model: A fine-tuned task model on ``samples.device``.
        samples: Training examples with labels (the Fisher information uses the task loss).
        task_kind: ``classification``, ``regression``, ``question_answering``, ``token_classification`` or
            ``multiple_choice``.
        config: Method settings.
        progress: Show tqdm progress (rank 0 only).
    """
    config.validate()
    check_task_kind(task_kind)
    label_keys = TASK_KIND_TABLE[task_kind].label_keys
    if any(k not in samples.all_batches[0] for k in label_keys):
        raise PruneError(
            f"Kwon et al.'s Fisher importance needs labelled samples ({', '.join(label_keys)}); the sample batches "
            "have none. Use the labelled training split."
        )
    run = PruningRun(model, samples, task_kind, config.seq_len, config.flops_batch_size)
    student, shape = run.student, run.shape
    with run.timed("fisher"):
        head_grads, neuron_grads = fisher_gradients(student, samples, task_kind)
    run.memory.add_cache("fisher_gradients", head_grads, neuron_grads)
    with run.timed("search"):
        costs = (run.head_flops, run.neuron_flops)
        kept = 1 - config.flops_reduction
        masks = _search_masks(shape, head_grads, neuron_grads, *costs, run.flops_dense * kept, config.rearrange)
        assistant = _search_masks(
            shape, head_grads, neuron_grads, *costs, run.flops_dense * math.sqrt(kept), config.rearrange
        )
    if config.mask_tuning:
        with run.timed("tune"):
            run.notes += tune_mask_scales(student, samples, masks, assistant, task_kind, config, progress)
    return run.result(freeze(compact(student, masks)), masks=masks)


def fisher_loss(model: nn.Module, samples: SampleSet, batch: dict, task_kind: str) -> torch.Tensor:
    """The loss of Kwon et al.'s Fisher information: the task loss on the batch's labels; for an embedding
    model (no labels) the in-batch contrastive loss against its own detached embeddings
    (:data:`kp_lightning.embedding.losses.FISHER_EMBEDDING_LOSS`, whose gradient at the dense model is not 0)."""
    if not TASK_KIND_TABLE[task_kind].pooled:
        return model(**samples.model_inputs(batch, with_labels=True)).loss
    inputs = samples.model_inputs(batch)
    embeddings = sentence_embeddings(model, model(**inputs), inputs.get("attention_mask"))
    return embedding_loss(embeddings, embeddings.detach(), FISHER_EMBEDDING_LOSS)


def fisher_gradients(
    model: nn.Module, samples: SampleSet, task_kind: str = "classification"
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-batch gradients of per-head and per-neuron masks at 1 of :func:`fisher_loss` (kprune.md §3.2).

    Returns:
        Per layer, ``[num_batches, heads]`` and ``[num_batches, neurons]`` gradients (summed over processes;
        each batch is measured by one process).
    """
    adapter = EncoderAdapter(model)
    device = samples.device
    n = len(samples)
    head_masks, neuron_masks, handles = [], [], []
    head_grads, neuron_grads = [], []
    for view in adapter.layers:
        head_masks.append(torch.ones(view.num_heads, device=device, requires_grad=True))
        neuron_masks.append(torch.ones(view.num_neurons, device=device, requires_grad=True))
        head_grads.append(torch.zeros(n, view.num_heads, dtype=torch.float64, device=device))
        neuron_grads.append(torch.zeros(n, view.num_neurons, dtype=torch.float64, device=device))
        if view.has_attention:
            handles.append(view.attention_out.register_forward_pre_hook(_scale(head_masks[-1], view.head_size)))
        if view.has_ffn:
            handles.append(view.ffn_down.register_forward_pre_hook(_scale(neuron_masks[-1], 1)))
    try:
        with torch.enable_grad():
            for i, batch in samples.batches():
                loss = fisher_loss(model, samples, batch, task_kind)
                if not torch.isfinite(loss):
                    raise PruneError(f"the task loss is {loss.item()} on sample batch {i}: check labels and model")
                loss.backward()
                for layer, (hm, nm) in enumerate(zip(head_masks, neuron_masks, strict=True)):
                    if hm.grad is not None:
                        head_grads[layer][i] = hm.grad.double()
                    if nm.grad is not None:
                        neuron_grads[layer][i] = nm.grad.double()
                    hm.grad = nm.grad = None
    finally:
        for h in handles:
            h.remove()
    for g in head_grads + neuron_grads:
        all_reduce_sum(g)
    return head_grads, neuron_grads


def _scale(mask: torch.Tensor, repeat: int):
    def hook(module, args):
        return (args[0] * mask.to(args[0].dtype).repeat_interleave(repeat),) + tuple(args[1:])

    return hook


def _search_masks(shape, head_grads, neuron_grads, f_head, f_neuron, budget, rearrange) -> StructuralMasks:
    """0/1 masks from the global search, then (optionally) rearranged within each layer."""
    head_importance = torch.cat([g.pow(2).sum(0) for g in head_grads])
    neuron_importance = torch.cat([g.pow(2).sum(0) for g in neuron_grads])
    if not (torch.isfinite(head_importance).all() and torch.isfinite(neuron_importance).all()):
        raise PruneError("NaN or infinite Fisher importance: the model gives non-finite gradients on the samples")
    try:
        keep_heads, keep_neurons = kwon_search(head_importance, neuron_importance, f_head, f_neuron, budget)
    except ValueError as err:
        raise PruneError(str(err)) from None
    masks = StructuralMasks.ones(shape, device=head_importance.device)
    for layer, (heads, neurons) in enumerate(
        zip(keep_heads.split(list(shape.heads)), keep_neurons.split(list(shape.neurons)), strict=True)
    ):
        if rearrange:
            heads = greedy_rearrange(heads, head_grads[layer])
            neurons = greedy_rearrange(neurons, neuron_grads[layer])
        masks.head[layer] = heads.float()
        masks.neuron[layer] = neurons.float()
    return masks


def greedy_rearrange(keep: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Kwon et al.'s per-layer rearrangement (kprune.md §3.4), keeping the number of pruned units.

    Starting from the lowest-Fisher units, each further unit (in ascending Fisher order) joins the pruned set,
    and the unit whose removal leaves the smallest ``‖Σ_{j∈P} g_j‖²`` leaves it (a block-diagonal Fisher
    approximation of the loss increase).

    Args:
        keep: Boolean keep mask of one layer's units.
        grads: ``[num_batches, units]`` per-batch gradients.
    """
    num_pruned = int((~keep).sum())
    if num_pruned == 0 or num_pruned == keep.numel():
        return keep
    g = grads.T.double().cpu()
    order = torch.argsort(g.pow(2).sum(1), stable=True).tolist()
    pruned = order[:num_pruned]
    for index in order[num_pruned:]:
        pruned.append(index)
        vectors = g[pruned]
        complement = vectors.sum(0) - vectors
        del pruned[int(complement.pow(2).sum(1).argmin())]
    out = torch.ones_like(keep)
    out[pruned] = False
    return out
