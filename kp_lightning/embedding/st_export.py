"""Make every export of a sentence-embedding model a sentence-transformers folder.

An embedding model is a base encoder (``BertModel``, ``KPBertModel``...) whose config records its pooling
(``config.kp_pooling``, :mod:`kp_lightning.embedding.pooling`). Every writer of a model directory (compact,
dense and sparse exports, ``SaveBestPretrained``, the int8 export) calls :func:`write_embedding_files` after
the HF model and tokenizer are saved, which adds ``modules.json``, ``1_Pooling/``, ``2_Normalize/`` (when the
pooling normalizes), ``sentence_bert_config.json`` and ``config_sentence_transformers.json``
(:func:`~kp_lightning.embedding.st_folder.write_sentence_transformers_files`), so
``SentenceTransformer(directory)`` (``trust_remote_code=True`` for a compact model) pools exactly as the
model that was exported. A model without pooling settings is left alone.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from kp_lightning.compact_model.layouts import layout_for_model_type
from kp_lightning.embedding.pooling import Pooling, has_pooling, model_pooling
from kp_lightning.embedding.st_folder import write_sentence_transformers_files


def _config_of(model_or_config):
    return model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config


def embedding_dimension(model_or_config) -> int:
    """Width of the model's ``last_hidden_state`` (and so of its sentence embedding), as the model really has
    it: a compact model whose hidden dims were pruned is narrower than its config's ``hidden_size``.

    Args:
        model_or_config: A model (its word-embedding table is read) or a HF config (a compact config's
            ``kp_structure["hidden_size"]``, else the layout's hidden-size attribute, ``hidden_size`` or ``dim``).
    """
    if isinstance(model_or_config, nn.Module):
        from kp_lightning.core.adapter import EncoderAdapter, UnsupportedModelError

        try:
            return EncoderAdapter(model_or_config).hidden_size
        except UnsupportedModelError:
            pass
    config = _config_of(model_or_config)
    structure = getattr(config, "kp_structure", None)
    if isinstance(structure, dict) and structure.get("hidden_size") is not None:
        return int(structure["hidden_size"])
    layout = layout_for_model_type(getattr(config, "model_type", "") or "")
    attr = layout.hidden_size_attr if layout is not None else "hidden_size"
    return int(getattr(config, attr))


def is_embedding_model(model_or_config) -> bool:
    """Whether the model (or config) records pooling settings (``config.kp_pooling``)."""
    return has_pooling(_config_of(model_or_config))


def write_embedding_files(directory: str | Path, model_or_config) -> bool:
    """Add the sentence-transformers files to an export ``directory`` of an embedding model.

    Call it after the HF model (or, for the int8 export, its config) and the tokenizer are in ``directory``.
    ``sentence_bert_config.json`` carries the pooling's ``max_seq_length`` (left out when it is ``None``), the
    pooling config the embedding dimension of :func:`embedding_dimension`.

    Args:
        directory: The export directory (the Transformer module is the directory itself).
        model_or_config: The exported model, or its config.

    Returns:
        Whether files were written (False: the model has no pooling settings, nothing is done).
    """
    config = _config_of(model_or_config)
    if not has_pooling(config):
        return False
    if isinstance(model_or_config, nn.Module):
        pooling = model_pooling(model_or_config)
    else:
        pooling = Pooling.from_dict(config.kp_pooling)
    write_sentence_transformers_files(directory, pooling, embedding_dimension(model_or_config))
    return True


def embedding_card_info(model_or_config) -> dict | None:
    """What the model card says about a sentence-embedding model: ``{"mode", "normalize", "max_seq_length",
    "dimension"}``, or None for a model without pooling settings."""
    config = _config_of(model_or_config)
    if not has_pooling(config):
        return None
    return {**Pooling.from_dict(config.kp_pooling).to_dict(), "dimension": embedding_dimension(model_or_config)}
