"""``compression_report.json``: sizes, structure and FLOPs of a compressed model next to its reference."""

from __future__ import annotations

from torch import nn

from .adapter import EncoderAdapter
from .flops import measured_flops, model_flops


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total, encoder-layer and non-zero parameter counts (tied tensors counted once)."""
    adapter = EncoderAdapter(model)
    unique = {id(p): p for p in model.parameters()}.values()
    encoder = {id(p): p for p in adapter.encoder_modules().parameters()}.values()
    return {
        "total": sum(p.numel() for p in unique),
        "encoder": sum(p.numel() for p in encoder),
        "nonzero": sum(int((p != 0).sum()) for p in unique),
    }


def model_summary(model: nn.Module, seq_len: int = 128) -> dict:
    """Parameters, per-layer structure and FLOPs (analytic and counted) of one model.

    ``seq_len`` is capped to what the position table allows (minus 2, RoBERTa's offset).
    """
    seq_len = min(seq_len, model.config.max_position_embeddings - 2)
    shape = EncoderAdapter(model).shape()
    return {
        "class": type(model).__name__,
        "parameters": parameter_counts(model),
        "hidden_size": shape.hidden_size,
        "heads_per_layer": list(shape.heads),
        "neurons_per_layer": list(shape.neurons),
        "flops": {
            "seq_len": seq_len,
            "analytic": model_flops(model, seq_len),
            "counted": measured_flops(model, seq_len),
        },
    }


def compression_report(
    model: nn.Module,
    reference: nn.Module | None = None,
    seq_len: int = 128,
    reference_summary: dict | None = None,
    **extra,
) -> dict:
    """Report for ``model`` compared with ``reference`` (the dense model), plus any ``extra`` fields.

    ``reference_summary`` (a :func:`model_summary` taken earlier, e.g. before training changed the weights) stands
    in for ``reference``. ``extra`` carries what only the caller knows (method, config, metrics before/after, phase
    timings, latency), and is written as given.
    """
    report: dict = {"compressed": model_summary(model, seq_len)}
    if reference is not None:
        reference_summary = model_summary(reference, seq_len)
    if reference_summary is not None:
        report["reference"] = reference_summary
        small, big = report["compressed"], report["reference"]
        report["ratios"] = {
            "encoder_flops_kept": small["flops"]["analytic"]["encoder"] / big["flops"]["analytic"]["encoder"],
            "total_flops_kept": small["flops"]["analytic"]["total"] / big["flops"]["analytic"]["total"],
            "encoder_params_kept": small["parameters"]["encoder"] / big["parameters"]["encoder"],
            "total_params_kept": small["parameters"]["total"] / big["parameters"]["total"],
        }
    report.update(extra)
    return report


def parameter_fields(report: dict) -> dict:
    """Top-level parameter counts of a report with model summaries: ``params_dense`` / ``params_compressed``
    (totals, tied tensors once) and ``nonzero_params_dense`` / ``nonzero_params_compressed`` (what unstructured
    sparsity removes). The ``_dense`` ones only when the report has a reference."""
    fields = {}
    for side, key in (("dense", "reference"), ("compressed", "compressed")):
        counts = (report.get(key) or {}).get("parameters")
        if counts:
            fields[f"params_{side}"] = counts["total"]
            fields[f"nonzero_params_{side}"] = counts["nonzero"]
    return fields
