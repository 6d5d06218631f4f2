"""Write a sparse model: the Hugging Face directory (zeros in place), a sparsity report and a compressed copy."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from kp_lightning.core.export import add_remote_code, staging_dir
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
) -> dict:
    """Save ``model`` with ``save_pretrained`` (any tool loads it; a compact model with its code, for
    ``trust_remote_code=True``), ``sparsity_report.json`` and, unless
    ``storage_values`` is ``None``, the bitmask + non-zeros copy in ``<out_dir>/sparse``.

    Returns:
        The report (also written to ``sparsity_report.json``).
    """
    report = {**(extra or {}), **sparsity_summary(masked)}
    with staging_dir(Path(out_dir), overwrite) as staging:
        model.save_pretrained(staging)
        add_remote_code(staging, model.config)  # a compact model loads with trust_remote_code, as its export does
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if storage_values is not None:
            sizes = save_sparse(model, staging / SPARSE_SUBDIR, values=storage_values, tokenizer=tokenizer)
            report["storage"] = sizes
        (staging / SPARSITY_REPORT).write_text(json.dumps(report, indent=2))
    return report
