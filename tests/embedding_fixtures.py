"""Tiny sentence-transformers folders and sentence batches for embedding tests."""

from __future__ import annotations

import random
from pathlib import Path

from kp_lightning.embedding.pooling import Pooling
from kp_lightning.embedding.st_folder import write_sentence_transformers_files
from tests.text_fixtures import save_tiny_model, tiny_tokenizer

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "roof",
    "good",
    "bad",
    "movie",
    "plot",
    "river",
    "stone",
]


def save_st_model(directory: Path, arch: str = "bert", pooling: Pooling | None = None, seed: int = 0) -> Path:
    """A tiny random ``<Arch>Model`` saved as a sentence-transformers folder (default mean pooling, normalized)."""
    save_tiny_model(directory, "Model", arch, seed=seed)
    write_sentence_transformers_files(directory, pooling or Pooling("mean", True, 64), 32)
    return Path(directory)


def random_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(n)]


def sentence_batches(n: int = 48, batch_size: int = 16, seed: int = 0, token_type_ids: bool = True) -> list[dict]:
    """Tokenized random sentences, ``batch_size`` per batch."""
    tokenizer, texts = tiny_tokenizer(), random_sentences(n, seed)
    batches = []
    for start in range(0, n, batch_size):
        batch = dict(tokenizer(texts[start : start + batch_size], padding=True, return_tensors="pt"))
        if not token_type_ids:
            batch.pop("token_type_ids", None)
        batches.append(batch)
    return batches
