"""Write a sparse model: the Hugging Face directory (zeros in place), its reports, model card and a compressed copy."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from kp_lightning.core.export import REPORT_FILE, add_remote_code, staging_dir
from kp_lightning.core.model_card import write_model_card
from kp_lightning.core.report import compression_report, parameter_fields
from kp_lightning.embedding.st_export import write_embedding_files
from kp_lightning.sparsity.masked_weights import MaskedWeights
from kp_lightning.sparsity.storage import save_sparse

SPARSITY_REPORT = "sparsity_report.json"
SPARSE_SUBDIR = "sparse"


def sparsity_summary(masked: MaskedWeights) -> dict:
    """Global and per-weight sparsity, with element counts."""
    elements = sum(w.numel() for w in masked.weights.values())
    return {
        "sparsity": masked.global_sparsity(),
        "sparse_weights": len(masked.weights),
        "sparse_weight_elements": elements,
        "per_weight": masked.sparsity(),
    }


def write_sparse_model(
    model: nn.Module,
    out_dir: str | Path,
    masked: MaskedWeights,
    tokenizer=None,
    extra: dict | None = None,
    storage_values: str | None = "float32",
    overwrite: bool = True,
    report_fields: dict | None = None,
    reference_summary: dict | None = None,
) -> dict:
    """Save ``model`` with ``save_pretrained`` (any tool loads it; a compact model with its code, for
    ``trust_remote_code=True``), ``sparsity_report.json``, ``compression_report.json``, the ``README.md`` model
    card (kind ``sparse``), for a sentence-embedding model the sentence-transformers files
    (:func:`~kp_lightning.embedding.st_export.write_embedding_files`) and, unless ``storage_values`` is ``None``,
    the bitmask + non-zeros copy in ``<out_dir>/sparse``. Everything is written to a staging directory first:
    ``out_dir`` appears complete or not at all.

    Args:
        model: The sparse model (fake quantization may be attached: its weights are what is saved).
        out_dir: Target directory.
        masked: The masks that made ``model`` sparse.
        tokenizer: Saved alongside when given.
        extra: Fields of both reports (method, pattern, schedule...).
        storage_values: Value type of the compressed copy, or ``None`` to skip it.
        overwrite: Replace a non-empty ``out_dir``.
        report_fields: Fields of ``compression_report.json`` only (base_model, task, metric_name, metric_dense,
            metric_compressed...; see :mod:`kp_lightning.compare`).
        reference_summary: :func:`~kp_lightning.core.report.model_summary` of the model before pruning, for the
            report's reference and ratios.

    Returns:
        The sparsity report (also written to ``sparsity_report.json``).
    """
    report = {**(extra or {}), **sparsity_summary(masked)}
    fields = {"export": "sparse", **report, **(report_fields or {})}
    compression = compression_report(model, reference_summary=reference_summary, **fields)
    compression.update(parameter_fields(compression))
    with staging_dir(Path(out_dir), overwrite) as staging:
        model.save_pretrained(staging)
        add_remote_code(staging, model.config)  # a compact model loads with trust_remote_code, as its export does
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        write_embedding_files(staging, model)  # an embedding model: a sentence-transformers folder too
        if storage_values is not None:
            sizes = save_sparse(model, staging / SPARSE_SUBDIR, values=storage_values, tokenizer=tokenizer)
            report["storage"] = compression["storage"] = sizes
        (staging / SPARSITY_REPORT).write_text(json.dumps(report, indent=2))
        (staging / REPORT_FILE).write_text(json.dumps(compression, indent=2, default=str))
        write_model_card(staging, compression, "sparse")
    return report
