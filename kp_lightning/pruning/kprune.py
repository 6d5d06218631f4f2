"""K-prune (Park et al., ICLR 2024): knowledge measurement, knowledge-preserving mask search and weight tuning,
sublayer by sublayer, bottom-up, with no retraining (kprune.md §2).

Efficiency beyond the reference code: the student's input to the current layer is cached, so each round runs
forward and backward only from that layer up; the teacher's targets are produced one layer at a time from a
cached teacher layer input (memory for one layer, not for all 2L sublayers); the normal equations are
accumulated during the measurement pass, so no per-token features are stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.adapter import EncoderAdapter
from ..core.compaction import compact
from ..core.masks import StructuralMasks
from ..embedding.losses import DEFAULT_EMBEDDING_LOSS, check_embedding_loss
from .distributed import all_reduce_sum, world
from .knowledge import (
    ATTENTION,
    KnowledgeProbe,
    output_projection,
    prediction_loss,
    prediction_outputs,
    present,
    sublayer_order,
)
from .layer_stream import embedding_output, layer_outputs, start_at_layer
from .least_squares import solve_normal_equations
from .mask_search import threshold_keep
from .pruning_run import PruningRun, check_flops_batch_size, check_reduction, freeze
from .result import PruneError, PruneResult
from .sample_set import SampleSet


@dataclass
class KPruneConfig:
    """K-prune settings (defaults from kprune.md §2.2).

    Attributes:
        flops_reduction: Fraction of encoder FLOPs to REMOVE, in (0, 1) (K-prune's convention).
        temperature: Softmax temperature γ of the predictive knowledge.
        lambda_pred: Weight of predictive knowledge.
        lambda_rep: Weight of representational knowledge (the README/run-script value, not argparse's 1e-5).
        mu: Multiplier of head scores (balances heads against neurons).
        weight_tuning: Re-solve each pruned sublayer's output projection by least squares (KPWT).
        seq_len: Sequence length of the FLOPs model; default the sample set's mean non-padding length.
        embedding_loss: Embedding tasks: the embedding-distillation loss of predictive knowledge
            (:mod:`kp_lightning.embedding.losses`).
        flops_batch_size: Deployment batch size of the FLOPs model: a cost shared by the batch (DeBERTa's
            relative-position projection) counts ``1/flops_batch_size`` per sequence; no effect on other models.
    """

    flops_reduction: float
    temperature: float = 2.0
    lambda_pred: float = 1.0
    lambda_rep: float = 2.5e-4
    mu: float = 64.0
    weight_tuning: bool = True
    seq_len: float | None = None
    embedding_loss: str = DEFAULT_EMBEDDING_LOSS
    flops_batch_size: int = 1

    def validate(self) -> None:
        check_reduction(self.flops_reduction)
        check_flops_batch_size(self.flops_batch_size)
        if self.temperature <= 0:
            raise PruneError(f"temperature must be positive, got {self.temperature}")
        if self.lambda_pred < 0 or self.lambda_rep < 0 or self.lambda_pred + self.lambda_rep == 0:
            raise PruneError("lambda_pred and lambda_rep must be >= 0 and not both 0")
        if self.mu <= 0:
            raise PruneError(f"mu must be positive, got {self.mu}")
        check_embedding_loss(self.embedding_loss)


def kprune(
    model: nn.Module, samples: SampleSet, task_kind: str, config: KPruneConfig, progress: bool = True
) -> PruneResult:
    """Prune ``model`` with K-prune and return a physically compact copy (``model`` is not modified).

    Args:
        model: A fine-tuned task model (stock or compact), on ``samples.device``.
        samples: The sample set (training examples; label values are not used: for token classification only
            which tokens carry a label id, the first sub-token of each word).
        task_kind: ``classification``, ``regression``, ``question_answering``, ``token_classification`` or
            ``multiple_choice`` (``kp_lightning.data.task_kinds.PRUNABLE_KINDS``).
        config: Method settings.
        progress: Show a tqdm bar per sublayer (rank 0 only).
    """
    config.validate()
    run = PruningRun(model, samples, task_kind, config.seq_len, config.flops_batch_size)
    student, memory = run.student, run.memory
    budget = run.flops_dense * (1 - config.flops_reduction)

    soft, teacher_hidden = {}, {}
    with run.timed("teacher"), torch.no_grad():
        for i, batch in samples.batches():
            inputs = samples.model_inputs(batch)
            soft[i] = prediction_outputs(task_kind, student, student(**inputs), inputs)
            teacher_hidden[i] = embedding_output(student, inputs)
    student_hidden = dict(teacher_hidden)
    memory.add_cache("teacher_predictions", soft)

    bar = tqdm(sublayer_order(run.shape.num_layers), desc="K-prune", disable=not progress or world()[0] != 0)
    targets: dict[int, dict[str, torch.Tensor]] = {}
    for sub in bar:
        bar.set_postfix_str(str(sub))
        adapter = EncoderAdapter(student)
        if sub.kind == ATTENTION:  # the dense layer's targets, while it is still unpruned
            with run.timed("teacher"):
                capture = _norm_modules(adapter, sub.layer)
                for i, batch in samples.batches():
                    teacher_hidden[i], targets[i] = layer_outputs(
                        student, sub.layer, teacher_hidden[i], samples.model_inputs(batch), capture
                    )
            memory.add_cache("teacher_layer", teacher_hidden, targets, student_hidden)
        if present(adapter, sub):
            with run.timed("measure"):
                probe = _measure(student, sub, samples, soft, student_hidden, targets, task_kind, config)
            with run.timed("search"):
                keep = _search(probe, sub, samples, config, run, budget)
            with run.timed("tune"):
                student, kept_flops, note = _prune_and_tune(student, probe, sub, keep, config, run)
            budget -= kept_flops
            run.notes += [note] if note else []
        if sub.kind != ATTENTION:
            with run.timed("advance"):
                for i, batch in samples.batches():
                    inputs = samples.model_inputs(batch)
                    student_hidden[i], _ = layer_outputs(student, sub.layer, student_hidden[i], inputs)
        memory.sample()
    return run.result(student)


def _norm_modules(adapter: EncoderAdapter, layer: int) -> dict[str, nn.Module | None]:
    """Where the layer's kept sublayers' residual sums are read (:meth:`LayerView.sum_input`)."""
    view = adapter.layers[layer]
    capture = {}
    if view.has_attention:
        capture["attention"] = view.sum_input("attention")
    if view.has_ffn:
        capture["ffn"] = view.sum_input("ffn")
    return capture


def _measure(student, sub, samples, soft, student_hidden, targets, task_kind, config) -> KnowledgeProbe:
    """One pass over the sample set from ``sub``'s layer up: knowledge of every unit and the target's system."""
    probe = KnowledgeProbe(student, sub)
    backward = sub.order > 0 and config.lambda_pred > 0  # round 0: student == teacher, the KL gradient is 0
    with start_at_layer(student, sub.layer) as feed, probe, torch.set_grad_enabled(backward):
        for i, batch in samples.batches():
            inputs = samples.model_inputs(batch)
            feed.hidden = student_hidden[i]
            probe.token_mask = samples.token_mask(batch)
            probe.teacher_sum = targets[i][sub.kind]
            out = student(**inputs)
            if backward:
                student_out = prediction_outputs(task_kind, student, out, inputs)
                mask = samples.prediction_mask(batch, task_kind)
                loss = prediction_loss(task_kind, student_out, soft[i], mask, config.temperature, config.embedding_loss)
                loss.backward()
                probe.after_backward()
    for s in probe.subs:
        all_reduce_sum(probe.pred[s])
        all_reduce_sum(probe.rep[s])
    if probe.gram is None:  # this process owned no batch
        width = output_projection(probe.adapter, sub).in_features
        hidden = probe.adapter.hidden_size
        probe.gram = torch.zeros(width, width, dtype=torch.float64, device=samples.device)
        probe.rhs = torch.zeros(width, hidden, dtype=torch.float64, device=samples.device)
    all_reduce_sum(probe.gram)
    all_reduce_sum(probe.rhs)
    return probe


def _search(probe, sub, samples, config, run: PruningRun, budget: float):
    """KPMS: one score-per-FLOP threshold over all units from ``sub`` up; returns the target's keep mask."""
    scores, flops, owners = [], [], []
    for s in probe.subs:
        k_pred = probe.pred[s] / samples.num_samples
        k_rep = probe.rep[s] / samples.num_tokens
        knowledge = config.lambda_pred * k_pred + config.lambda_rep * k_rep
        if s.kind == ATTENTION:
            score = config.mu * knowledge.view(-1, run.shape.head_size).mean(1) / run.head_flops
            cost = run.head_flops
        else:
            score = knowledge / run.neuron_flops
            cost = run.neuron_flops
        if not torch.isfinite(score).all():
            raise PruneError(
                f"NaN or infinite knowledge scores at {s} while pruning {sub}: the model produces non-finite "
                "activations or gradients on the sample set. Check the model loads correctly and run in float32."
            )
        scores.append(score)
        flops.append(torch.full_like(score, cost))
        owners.append(s)
    keep = threshold_keep(torch.cat(scores), torch.cat(flops), budget)
    target_index = owners.index(sub)
    start = sum(len(s) for s in scores[:target_index])
    return keep[start : start + len(scores[target_index])]


def _prune_and_tune(student, probe, sub, keep, config, run: PruningRun):
    """Slice away the target's pruned units and re-solve its output projection (KPWT)."""
    adapter = EncoderAdapter(student)
    shape = adapter.shape()
    masks = StructuralMasks.ones(shape, device=keep.device)
    kept = torch.nonzero(keep).flatten()
    if sub.kind == ATTENTION:
        masks.head[sub.layer] = keep.to(masks.head[sub.layer].dtype)
        dims = (kept[:, None] * shape.head_size + torch.arange(shape.head_size, device=keep.device)).flatten()
        kept_flops = len(kept) * run.head_flops
    else:
        masks.neuron[sub.layer] = keep.to(masks.neuron[sub.layer].dtype)
        dims = kept
        kept_flops = len(kept) * run.neuron_flops
    pruned = freeze(compact(student, masks))
    note = None
    if len(kept) and config.weight_tuning:
        solution = solve_normal_equations(probe.gram[dims][:, dims], probe.rhs[dims])
        proj = output_projection(EncoderAdapter(pruned), sub)
        proj.weight = nn.Parameter(solution.x.T.to(proj.weight.dtype).contiguous(), requires_grad=False)
        if solution.ridge:
            note = (
                f"{sub}: the least-squares system was singular; solved with ridge {solution.ridge:.3g} "
                "(more sample tokens would avoid this)"
            )
    return pruned, kept_flops, note
