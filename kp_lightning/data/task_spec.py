"""What a data module tells a LightningModule about its task: head kind, labels, metrics, eval splits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kp_lightning.data.task_kinds import TASK_KINDS, task_kind
from kp_lightning.errors import ConfigError

METRIC_NAMES = (
    "accuracy",
    "f1",
    "precision",
    "recall",
    "mcc",
    "pearson",
    "spearman",
    "exact_match",
    "perplexity",
    "ndcg10",
    "mrr10",
    "recall1",
    "recall10",
)


@dataclass
class TaskSpec:
    """Task description shared by data modules and LightningModules.

    Attributes:
        name: Task name, e.g. ``"sst2"``, ``"squad"``, ``"mlm"`` or a user's own name.
        kind: One of ``TASK_KINDS`` (``kp_lightning.data.task_kinds``); selects the model head and the loss.
        num_labels: Output size of a classification head (1 for regression), the number of tags of a token
            classification head, the number of choices of a multiple-choice task; 0 otherwise.
        label_names: Class names (or entity tags, ``O``, ``B-PER``...) in label-id order.
        metrics: Metric names from ``METRIC_NAMES``, the first one is the task's main metric.
        eval_splits: Names of the evaluation splits (MNLI has ``matched`` and ``mismatched``).
        allow_impossible: SQuAD v2 style unanswerable questions.
    """

    name: str
    kind: str
    num_labels: int = 0
    label_names: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    allow_impossible: bool = False

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"Unknown task kind {self.kind!r} for task {self.name!r}; use one of {TASK_KINDS}.")
        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        if unknown:
            raise ConfigError(f"Unknown metric(s) {unknown} for task {self.name!r}; known metrics: {METRIC_NAMES}.")
        kind = task_kind(self.kind)
        if self.num_labels < kind.min_labels:
            raise ConfigError(
                f"{self.kind} task {self.name!r} needs num_labels >= {kind.min_labels} (classes, tags or choices), "
                f"got {self.num_labels}."
            )
        if kind.named_labels and len(self.label_names) != self.num_labels:
            raise ConfigError(f"{self.kind} task {self.name!r} needs a name for each of its {self.num_labels} labels.")
        if self.kind == "regression" and self.num_labels != 1:
            raise ConfigError(f"Regression task {self.name!r} must have num_labels == 1, got {self.num_labels}.")
        if self.label_names and len(self.label_names) != self.num_labels:
            raise ConfigError(
                f"Task {self.name!r} lists {len(self.label_names)} label names for {self.num_labels} labels."
            )
        if not self.eval_splits:
            raise ConfigError(f"Task {self.name!r} needs at least one evaluation split name.")

    @property
    def main_metric(self) -> str:
        """Logged name of the metric used for model selection, e.g. ``val/accuracy``."""
        prefix = "val/" if len(self.eval_splits) == 1 else f"val/{self.eval_splits[0]}/"
        return prefix + (self.metrics[0] if self.metrics else "loss")

    def to_dict(self) -> dict:
        return asdict(self)
