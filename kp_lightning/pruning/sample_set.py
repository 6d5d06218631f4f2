"""The sample set a pruning run measures: fixed batches, each run only by the process that owns it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .distributed import owned_batches
from .result import PruneError

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class SampleSet:
    """Batches of model inputs on one device.

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
        self.num_tokens = int(lengths.sum())
        self.mean_length = self.num_tokens / self.num_samples

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
        """Boolean ``[batch, seq]`` mask of the non-padding tokens."""
        return batch["attention_mask"].bool()
