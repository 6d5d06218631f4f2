"""Drawing the sample set: random training examples up to a token count, collated into fixed batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .result import PruneError


def draw_sample_batches(
    dataset: Sequence[dict],
    collate: Callable[[list[dict]], dict],
    num_tokens: int,
    batch_size: int,
    seed: int = 0,
) -> list[dict]:
    """Random examples (without replacement) until they hold ``num_tokens`` tokens, in batches.

    The draw depends only on ``seed``, so every process of a distributed run builds the same batches.

    Args:
        dataset: Tokenized examples (each with ``input_ids``), e.g. a ``datasets.Dataset``.
        collate: Collator producing padded batches.
        num_tokens: Token count of the sample set (K-prune's default is 100K); the whole dataset if larger.
        batch_size: Examples per batch.
        seed: Seed of the draw.

    Raises:
        PruneError: the sample set would be smaller than one batch.
    """
    if num_tokens < 1 or batch_size < 1:
        raise PruneError(f"num_tokens and batch_size must be positive, got {num_tokens} and {batch_size}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    picked, tokens, chunk = [], 0, 1024
    for start in range(0, len(order), chunk):
        ids = [order[i] for i in range(start, min(start + chunk, len(order)))]
        rows = dataset[ids] if hasattr(dataset, "select") else {"input_ids": [dataset[i]["input_ids"] for i in ids]}
        for index, input_ids in zip(ids, rows["input_ids"], strict=True):
            if tokens >= num_tokens:
                break
            picked.append(index)
            tokens += len(input_ids)
        if tokens >= num_tokens:
            break
    if len(picked) < batch_size:
        raise PruneError(
            f"the sample set has {len(picked)} examples ({tokens} tokens), fewer than one batch of {batch_size}: "
            "raise num_tokens, lower the batch size, or give a larger training split"
        )
    return [collate([dataset[i] for i in picked[s : s + batch_size]]) for s in range(0, len(picked), batch_size)]
