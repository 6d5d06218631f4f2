"""A tiny in-process WordPiece tokenizer and saved tiny model directories for data and training tests."""

from __future__ import annotations

import string
from pathlib import Path

import transformers

from tests.helpers import tiny_model

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = (
    SPECIAL_TOKENS
    + list(string.ascii_lowercase)
    + ["##" + c for c in string.ascii_lowercase]
    + list(string.digits)
    + list(".,!?'\"-:;()")
)


def tiny_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """A fast lower-casing WordPiece tokenizer that spells any word letter by letter (78 tokens)."""
    return transformers.BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)})


def save_tiny_model(directory: Path, task: str, arch: str = "bert", seed: int = 0, **config_overrides) -> Path:
    """Save a tiny random `<Arch><task>` model and the tiny tokenizer into `directory`; return it."""
    model = tiny_model(arch, task, seed=seed)
    for key, value in config_overrides.items():
        setattr(model.config, key, value)
    if "num_labels" in config_overrides:
        model = type(model)(model.config)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return Path(directory)
