"""The model and data folders of the check: a tiny random BERT and synthetic SST-2 (dry run), or an SST-2 slice."""

from __future__ import annotations

import random
from pathlib import Path

import torch
import transformers


def tiny_model_dir(directory: Path) -> Path:
    """A random 2-layer BERT and a letter-by-letter WordPiece tokenizer, saved (nothing downloaded)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters), *".,!?'"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def synthetic_sst2(root: Path, n_train: int, n_dev: int) -> Path:
    """``<root>/SST-2/{train,dev}.tsv`` of learnable sentiment sentences."""
    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            word = rng.choice(["good", "great", "fine"] if label else ["bad", "awful", "dull"])
            rows.append(f"the {rng.choice(['movie', 'plot', 'cast'])} was {word}\t{label}")
        (folder / name).write_text("\n".join(rows) + "\n")
    return root


def sst2_slice(glue_dir: Path, root: Path, train_examples: int) -> Path:
    """The first ``train_examples`` SST-2 training rows and the whole dev set, as ``<root>/SST-2``."""
    source = glue_dir / "SST-2"
    if not (source / "train.tsv").is_file():
        raise SystemExit(f"SST-2 not found under {glue_dir}: pass --glue-dir <folder holding SST-2/>")
    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    lines = (source / "train.tsv").read_text().splitlines()
    (folder / "train.tsv").write_text("\n".join(lines[: train_examples + 1]) + "\n")
    (folder / "dev.tsv").write_text((source / "dev.tsv").read_text())
    return root
