"""Drawing the sample set: which training examples, then fixed collated batches of them.

``sample_draw="ours"`` takes random examples without replacement until they hold a real token count;
``sample_draw="reference"`` reproduces the reference implementations (``reference_protocol``): a count derived
from a fixed per-task average length, drawn with replacement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .reference_protocol import reference_sample_indices
from .result import PruneError

SAMPLE_DRAWS = ("ours", "reference")


def check_sample_draw(sample_draw: str) -> None:
    """Raise unless ``sample_draw`` is one of ``SAMPLE_DRAWS``."""
    if sample_draw not in SAMPLE_DRAWS:
        raise PruneError(f"sample_draw must be one of {SAMPLE_DRAWS}, got {sample_draw!r}")


def example_tokens(input_ids: Sequence) -> int:
    """Tokens of one tokenized example: its length, or for a multiple-choice example (one token list per
    choice) the lengths of all its choices."""
    if len(input_ids) and isinstance(input_ids[0], list | tuple):
        return sum(len(choice) for choice in input_ids)
    return len(input_ids)


def token_budget_indices(dataset: Sequence[dict], num_tokens: int, seed: int = 0) -> list[int]:
    """Random distinct example indices, in draw order, until they hold ``num_tokens`` tokens (or the dataset ends).

    A multiple-choice example counts the tokens of all its choices (what the encoder runs on)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    picked, tokens, chunk = [], 0, 1024
    for start in range(0, len(order), chunk):
        ids = order[start : start + chunk]
        rows = dataset[ids] if hasattr(dataset, "select") else {"input_ids": [dataset[i]["input_ids"] for i in ids]}
        for index, input_ids in zip(ids, rows["input_ids"], strict=True):
            if tokens >= num_tokens:
                break
            picked.append(index)
            tokens += example_tokens(input_ids)
        if tokens >= num_tokens:
            break
    return picked


def draw_sample_indices(
    dataset: Sequence[dict],
    num_tokens: int,
    seed: int = 0,
    sample_draw: str = "ours",
    avg_length: float | None = None,
    num_samples: int | None = None,
) -> list[int]:
    """Indices of the sample set's examples, in batch order (the draw depends only on its arguments).

    Args:
        dataset: Tokenized examples (each with ``input_ids``), e.g. a ``datasets.Dataset``.
        num_tokens: Token count of the sample set (K-prune's default is 100K).
        seed: Seed of the draw.
        sample_draw: ``"ours"`` (distinct examples up to ``num_tokens`` real tokens) or ``"reference"``
            (``RandomState(seed).choice(len(dataset), k)``, with replacement, ``k = int(num_tokens / avg_length)``).
        avg_length: The task's reference average length (``"reference"`` only).
        num_samples: ``"reference"`` only: draw exactly this many examples instead.

    Raises:
        PruneError: unknown ``sample_draw``, non-positive ``num_tokens``, or a reference draw without ``avg_length``.
    """
    check_sample_draw(sample_draw)
    if num_tokens < 1:
        raise PruneError(f"num_tokens must be positive, got {num_tokens}")
    if sample_draw == "ours":
        if num_samples is not None:
            raise PruneError("num_samples applies to sample_draw: reference; sample_draw: ours counts num_tokens")
        return token_budget_indices(dataset, num_tokens, seed)
    if avg_length is None:
        raise PruneError("sample_draw: reference needs the task's reference average length (avg_length)")
    return reference_sample_indices(len(dataset), num_tokens, avg_length, seed, num_samples)


def collate_sample_batches(
    dataset: Sequence[dict], collate: Callable[[list[dict]], dict], indices: Sequence[int], batch_size: int
) -> list[dict]:
    """The examples ``indices`` (duplicates included) collated into batches of ``batch_size``, in order.

    Raises:
        PruneError: the sample set would be smaller than one batch.
    """
    if batch_size < 1:
        raise PruneError(f"batch_size must be positive, got {batch_size}")
    if len(indices) < batch_size:
        tokens = sum(example_tokens(dataset[i]["input_ids"]) for i in indices)
        raise PruneError(
            f"the sample set has {len(indices)} examples ({tokens} tokens), fewer than one batch of {batch_size}: "
            "raise num_tokens, lower the batch size, or give a larger training split"
        )
    return [collate([dataset[i] for i in indices[s : s + batch_size]]) for s in range(0, len(indices), batch_size)]


def draw_sample_batches(
    dataset: Sequence[dict],
    collate: Callable[[list[dict]], dict],
    num_tokens: int,
    batch_size: int,
    seed: int = 0,
    sample_draw: str = "ours",
    avg_length: float | None = None,
    num_samples: int | None = None,
) -> list[dict]:
    """The sample set's batches: :func:`draw_sample_indices`, then :func:`collate_sample_batches`.

    The draw depends only on ``seed``, so every process of a distributed run builds the same batches.

    Args:
        dataset: Tokenized examples (each with ``input_ids``), e.g. a ``datasets.Dataset``.
        collate: Collator producing padded batches.
        num_tokens: Token count of the sample set (K-prune's default is 100K); the whole dataset if larger.
        batch_size: Examples per batch.
        seed: Seed of the draw.
        sample_draw: ``"ours"`` or ``"reference"`` (see :func:`draw_sample_indices`).
        avg_length: The task's reference average length (``"reference"`` only).
        num_samples: ``"reference"`` only: draw exactly this many examples.

    Raises:
        PruneError: bad arguments, or the sample set would be smaller than one batch.
    """
    if num_tokens < 1 or batch_size < 1:
        raise PruneError(f"num_tokens and batch_size must be positive, got {num_tokens} and {batch_size}")
    indices = draw_sample_indices(dataset, num_tokens, seed, sample_draw, avg_length, num_samples)
    return collate_sample_batches(dataset, collate, indices, batch_size)
