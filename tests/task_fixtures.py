"""Small NER (CoNLL) and SWAG-style data files, and tiny token-classification / multiple-choice models."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import transformers

from tests.helpers import tiny_model
from tests.text_fixtures import tiny_tokenizer

PERSONS = [["ann"], ["bob"], ["eve", "li"]]
PLACES = [["rome"], ["oslo"], ["new", "york"]]
ORGS = [["acme"], ["big", "corp"]]
TEMPLATES = [
    ("PER", "lives in", "LOC"),
    ("PER", "works for", "ORG"),
    ("ORG", "opened in", "LOC"),
    ("the", "trip to", "LOC"),
]
NER_LABELS = ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]  # sorted, as inferred from data


def _entity(kind: str, rng: random.Random) -> tuple[list[str], list[str]]:
    words = rng.choice({"PER": PERSONS, "LOC": PLACES, "ORG": ORGS}[kind])
    return list(words), [("B-" if i == 0 else "I-") + kind for i in range(len(words))]


def ner_sentences(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Learnable IOB2-tagged sentences: the entity lists decide the tags."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        first, middle, last = rng.choice(TEMPLATES)
        words, tags = _entity(first, rng) if first.isupper() else ([first], ["O"])
        words += middle.split()
        tags += ["O"] * len(middle.split())
        entity, entity_tags = _entity(last, rng)
        sentences.append((words + entity, tags + entity_tags))
    return sentences


def write_conll(path: Path, n: int = 40, seed: int = 0, docstart: bool = True) -> Path:
    """A CoNLL-2003-style file (token, POS, chunk, label) with a -DOCSTART- line and blank lines."""
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for words, tags in ner_sentences(n, seed):
        lines += [f"{w} NN I-NP {t}" for w, t in zip(words, tags, strict=True)] + [""]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def save_token_model(directory: Path, arch: str = "bert", labels: list[str] | None = None, seed: int = 0) -> Path:
    """A tiny `<Arch>ForTokenClassification` (head saved, so it counts as trained) with the tiny tokenizer."""
    labels = labels or NER_LABELS
    model = tiny_model(arch, "ForTokenClassification", seed=seed)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    model.config.num_labels = len(labels)
    model = type(model)(model.config).eval()
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return Path(directory)


def save_choice_model(directory: Path, arch: str = "bert", seed: int = 0) -> Path:
    """A tiny `<Arch>ForMultipleChoice` (head saved) with the tiny tokenizer."""
    tiny_model(arch, "ForMultipleChoice", seed=seed).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return Path(directory)


def tiny_roberta_tokenizer(directory: Path) -> transformers.PreTrainedTokenizerBase:
    """A byte-level BPE (RoBERTa) tokenizer without merges, saved to ``directory`` (loads without prefix space)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "Ġ", *letters])}
    tokenizer = transformers.RobertaTokenizer(vocab=vocab, merges=[])
    tokenizer.save_pretrained(directory)
    return tokenizer


SUBJECTS = ["the cat", "a dog", "the bird", "my friend"]
VERBS = ["sat", "ran", "sang", "slept"]


def swag_rows(n: int, seed: int = 0, choices: int = 4) -> list[dict]:
    """SWAG-style rows: the right ending repeats the context's verb."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        subject, verb = rng.choice(SUBJECTS), rng.choice(VERBS)
        label = rng.randrange(choices)
        others = [v for v in VERBS if v != verb]
        endings = [f"it {verb} again" if c == label else f"it {rng.choice(others)} once" for c in range(choices)]
        row = {"video-id": f"v{i}", "sent1": f"{subject} {verb}", "sent2": "then", "label": label}
        row.update({f"ending{c}": e for c, e in enumerate(endings)})
        rows.append(row)
    return rows


def write_swag_csv(path: Path, n: int = 24, seed: int = 0) -> Path:
    rows = swag_rows(n, seed)
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)
