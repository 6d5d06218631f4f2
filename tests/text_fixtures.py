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


POSITIVE = ["good", "great", "fine", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull"]
NOUNS = ["movie", "plot", "cast", "story"]


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Learnable binary sentiment sentences: the adjective decides the label."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        adjective = rng.choice(POSITIVE if label else NEGATIVE)
        rows.append((f"the {rng.choice(NOUNS)} was {adjective}", label))
    return rows


def write_sst2(root: Path, n_train: int = 64, n_dev: int = 25, seed: int = 0) -> Path:
    """A classic-layout ``<root>/SST-2/{train,dev}.tsv``; returns ``root``."""
    folder = Path(root) / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, offset in (("train.tsv", n_train, 0), ("dev.tsv", n_dev, 1)):
        lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in sentiment_rows(n, seed + offset)]
        (folder / name).write_text("\n".join(lines) + "\n")
    return Path(root)


def write_stsb(root: Path, n_train: int = 48, n_dev: int = 20, seed: int = 0) -> Path:
    """A classic-layout ``<root>/STS-B`` with 10 columns and a score in the last one."""
    import random

    folder = Path(root) / "STS-B"
    folder.mkdir(parents=True, exist_ok=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for name, n, offset in (("train.tsv", n_train, 0), ("dev.tsv", n_dev, 1)):
        rng = random.Random(seed + offset)
        lines = [header]
        for i in range(n):
            a, b = rng.choice(NOUNS), rng.choice(NOUNS)
            score = 5.0 if a == b else rng.uniform(0, 2)
            lines.append(f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\ta {a} here\ta {b} there\t{score:.3f}")
        (folder / name).write_text("\n".join(lines) + "\n")
    return Path(root)


def write_squad_json(path: Path, n_articles: int = 3, questions_per_article: int = 4, seed: int = 0) -> Path:
    """A small SQuAD v1.1-format file whose answers are single nouns of the context."""
    import json
    import random

    rng = random.Random(seed)
    articles = []
    for a in range(n_articles):
        qas, paragraphs = [], []
        for q in range(questions_per_article):
            subject, place = rng.choice(NOUNS), rng.choice(["mat", "roof", "hill", "shore"])
            context = f"long ago the {subject} sat on the {place} and then it rested there for a while"
            start = context.index(place)
            qas = [{"id": f"a{a}q{q}", "question": "where did it sit?",
                    "answers": [{"text": place, "answer_start": start}]}]  # fmt: skip
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    Path(path).write_text(json.dumps({"version": "1.1", "data": articles}))
    return Path(path)
