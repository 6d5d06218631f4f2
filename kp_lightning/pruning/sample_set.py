"""The sample set a pruning run measures: fixed batches, each run only by the process that owns it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from kp_lightning.data.task_kinds import LABELLED_TOKENS, TASK_KIND_TABLE

from .distributed import owned_batches
from .result import PruneError

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class SampleSet:
    """Batches of model inputs on one device.

    Multiple-choice batches (``input_ids`` of shape ``[batch, choices, seq]``) run the encoder on
    ``batch·choices`` sequences: token masks are flattened the same way, and lengths count per sequence.

    Attributes:
        num_samples: Examples (a multiple-choice question counts once).
        num_sequences: Encoder sequences (``num_samples × choices`` for multiple choice).
        num_tokens: Non-padding tokens of all sequences.
        mean_length: Mean non-padding length of one encoder sequence (the FLOPs model's default length).

    Args:
        batches: Collated batches (dicts of tensors) in a fixed order, identical on every process.
        device: Where to keep them.
        input_keys: Keys the model's ``forward`` accepts (others, e.g. ``idx``, are dropped).
    """

    def __init__(self, batches: Sequence[dict], device: torch.device | str, input_keys: Iterable[str]):
        if not batches:
            raise PruneError("the sample set is empty: give at least one full batch of training examples")
        keys = set(input_keys)
        self.device = torch.device(device)
        self.all_batches = [{k: v.to(self.device) for k, v in b.items() if k in keys} for b in batches]
        self.owned = owned_batches(len(self.all_batches))
        for b in self.all_batches:
            if "attention_mask" not in b:
                b["attention_mask"] = torch.ones_like(b["input_ids"])
        lengths = torch.tensor([float(b["attention_mask"].sum()) for b in self.all_batches], dtype=torch.float64)
        self.num_samples = sum(int(b["input_ids"].shape[0]) for b in self.all_batches)
        self.num_sequences = sum(int(self.token_mask(b).shape[0]) for b in self.all_batches)
        self.num_tokens = int(lengths.sum())
        self.mean_length = self.num_tokens / self.num_sequences

    def __len__(self) -> int:
        return len(self.all_batches)

    def batches(self) -> list[tuple[int, dict]]:
        """``(index, batch)`` for the batches this process owns."""
        return [(i, self.all_batches[i]) for i in self.owned]

    def model_inputs(self, batch: dict, with_labels: bool = False) -> dict:
        """The batch without labels (``with_labels=False``) or with them."""
        if with_labels:
            return batch
        return {k: v for k, v in batch.items() if k in MODEL_KEYS}

    def token_mask(self, batch: dict) -> torch.Tensor:
        """Boolean ``[sequences, seq]`` mask of the non-padding tokens, as the encoder sees them (a
        ``[batch, choices, seq]`` mask flattened to ``[batch·choices, seq]``)."""
        mask = batch["attention_mask"]
        return mask.reshape(-1, mask.shape[-1]).bool()

    def prediction_mask(self, batch: dict, task_kind: str) -> torch.Tensor:
        """Boolean mask of the tokens whose predictions are compared: for a kind whose predictions are
        ``labelled_tokens`` (token classification) the tokens that carry a label id, i.e. the first sub-token of
        each word (only the positions are read, never the label values); otherwise the non-padding tokens."""
        mask, labels = self.token_mask(batch), batch.get("labels")
        labelled = task_kind in TASK_KIND_TABLE and TASK_KIND_TABLE[task_kind].predictions == LABELLED_TOKENS
        if labelled and labels is not None and labels.shape == mask.shape:
            return mask & (labels != -100)
        return mask
