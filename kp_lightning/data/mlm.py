"""Masked-language-modelling data processing: token/whole-word masking, training and evaluation collators.

Plain Python (no Lightning). Corpus reading and block grouping live in :mod:`kp_lightning.data.corpus` and are
re-exported here, so a DataModule needs only this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from kp_lightning.data.corpus import check_block_size, load_text_corpus, read_text_files, tokenize_and_group
from kp_lightning.errors import ConfigError

__all__ = [
    "MLMCollator",
    "PaddingCollator",
    "check_block_size",
    "fixed_masking",
    "load_text_corpus",
    "mask_tokens",
    "read_text_files",
    "tokenize_and_group",
]

IGNORE_INDEX = -100


def _check_probabilities(mlm_probability: float, mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1):
    if not 0.0 < mlm_probability < 1.0:
        raise ConfigError(f"mlm_probability must be in (0, 1), got {mlm_probability!r}")
    for name, value in (("mask_replace_prob", mask_replace_prob), ("random_replace_prob", random_replace_prob)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
        raise ConfigError(
            f"mask_replace_prob + random_replace_prob must be <= 1 (the rest stays unchanged), got "
            f"{mask_replace_prob} + {random_replace_prob}"
        )


def _seed_from(*values: int) -> int:
    """A well-mixed 64-bit seed from integers, identical in every process (no Python ``hash``)."""
    return int(np.random.SeedSequence([int(v) % 2**64 for v in values]).generate_state(1, dtype=np.uint64)[0])


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    word_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of a batch of token ids.

    Each position not flagged in ``special_tokens_mask`` (flag padding there too) is selected with probability
    ``mlm_probability``; with ``word_ids`` (whole-word masking) each word is selected with that probability and all
    its tokens together. Each selected token independently becomes ``mask_token_id`` (``mask_replace_prob``), a
    uniformly random id in ``[0, vocab_size)`` (``random_replace_prob``), or stays unchanged (the rest).

    Args:
        input_ids: Token ids ``[B, L]``; not modified.
        special_tokens_mask: ``[B, L]``, true/1 where the position must never be selected (specials, padding).
        mask_token_id: Id of the mask token.
        vocab_size: Exclusive upper bound of random replacement ids.
        mlm_probability: Selection probability of a token (or word), in (0, 1).
        word_ids: Optional ``[B, L]`` word ids (equal within a word, unique per word within a row, < 0 for
            specials/padding) for whole-word masking.
        generator: Random generator (default: torch's global RNG).
        mask_replace_prob: Fraction of selected tokens replaced by the mask token.
        random_replace_prob: Fraction of selected tokens replaced by a random token.

    Returns:
        ``(masked_input_ids, labels)``, both LongTensors ``[B, L]``; labels hold the original id at selected
        positions and -100 elsewhere.
    """
    _check_probabilities(mlm_probability, mask_replace_prob, random_replace_prob)
    if input_ids.dim() != 2 or input_ids.shape != special_tokens_mask.shape:
        raise ConfigError(
            f"input_ids must be [B, L] and special_tokens_mask the same shape; got {tuple(input_ids.shape)} "
            f"and {tuple(special_tokens_mask.shape)}"
        )
    if word_ids is not None and word_ids.shape != input_ids.shape:
        raise ConfigError(f"word_ids shape {tuple(word_ids.shape)} must equal input_ids shape {tuple(input_ids.shape)}")
    if vocab_size <= 0:
        raise ConfigError(f"vocab_size must be positive, got {vocab_size}")
    device = input_ids.device
    rand_device = generator.device if generator is not None else device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=rand_device).to(device)

    candidates = ~special_tokens_mask.to(device=device, dtype=torch.bool)
    if word_ids is not None:
        word_ids = word_ids.to(device=device, dtype=torch.long)
        candidates &= word_ids >= 0
    if word_ids is None:
        selected = candidates & (uniform(*input_ids.shape) < mlm_probability)
    elif not candidates.any():
        selected = candidates
    else:
        # Compact (row, word) pairs to 0..N-1 so that sparse or large word ids cost nothing.
        row = torch.arange(input_ids.shape[0], device=device).unsqueeze(1)
        keys = (row * (int(word_ids.max()) + 1) + word_ids)[candidates]
        _, compact = torch.unique(keys, return_inverse=True)
        word_selected = uniform(int(compact.max()) + 1) < mlm_probability
        selected = torch.zeros_like(candidates)
        selected[candidates] = word_selected[compact]

    labels = input_ids.long().clone()
    labels[~selected] = IGNORE_INDEX
    masked = input_ids.long().clone()
    choice = uniform(*input_ids.shape)
    to_mask = selected & (choice < mask_replace_prob)
    to_random = selected & (choice >= mask_replace_prob) & (choice < mask_replace_prob + random_replace_prob)
    random_ids = torch.randint(vocab_size, tuple(input_ids.shape), generator=generator, device=rand_device).to(device)
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids[to_random]
    return masked, labels


def _pad(rows: Sequence, value: int) -> torch.Tensor:
    tensors = [torch.as_tensor(row, dtype=torch.long) for row in rows]
    return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=value)


def _require_ids(tokenizer, *names: str) -> None:
    missing = [name for name in names if getattr(tokenizer, name, None) is None]
    if missing:
        raise ConfigError(f"{type(tokenizer).__name__} has no {', '.join(missing)}; MLM needs mask and pad tokens")


def _special_mask(item: Mapping, special_ids: torch.Tensor) -> torch.Tensor:
    ids = torch.as_tensor(item["input_ids"], dtype=torch.long)
    if "special_tokens_mask" in item:
        return torch.as_tensor(item["special_tokens_mask"], dtype=torch.long)
    return torch.isin(ids, special_ids).long()


class MLMCollator:
    """Pads ``tokenize_and_group`` blocks and masks them with fresh randomness on every call (training).

    With ``seed``, the collator owns a generator; inside DataLoader workers it is re-seeded from ``seed`` and the
    worker's per-epoch seed, and under ``torch.distributed`` the rank is mixed in, so workers, epochs and ranks
    draw different masks. Without ``seed``, torch's global RNG is used (seeded per worker by the DataLoader).

    Args:
        tokenizer: Tokenizer with mask and pad tokens.
        mlm_probability: Selection probability, in (0, 1).
        whole_word_mask: Select whole words (needs ``word_ids`` in the items).
        seed: Optional seed of the collator's own generator.
    """

    def __init__(
        self, tokenizer, mlm_probability: float = 0.15, whole_word_mask: bool = False, seed: int | None = None
    ):
        _check_probabilities(mlm_probability)
        _require_ids(tokenizer, "mask_token_id", "pad_token_id")
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.whole_word_mask = whole_word_mask
        self.seed = seed
        self._special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self._generator: torch.Generator | None = None
        self._stream_key: tuple | None = None

    def _current_generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        rank = (
            torch.distributed.get_rank()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 0
        )
        key = (os.getpid(), None if info is None else info.seed, rank)
        if self._generator is None or key != self._stream_key:
            stream = [self.seed, rank] if info is None else [self.seed, rank, info.seed]
            self._generator = torch.Generator().manual_seed(_seed_from(*stream))
            self._stream_key = key
        return self._generator

    def __getstate__(self) -> dict:
        # The generator is re-created (and re-seeded) in the process that unpickles the collator.
        return {**self.__dict__, "_generator": None, "_stream_key": None}

    def __call__(self, features: list[Mapping]) -> dict[str, torch.Tensor]:
        """Pad and mask a list of blocks into ``input_ids``, ``attention_mask`` and ``labels`` ([B, L] long)."""
        if not features:
            raise ConfigError("MLMCollator got an empty list of features")
        if self.whole_word_mask and "word_ids" not in features[0]:
            raise ConfigError(
                "whole_word_mask=True needs 'word_ids' in every item (keep the tokenize_and_group column)"
            )
        pad_id = self.tokenizer.pad_token_id
        input_ids = _pad([f["input_ids"] for f in features], pad_id)
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        attention_mask = (torch.arange(input_ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()
        special = _pad([_special_mask(f, self._special_ids) for f in features], 1).bool() | (attention_mask == 0)
        word_ids = _pad([f["word_ids"] for f in features], -1) if self.whole_word_mask else None
        masked, labels = mask_tokens(
            input_ids,
            special,
            mask_token_id=self.tokenizer.mask_token_id,
            vocab_size=len(self.tokenizer),
            mlm_probability=self.mlm_probability,
            word_ids=word_ids,
            generator=self._current_generator(),
        )
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}


def fixed_masking(
    example: dict,
    index: int,
    *,
    tokenizer,
    mlm_probability: float = 0.15,
    whole_word_mask: bool = False,
    seed: int = 0,
) -> dict:
    """Mask one block deterministically from ``(seed, index)`` (for the evaluation set).

    Use as ``Dataset.map(fixed_masking, with_indices=True, fn_kwargs={"tokenizer": tok, ...},
    remove_columns=["special_tokens_mask", "word_ids"])``; the masks then do not depend on batch composition,
    worker count or sharding. Batch the result with :class:`PaddingCollator`.

    Args:
        example: One ``tokenize_and_group`` row (``input_ids``; ``special_tokens_mask`` and ``word_ids`` if present).
        index: Row index in the dataset.
        tokenizer: Tokenizer with a mask token.
        mlm_probability: Selection probability, in (0, 1).
        whole_word_mask: Select whole words (needs ``word_ids``).
        seed: Base seed.

    Returns:
        ``input_ids`` (masked), ``attention_mask`` and ``labels`` (-100 where not selected) as lists of ints.
    """
    _require_ids(tokenizer, "mask_token_id")
    if whole_word_mask and "word_ids" not in example:
        raise ConfigError("whole_word_mask=True needs a 'word_ids' column (keep the tokenize_and_group column)")
    input_ids = torch.as_tensor(example["input_ids"], dtype=torch.long).unsqueeze(0)
    special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    if example.get("attention_mask") is not None:
        attention_mask = torch.as_tensor(example["attention_mask"], dtype=torch.long)
    else:
        attention_mask = torch.ones(input_ids.shape[1], dtype=torch.long)
    special = (_special_mask(example, special_ids).bool() | (attention_mask == 0)).unsqueeze(0)
    word_ids = torch.as_tensor(example["word_ids"], dtype=torch.long).unsqueeze(0) if whole_word_mask else None
    generator = torch.Generator().manual_seed(_seed_from(seed, index))
    masked, labels = mask_tokens(
        input_ids,
        special,
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        mlm_probability=mlm_probability,
        word_ids=word_ids,
        generator=generator,
    )
    return {"input_ids": masked[0].tolist(), "attention_mask": attention_mask.tolist(), "labels": labels[0].tolist()}


class PaddingCollator:
    """Pads pre-masked items (from :func:`fixed_masking`): ``input_ids`` with the pad id, ``labels`` with -100.

    Args:
        tokenizer: Tokenizer with a pad token.
    """

    def __init__(self, tokenizer):
        _require_ids(tokenizer, "pad_token_id")
        self.pad_token_id = tokenizer.pad_token_id

    def __call__(self, features: list[Mapping]) -> dict[str, torch.Tensor]:
        """Pad a list of items into ``input_ids``, ``attention_mask`` and ``labels`` ([B, L] long)."""
        if not features:
            raise ConfigError("PaddingCollator got an empty list of features")
        if "labels" not in features[0]:
            raise ConfigError("PaddingCollator expects pre-masked items with 'labels' (map fixed_masking first)")
        return {
            "input_ids": _pad([f["input_ids"] for f in features], self.pad_token_id),
            "attention_mask": _pad([f["attention_mask"] for f in features], 0),
            "labels": _pad([f["labels"] for f in features], IGNORE_INDEX),
        }
