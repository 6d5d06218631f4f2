"""What each task kind needs from the model and the data: one table entry per kind.

The model head, the loss-free comparison of predictions (distillation, K-prune's predictive knowledge), the
gold-label keys (Kwon et al.'s Fisher), whether the head's size comes from the label set, and the Hub pipeline
tag differ between kinds; code reads them here instead of branching on the kind's name.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQUENCE, VALUE, SPAN, ALL_TOKENS, LABELLED_TOKENS = "sequence", "value", "span", "all_tokens", "labelled_tokens"
EMBEDDING = "embedding"
"""How two models' predictions are compared: KL per example (``sequence``), MSE (``value``), start/end KL over the
non-padding positions (``span``), KL per token over every non-padding token (``all_tokens``) or over the tokens
that carry a label id, i.e. the first sub-token of each word (``labelled_tokens``), or an embedding-distillation
loss between pooled sentence embeddings (``embedding``: :mod:`kp_lightning.embedding.losses`)."""


@dataclass(frozen=True)
class TaskKind:
    """One kind of task.

    Attributes:
        head: Suffix of the model class (``ForTokenClassification``), a key of the layout table's ``heads``.
        auto_class: The transformers Auto class that loads such a model.
        pipeline_tag: Hub ``pipeline_tag`` of a model card.
        predictions: How predictions are compared (one of the constants above).
        outputs: Model outputs holding the predictions.
        label_keys: Batch keys holding gold labels.
        sized_by_labels: The head has one output per label: a trained head of another size is refused at load.
        named_labels: The label names must also equal the trained head's ``id2label`` (entity tags).
        first_token_readout: The head reads only the first token of each sequence (Kwon et al. fit the last FFN
            there).
        prunable: Retraining-free pruning (K-prune, Kwon et al.) applies to it.
        min_labels: Fewest labels (classes, tags or choices, ``TaskSpec.num_labels``) a task of this kind has.
        pooled: The model's output is a pooled sentence embedding (``sentence_embedding``, from the last hidden
            state and the model's pooling settings: :mod:`kp_lightning.embedding.pooling`).
        eval_loss: Evaluation batches carry labels, so a validation loss is logged.
    """

    head: str
    auto_class: str
    pipeline_tag: str
    predictions: str
    outputs: tuple[str, ...] = ("logits",)
    label_keys: tuple[str, ...] = ("labels",)
    sized_by_labels: bool = False
    named_labels: bool = False
    first_token_readout: bool = False
    prunable: bool = True
    min_labels: int = 0
    pooled: bool = False
    eval_loss: bool = True


TASK_KIND_TABLE: dict[str, TaskKind] = {
    "classification": TaskKind(
        "ForSequenceClassification",
        "AutoModelForSequenceClassification",
        "text-classification",
        SEQUENCE,
        sized_by_labels=True,
        first_token_readout=True,
        min_labels=2,
    ),
    "regression": TaskKind(
        "ForSequenceClassification",
        "AutoModelForSequenceClassification",
        "text-classification",
        VALUE,
        sized_by_labels=True,
    ),
    "question_answering": TaskKind(
        "ForQuestionAnswering",
        "AutoModelForQuestionAnswering",
        "question-answering",
        SPAN,
        outputs=("start_logits", "end_logits"),
        label_keys=("start_positions", "end_positions"),
        eval_loss=False,  # evaluation windows carry no positions
    ),
    "masked_lm": TaskKind("ForMaskedLM", "AutoModelForMaskedLM", "fill-mask", ALL_TOKENS, prunable=False),
    "token_classification": TaskKind(
        "ForTokenClassification",
        "AutoModelForTokenClassification",
        "token-classification",
        LABELLED_TOKENS,
        sized_by_labels=True,
        named_labels=True,
        min_labels=2,
    ),
    "multiple_choice": TaskKind(
        "ForMultipleChoice",
        "AutoModelForMultipleChoice",
        "multiple-choice",
        SEQUENCE,
        first_token_readout=True,
        min_labels=2,
    ),
    "embedding": TaskKind(
        "Model",
        "AutoModel",
        "sentence-similarity",
        EMBEDDING,
        outputs=("sentence_embedding",),
        label_keys=(),
        pooled=True,
        eval_loss=False,
    ),
}

TASK_KINDS = tuple(TASK_KIND_TABLE)
PRUNABLE_KINDS = tuple(name for name, kind in TASK_KIND_TABLE.items() if kind.prunable)


def task_kind(name: str) -> TaskKind:
    """The table entry of a kind name.

    Raises:
        KeyError: not a known kind (``TaskSpec`` refuses those with a message first).
    """
    return TASK_KIND_TABLE[name]
