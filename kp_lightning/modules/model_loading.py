"""Load a task model (hub name, local directory or compressed export) with the head a task needs."""

from __future__ import annotations

import inspect

import transformers
from torch import nn

from kp_lightning.data.task_spec import TaskSpec

AUTO_CLASSES = {
    "classification": transformers.AutoModelForSequenceClassification,
    "regression": transformers.AutoModelForSequenceClassification,
    "question_answering": transformers.AutoModelForQuestionAnswering,
    "masked_lm": transformers.AutoModelForMaskedLM,
}
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions")


def _head_kwargs(spec: TaskSpec) -> dict:
    if spec.kind == "classification":
        names = spec.label_names or [str(i) for i in range(spec.num_labels)]
        return {
            "num_labels": spec.num_labels,
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
            "problem_type": "single_label_classification",
        }
    if spec.kind == "regression":
        return {"num_labels": 1, "problem_type": "regression"}
    return {}


def load_task_model(name_or_path: str, spec: TaskSpec, ignore_mismatched_head: bool = False) -> nn.Module:
    """Load ``name_or_path`` with the head for ``spec`` (a fresh head if the checkpoint has none).

    Raises:
        ValueError: The checkpoint has a classification head of another size and ``ignore_mismatched_head``
            is off (fine-tuning an SST-2 model on MNLI needs a new head: say so explicitly).
    """
    config = transformers.AutoConfig.from_pretrained(name_or_path)
    trained_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    head_mismatch = trained_head and config.num_labels != spec.num_labels
    if spec.kind in ("classification", "regression") and head_mismatch and not ignore_mismatched_head:
        raise ValueError(
            f"{name_or_path} has a classification head with {config.num_labels} outputs but task "
            f"{spec.name!r} needs {spec.num_labels}. Use a matching model, or set "
            "ignore_mismatched_head: true to start from a new randomly initialised head."
        )
    kwargs = _head_kwargs(spec)
    if ignore_mismatched_head:
        kwargs["ignore_mismatched_sizes"] = True
    return AUTO_CLASSES[spec.kind].from_pretrained(name_or_path, **kwargs)


def accepted_inputs(model: nn.Module) -> tuple[str, ...]:
    """The batch keys this model's ``forward`` accepts (DistilBERT takes no ``token_type_ids``)."""
    parameters = inspect.signature(model.forward).parameters
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()) and "input_ids" not in parameters:
        return MODEL_INPUT_KEYS
    return tuple(key for key in MODEL_INPUT_KEYS if key in parameters)
