"""Entity-level precision, recall and F1 with seqeval's default (conlleval) semantics, in plain Python.

Tags are ``O`` or ``<prefix>-<type>`` with prefix ``B``, ``I``, ``E`` or ``S``, so IOB1, IOB2 and IOBES tagged
sequences are all read the way ``seqeval.metrics.f1_score(y_true, y_pred)`` (no ``mode``) reads them: a chunk
ends and starts at the same boundaries as in seqeval's ``get_entities``, e.g. an ``I-`` after ``O`` or after
another type starts an entity (IOB1), ``E-``/``S-`` close one (IOBES). Scores are micro averages over every
entity of every sentence; a score whose denominator is 0 is 0 (seqeval's ``zero_division`` default).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PREFIXES = ("B", "I", "E", "S")
ENTITY_METRICS = ("f1", "precision", "recall", "accuracy")
"""What :meth:`EntityCounts.scores` gives, main metric first."""


def split_tag(tag: str) -> tuple[str, str]:
    """``(prefix, type)`` of a tag: ``"B-PER"`` → ``("B", "PER")``, ``"O"`` → ``("O", "_")``."""
    prefix = tag[:1]
    entity_type = tag[1:].split("-", maxsplit=1)[-1] or "_"
    return prefix, entity_type


def is_valid_tag(tag: str) -> bool:
    """Whether seqeval reads ``tag`` as a tag (``O``, or ``B-``/``I-``/``E-``/``S-`` and a type)."""
    return tag == "O" or (len(tag) > 2 and tag[0] in PREFIXES and tag[1] == "-")


def _ends(prev_tag: str, tag: str, prev_type: str, entity_type: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != entity_type


def _starts(prev_tag: str, tag: str, prev_type: str, entity_type: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != entity_type


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entities of one tagged sentence as ``(type, first, last)`` token positions (inclusive)."""
    found = set()
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, entity_type = split_tag(chunk)
        if _ends(prev_tag, tag, prev_type, entity_type):
            found.add((prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, entity_type):
            begin = i
        prev_tag, prev_type = tag, entity_type
    return found


@dataclass
class EntityCounts:
    """Sums that the scores are made of (they add up over sentences, batches and processes).

    Attributes:
        correct: Predicted entities that are gold entities (same type, same span).
        predicted: Predicted entities.
        gold: Gold entities.
        correct_tags: Tokens whose predicted tag equals the gold tag.
        tags: Tokens scored.
    """

    correct: int = 0
    predicted: int = 0
    gold: int = 0
    correct_tags: int = 0
    tags: int = 0

    def add(self, gold: Sequence[str], predicted: Sequence[str]) -> EntityCounts:
        """Add one sentence (gold and predicted tags, same length); returns ``self``."""
        if len(gold) != len(predicted):
            raise ValueError(f"gold and predicted tags differ in length: {len(gold)} vs {len(predicted)}")
        true_entities, pred_entities = entities(gold), entities(predicted)
        self.correct += len(true_entities & pred_entities)
        self.predicted += len(pred_entities)
        self.gold += len(true_entities)
        self.correct_tags += sum(g == p for g, p in zip(gold, predicted, strict=True))
        self.tags += len(gold)
        return self

    def scores(self) -> dict[str, float]:
        """``precision``, ``recall``, ``f1`` (entity level, micro) and ``accuracy`` (per token)."""
        precision = self.correct / self.predicted if self.predicted else 0.0
        recall = self.correct / self.gold if self.gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        accuracy = self.correct_tags / self.tags if self.tags else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}


def entity_scores(gold: Iterable[Sequence[str]], predicted: Iterable[Sequence[str]]) -> dict[str, float]:
    """Scores of tagged sentences: ``entity_scores([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])``."""
    counts = EntityCounts()
    for g, p in zip(gold, predicted, strict=True):
        counts.add(g, p)
    return counts.scores()
