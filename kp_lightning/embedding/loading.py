"""Load a sentence-embedding model: a sentence-transformers folder, one of our exports, or a bare HF encoder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import transformers
from torch import nn

from kp_lightning.embedding.pooling import POOLING_KEY, Pooling, has_pooling, set_model_pooling
from kp_lightning.embedding.st_folder import (
    MODULES_FILE,
    is_sentence_transformers_dir,
    read_sentence_transformers_dir,
)
from kp_lightning.errors import ConfigError
from kp_lightning.pretrained_loading import load_pretrained

PRETRAINING_HEADS = ("ForMaskedLM", "ForPreTraining", "Model")
OTHER_BACKEND_FILES = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot"]
"""Files of other runtimes in a sentence-transformers hub repo, not downloaded."""
"""Architectures whose checkpoint is a pretrained encoder, not a model trained for another task."""


def sentence_transformers_folder(name_or_path: str) -> Path | None:
    """The local sentence-transformers folder of ``name_or_path`` (a hub repo with a ``modules.json`` is
    downloaded first), or None when it is not one."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        return path if is_sentence_transformers_dir(path) else None
    try:  # a hub id: a sentence-transformers repo has a modules.json
        import huggingface_hub

        huggingface_hub.hf_hub_download(name_or_path, MODULES_FILE)
        return Path(huggingface_hub.snapshot_download(name_or_path, ignore_patterns=OTHER_BACKEND_FILES))
    except Exception:  # offline, unknown or not a sentence-transformers repo: plain loading reports it
        return None


def embedding_model_source(name_or_path: str) -> str:
    """Where the HF model (and tokenizer) of ``name_or_path`` is: the Transformer module of a
    sentence-transformers folder, else the path itself."""
    folder = sentence_transformers_folder(name_or_path)
    return str(read_sentence_transformers_dir(folder).transformer_dir) if folder else name_or_path


def resolve_pooling(name_or_path: str, config, mode: str | None, normalize: bool | None) -> Pooling:
    """The pooling of a model: the sentence-transformers folder's or the export's, else mean pooling; ``mode``
    and ``normalize`` (when given) replace those settings."""
    folder = sentence_transformers_folder(name_or_path)
    if folder is not None:
        pooling = read_sentence_transformers_dir(folder).pooling
    elif has_pooling(config):
        pooling = Pooling.from_dict(getattr(config, POOLING_KEY))
    else:
        pooling = Pooling("mean", False, None)
    changes = {k: v for k, v in (("mode", mode), ("normalize", normalize)) if v is not None}
    return dataclasses.replace(pooling, **changes)


def check_encoder_checkpoint(name_or_path: str, config) -> None:
    """Refuse a checkpoint trained for another task (a classifier, a QA model...) as an embedding model.

    Raises:
        ConfigError: its architecture has a task head.
    """
    trained = [a for a in (config.architectures or []) if not a.endswith(PRETRAINING_HEADS)]
    if trained:
        raise ConfigError(
            f"{name_or_path} is a {trained[0]}: a model trained for another task, not a sentence-embedding model",
            fix="use a sentence-transformers folder or a pretrained encoder (all-MiniLM-L6-v2, bert-base-uncased); "
            "to compress this model for its own task use that task's data module",
        )


def load_embedding_model(name_or_path: str, mode: str | None = None, normalize: bool | None = None) -> nn.Module:
    """The base encoder (``AutoModel``) of ``name_or_path`` with its pooling recorded in ``config.kp_pooling``.

    Raises:
        ModelLoadError: a sentence-transformers folder with modules we cannot reproduce, or no model.
        ConfigError: a checkpoint trained for another task.
    """
    source = embedding_model_source(name_or_path)
    config = load_pretrained(transformers.AutoConfig, source)
    check_encoder_checkpoint(name_or_path, config)
    pooling = resolve_pooling(name_or_path, config, mode, normalize)
    model, info = load_pretrained(transformers.AutoModel, source, output_loading_info=True)
    set_model_pooling(model, pooling)
    model.kp_newly_initialized = sorted(k for k in info.get("missing_keys", []) if not k.startswith("pooler."))
    return model
