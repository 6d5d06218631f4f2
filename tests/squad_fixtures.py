"""SQuAD test data: small official-layout files and tokenizers (shared by the SQuAD test modules)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import transformers
from tokenizers import pre_tokenizers

DEV_SET = Path(__file__).resolve().parents[2] / "shared/data/squad/dev-v1.1.json.zip"
MAX_LENGTH, DOC_STRIDE = 64, 16

LONG_CONTEXT = (
    "the old lighthouse stood on a rocky cape far from any town and every night its keeper climbed the narrow "
    "stairs to light the great lamp while ships passed safely through the dark strait below until one winter "
    "storm broke the glass and the keeper named tobias mended it with copper wire"
)
ARTICLES = [
    (
        "Foxes",
        "the quick brown fox jumps over the lazy dog",
        [("q1", "what jumps over the dog?", ["brown fox", "quick brown fox"])],
    ),
    (
        "Paris",
        "paris is the capital of france and a lovely city",
        [("q2", "what is the capital of france?", ["paris"]), ("q3", "where is paris?", ["france", "of france"])],
    ),
    ("Lighthouse", LONG_CONTEXT, [("q4", "who mended the lamp?", ["tobias"]), ("q5", "what cape?", ["rocky cape"])]),
    ("Rivers", "the river flows north into a cold sea", [("q6", "where does the river flow?", ["north"])]),
]


def squad_json(articles=ARTICLES, impossible: dict[str, str] | None = None) -> dict:
    """An official-layout SQuAD dict; `impossible` maps extra v2.0 question ids (added to article 0) to questions."""
    data = []
    for title, context, questions in articles:
        qas = [
            {"id": qid, "question": q, "answers": [{"text": a, "answer_start": context.index(a)} for a in answers]}
            for qid, q, answers in questions
        ]
        data.append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
    for qid, question in (impossible or {}).items():
        plausible = [{"text": "lazy dog", "answer_start": ARTICLES[0][1].index("lazy dog")}]
        qa = {"id": qid, "question": question, "answers": [], "plausible_answers": plausible, "is_impossible": True}
        data[0]["paragraphs"][0]["qas"].append(qa)
    return {"version": "v2.0" if impossible else "1.1", "data": data}


def write_json(path: Path, content) -> Path:
    path.write_text(json.dumps(content))
    return path


def write_zip(path: Path, members: dict[str, object]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, json.dumps(content))
    return path


def roberta_style_tokenizer():
    """A byte-level BPE (RoBERTa) fast tokenizer with no merges: one token per byte, no token_type_ids."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *alphabet])}
    return transformers.RobertaTokenizer(vocab=vocab, merges=[])


def squash(text: str) -> str:
    return text.lower().replace(" ", "")
