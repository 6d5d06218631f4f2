"""Bookkeeping shared by the retraining-free methods: input checks, the working copy, the FLOPs model,
phase timers, notes and the final ``PruneResult``."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ..core.adapter import EncoderAdapter
from ..core.compaction import compact, original_structure
from ..core.flops import encoder_flops, shape_head_flops, shape_neuron_flops
from ..core.masks import StructuralMasks
from ..data.task_kinds import PRUNABLE_KINDS
from .resources import MemoryTracker
from .result import PruneError, PruneResult, structure_within
from .sample_set import SampleSet

SUPPORTED_KINDS = PRUNABLE_KINDS


def check_reduction(value: float) -> None:
    """Raise unless ``value`` is a fraction of FLOPs to remove strictly between 0 and 1."""
    if not 0 < value < 1:
        raise PruneError(
            f"flops_reduction is the fraction of FLOPs to REMOVE and must be in (0, 1), got {value}",
            fix="a fraction such as 0.6 (60 % removed); for 'keep 40 %' (Kwon et al.'s convention) write 0.6",
        )


def check_flops_batch_size(value: int) -> None:
    """Raise unless ``value`` is a positive integer batch size."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PruneError(
            f"flops_batch_size must be a positive integer, got {value!r}",
            fix="the batch size the pruned model will be served at, e.g. 32 (1 counts every cost per sequence)",
        )


def check_task_kind(kind: str) -> None:
    """Raise unless ``kind`` is a task the retraining-free methods handle."""
    if kind not in SUPPORTED_KINDS:
        raise PruneError(
            f"retraining-free pruning needs a fine-tuned task model ({', '.join(SUPPORTED_KINDS)}); got a "
            f"{kind!r} task. Fine-tune the encoder on the task first with train.py."
        )


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients (measurement passes only need activation gradients)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class PruningRun:
    """One pruning run of ``model`` on ``samples``.

    Attributes:
        student: A frozen compact copy of ``model`` to prune (``model`` itself is never modified).
        shape: The student's sizes at the start.
        seq_len: Sequence length of the FLOPs model (``seq_len`` or the sample set's mean length).
        batch_size: Batch size of the FLOPs model (costs shared by a batch count ``1/batch_size`` per sequence).
        head_flops: FLOPs of one head at ``seq_len``.
        neuron_flops: FLOPs of one FFN neuron at ``seq_len``.
        flops_dense: Encoder FLOPs of ``model`` at ``seq_len``.
        seconds: Wall time per phase (see :meth:`timed`).
        notes: Messages for the report.
        memory: Cache and peak-memory tracker.
    """

    def __init__(
        self, model: nn.Module, samples: SampleSet, task_kind: str, seq_len: float | None, batch_size: int = 1
    ):
        check_task_kind(task_kind)
        self.start = time.perf_counter()
        self.model = model
        self.samples = samples
        self.memory = MemoryTracker(samples.device)
        self.student = freeze(compact(model, StructuralMasks.ones(EncoderAdapter(model).shape())))
        self.shape = EncoderAdapter(self.student).shape()
        self.seq_len = seq_len or samples.mean_length
        self.batch_size = batch_size
        self.head_flops = shape_head_flops(self.shape, self.seq_len, batch_size)
        self.neuron_flops = shape_neuron_flops(self.shape, self.seq_len)
        self.flops_dense = encoder_flops(self.shape, self.seq_len, batch_size)
        self.seconds: dict[str, float] = defaultdict(float)
        self.notes: list[str] = []

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the wall time of the block to ``seconds[phase]``."""
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - tick

    def result(self, pruned: nn.Module, masks: StructuralMasks | None = None) -> PruneResult:
        """The run's result for the final compact model ``pruned``."""
        self.memory.sample()
        seconds = dict(self.seconds)
        seconds["total"] = time.perf_counter() - self.start
        return PruneResult(
            model=pruned,
            structure=structure_within(original_structure(self.model), original_structure(pruned)),
            flops_dense=self.flops_dense,
            flops_pruned=encoder_flops(EncoderAdapter(pruned).shape(), self.seq_len, self.batch_size),
            seq_len=self.seq_len,
            flops_batch_size=self.batch_size,
            seconds=seconds,
            notes=self.notes,
            stats={
                "num_samples": self.samples.num_samples,
                "num_sequences": self.samples.num_sequences,
                "num_tokens": self.samples.num_tokens,
                "num_batches": len(self.samples),
                **self.memory.report(),
            },
            masks=masks,
        )
