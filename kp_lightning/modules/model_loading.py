"""Load a task model (hub name, local directory, compressed export or Lightning checkpoint) with the head a
task needs."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import transformers
from torch import nn

from kp_lightning.compact_model.layouts import LAYOUTS, layout_for_model_type
from kp_lightning.core.compaction import compact
from kp_lightning.core.structure import EncoderStructure
from kp_lightning.data.task_kinds import TASK_KIND_TABLE, task_kind
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.embedding.loading import embedding_model_source, load_embedding_model
from kp_lightning.embedding.st_folder import check_pooling_options
from kp_lightning.errors import ConfigError, MissingFileError, ModelLoadError
from kp_lightning.pretrained_loading import load_pretrained

AUTO_CLASSES = {name: getattr(transformers, kind.auto_class) for name, kind in TASK_KIND_TABLE.items()}
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions")
PROBLEM_TYPES = {"classification": "single_label_classification", "regression": "regression"}


def _head_kwargs(spec: TaskSpec) -> dict:
    if not task_kind(spec.kind).sized_by_labels:
        return {}
    kwargs = {"num_labels": spec.num_labels}
    if spec.kind in PROBLEM_TYPES:
        kwargs["problem_type"] = PROBLEM_TYPES[spec.kind]
    if spec.kind != "regression":
        names = spec.label_names or [str(i) for i in range(spec.num_labels)]
        kwargs["id2label"] = dict(enumerate(names))
        kwargs["label2id"] = {name: i for i, name in enumerate(names)}
    return kwargs


def _trained_labels(config) -> list[str] | None:
    """The label names a trained head was saved with, or None when they are transformers' defaults (LABEL_i)."""
    names = [str(config.id2label[i]) for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
    return None if all(name == f"LABEL_{i}" for i, name in enumerate(names)) else names


def check_trained_head(name_or_path: str, config, spec: TaskSpec, check_labels: bool = True) -> None:
    """Refuse a checkpoint that cannot serve ``spec``: its architecture has no head of the task's kind (in the
    layout table), or (``check_labels``) its trained head has another size or, for entity tags, other label
    names or another label order.

    Raises:
        ConfigError: with what differs and how to proceed.
    """
    kind = task_kind(spec.kind)
    layout = layout_for_model_type(getattr(config, "model_type", "") or "")
    if layout is not None and kind.head not in layout.heads:
        having = [other.class_prefix + kind.head for other in LAYOUTS.values() if kind.head in other.heads]
        raise ConfigError(
            f"{name_or_path} is a {layout.class_prefix} model, and there is no {layout.class_prefix}{kind.head}: "
            f"{spec.kind} task {spec.name!r} cannot be run with it",
            fix=f"use a model of an architecture that has one ({', '.join(having) or 'none'})",
        )
    trained = any(a.endswith(kind.head) for a in (config.architectures or []))
    if not (check_labels and trained and kind.sized_by_labels):
        return
    if config.num_labels != spec.num_labels:
        raise ConfigError(
            f"{name_or_path} has a classification head with {config.num_labels} outputs but task "
            f"{spec.name!r} needs {spec.num_labels}. Use a matching model, or set "
            "ignore_mismatched_head: true to start from a new randomly initialised head."
        )
    trained_names = _trained_labels(config)
    if kind.named_labels and trained_names and trained_names != list(spec.label_names):
        raise ConfigError(
            f"{name_or_path} was trained with the labels {trained_names} (in id order), but task {spec.name!r} "
            f"has {list(spec.label_names)}: the head's outputs would mean other tags",
            fix="set the data's label_names to the model's list, in that order, or set "
            "ignore_mismatched_head: true to start from a new randomly initialised head",
        )


def load_task_model(
    name_or_path: str,
    spec: TaskSpec,
    ignore_mismatched_head: bool = False,
    pooling: str | None = None,
    normalize: bool | None = None,
) -> nn.Module:
    """Load ``name_or_path`` with the head for ``spec`` (a fresh head if the checkpoint has none).

    A Lightning checkpoint (``*.ckpt`` written by ``train.py``) is rebuilt from the model it was trained from
    (its ``model_name_or_path`` hyperparameter), compacted to the structure a pruning callback recorded in it,
    and loaded with its weights. The returned model's ``kp_newly_initialized`` lists the weights that were
    not in the checkpoint (a new task head).

    Raises:
        ConfigError: The checkpoint has a trained head of another size (or, for entity tags, other label names)
            and ``ignore_mismatched_head`` is off (fine-tuning an SST-2 model on MNLI needs a new head: say so
            explicitly), or its architecture has no head of the task's kind; or ``pooling``/``normalize`` (which
            choose the sentence embedding of an ``embedding`` task, :mod:`kp_lightning.embedding.loading`) are
            given for another kind.
    """
    if is_lightning_checkpoint(name_or_path):
        return _load_lightning_checkpoint(name_or_path, spec, pooling, normalize)
    if task_kind(spec.kind).pooled:
        refuse_inference_only_export(name_or_path)
        return load_embedding_model(name_or_path, pooling, normalize)
    check_pooling_options(pooling, normalize)
    refuse_inference_only_export(name_or_path)
    config = load_pretrained(transformers.AutoConfig, name_or_path)
    check_trained_head(name_or_path, config, spec, check_labels=not ignore_mismatched_head)
    kwargs = _head_kwargs(spec)
    if ignore_mismatched_head:
        kwargs["ignore_mismatched_sizes"] = True
    model, info = load_pretrained(AUTO_CLASSES[spec.kind], name_or_path, output_loading_info=True, **kwargs)
    model.kp_newly_initialized = sorted(info.get("missing_keys", []))
    return model


def refuse_inference_only_export(name_or_path: str) -> None:
    """Refuse a directory that holds no trainable weights: an int8 ONNX export, or a sparse storage copy.

    Raises:
        ModelLoadError: with the directory to train instead.
    """
    from kp_lightning.quantization.int8_model import ONNX_FILE, QUANT_CONFIG_FILE
    from kp_lightning.sparsity.storage import SPARSE_FILE

    path = Path(name_or_path)
    if not path.is_dir() or (path / "model.safetensors").is_file():
        return
    if (path / ONNX_FILE).is_file() and (path / QUANT_CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"{name_or_path} is an int8 ONNX model (QuantizationAwareTraining's output): it runs inference only "
            "and cannot be trained further",
            fix="load it with kp_lightning.quantization.load_int8 (or onnxruntime), or train the model it was "
            "quantized from",
        )
    if (path / SPARSE_FILE).is_file():
        raise ModelLoadError(
            f"{name_or_path} is a sparse storage copy (bitmask + values), not a model directory",
            fix="train the model directory it was saved from (a GradualMagnitudePruning/PatternLock output_dir, "
            "its parent, has the same weights with the zeros in place), or rebuild it with "
            "kp_lightning.sparsity.storage.load_sparse",
        )


STRUCTURE_STATE_KEY = "kp_structure"


def is_lightning_checkpoint(name_or_path: str) -> bool:
    return str(name_or_path).endswith(".ckpt")


def _read_checkpoint(path: str) -> dict:
    if not Path(path).is_file():
        raise MissingFileError(f"Lightning checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_base_model(path: str) -> str:
    """The ``model_name_or_path`` a ``train.py`` checkpoint was trained from (also where its tokenizer is)."""
    base = _read_checkpoint(path).get("hyper_parameters", {}).get("model_name_or_path")
    if not base:
        raise ConfigError(f"{path} has no model_name_or_path hyperparameter; it was not written by train.py")
    return base


def tokenizer_source(name_or_path: str) -> str:
    """Where the tokenizer of a model path lives (the base model, for a Lightning checkpoint; the Transformer
    module, for a sentence-transformers folder)."""
    if is_lightning_checkpoint(name_or_path):
        name_or_path = checkpoint_base_model(name_or_path)
    return embedding_model_source(name_or_path)


def _load_lightning_checkpoint(path: str, spec: TaskSpec, pooling: str | None, normalize: bool | None) -> nn.Module:
    checkpoint = _read_checkpoint(path)
    base = checkpoint_base_model(path)
    hparams = checkpoint.get("hyper_parameters", {})
    pooling = pooling if pooling is not None else hparams.get("pooling")
    normalize = normalize if normalize is not None else hparams.get("normalize")
    model = load_task_model(base, spec, True, pooling, normalize)
    for state in checkpoint.get("callbacks", {}).values():
        if isinstance(state, dict) and state.get(STRUCTURE_STATE_KEY):
            model = compact(model, EncoderStructure.from_dict(state[STRUCTURE_STATE_KEY]))
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if k.endswith("decoder.weight") or k.endswith("decoder.bias")}
    if unexpected or set(missing) - tied:
        raise ConfigError(
            f"{path} does not match {base}: missing {sorted(set(missing) - tied)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}. Load a checkpoint written by train.py for this task."
        )
    model.kp_newly_initialized = []
    return model


def accepted_inputs(model: nn.Module) -> tuple[str, ...]:
    """The batch keys this model's ``forward`` accepts (DistilBERT takes no ``token_type_ids``)."""
    parameters = inspect.signature(model.forward).parameters
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()) and "input_ids" not in parameters:
        return MODEL_INPUT_KEYS
    return tuple(key for key in MODEL_INPUT_KEYS if key in parameters)
