"""The nine GLUE tasks: columns, label sets, official metrics and the classic ``glue_data`` file layout."""

from __future__ import annotations

from dataclasses import dataclass

from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.errors import ConfigError


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task.

    Attributes:
        name: Hub config name (``nyu-mll/glue``), e.g. ``"sst2"``.
        folder: Folder name in the classic ``glue_data`` layout, e.g. ``"SST-2"``.
        text_columns: Hub column names of the one or two input texts.
        label_names: Class names in hub label-id order; empty for regression.
        metrics: Official metrics, main one first.
        eval_splits: Hub split names used for evaluation.
        tsv_files: Classic file name per split (``train`` and each eval split).
        tsv_header: Whether the classic TSV files have a header row.
        tsv_text_fields: Classic TSV column (header name, or index without header) of each input text.
        tsv_label_field: Classic TSV column of the label.
    """

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...]
    tsv_files: dict
    tsv_header: bool
    tsv_text_fields: tuple
    tsv_label_field: str | int

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    def task_spec(self) -> TaskSpec:
        return TaskSpec(
            name=self.name,
            kind="regression" if self.is_regression else "classification",
            num_labels=1 if self.is_regression else len(self.label_names),
            label_names=list(self.label_names),
            metrics=list(self.metrics),
            eval_splits=[split.removeprefix("validation_") for split in self.eval_splits],
        )


_DEV = {"train": "train.tsv", "validation": "dev.tsv"}
_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), ("mcc",), ("validation",),
                 _DEV, False, (3,), 1),
        GlueTask("sst2", "SST-2", ("sentence",), ("negative", "positive"), ("accuracy",), ("validation",),
                 _DEV, True, ("sentence",), "label"),
        GlueTask("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1"),
                 ("validation",), _DEV, True, ("#1 String", "#2 String"), "Quality"),
        GlueTask("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"),
                 ("validation",), _DEV, True, ("question1", "question2"), "is_duplicate"),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), (), ("pearson", "spearman"), ("validation",),
                 _DEV, True, ("sentence1", "sentence2"), "score"),
        GlueTask("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                 ("accuracy",), ("validation_matched", "validation_mismatched"),
                 {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                  "validation_mismatched": "dev_mismatched.tsv"},
                 True, ("sentence1", "sentence2"), "gold_label"),
        GlueTask("qnli", "QNLI", ("question", "sentence"), _NLI2, ("accuracy",), ("validation",),
                 _DEV, True, ("question", "sentence"), "label"),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), _NLI2, ("accuracy",), ("validation",),
                 _DEV, True, ("sentence1", "sentence2"), "label"),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",),
                 ("validation",), _DEV, True, ("sentence1", "sentence2"), "label"),
    )
}  # fmt: skip


def glue_task(name: str) -> GlueTask:
    """Look up a GLUE task by name (case and dashes ignored: ``SST-2`` == ``sst2``)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise ConfigError(f"unknown GLUE task {name!r}", fix=f"one of {', '.join(sorted(GLUE_TASKS))}")
    return GLUE_TASKS[key]
