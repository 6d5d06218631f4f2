"""The README.md model card written next to every export."""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData


def render_model_card(report: dict, kind: str, base_model: str | None = None, method: str | None = None) -> ModelCard:
    """Model card with Hub metadata and a summary of ``report`` (see :func:`compression_report`)."""
    tags = ["kp_lightning", "pruning", f"{kind}-export"] + ([method] if method else [])
    data = ModelCardData(library_name="transformers", base_model=base_model, tags=tags)
    small = report["compressed"]
    lines = [
        f"# {small['class']} compressed with kp_lightning",
        "",
        f"Export kind: **{kind}**" + (f", method: **{method}**" if method else "") + ".",
        "",
        "| | compressed | reference |",
        "|---|---:|---:|",
    ]
    ref = report.get("reference")
    rows = [
        ("parameters (total)", lambda r: f"{r['parameters']['total']:,}"),
        ("parameters (encoder layers)", lambda r: f"{r['parameters']['encoder']:,}"),
        ("non-zero parameters", lambda r: f"{r['parameters']['nonzero']:,}"),
        ("hidden size", lambda r: str(r["hidden_size"])),
        ("heads per layer", lambda r: str(r["heads_per_layer"])),
        ("FFN neurons per layer", lambda r: str(r["neurons_per_layer"])),
        (
            f"GFLOPs / sequence (n={small['flops']['seq_len']})",
            lambda r: f"{r['flops']['analytic']['total'] / 1e9:.4f}",
        ),
    ]
    for label, fmt in rows:
        lines.append(f"| {label} | {fmt(small)} | {fmt(ref) if ref else '–'} |")
    lines += ["", "## Loading", "", "```python", "from transformers import AutoModel", ""]
    if kind == "compact":
        lines += [
            "# with kp_lightning installed: import kp_lightning; kp_lightning.load_compressed(path)",
            "model = AutoModel.from_pretrained(path, trust_remote_code=True)  # any AutoModelFor<Task> in auto_map",
        ]
    else:
        lines.append("model = AutoModel.from_pretrained(path)  # stock architecture, pruned weights are zeros")
    lines += ["```", "", "Full numbers: `compression_report.json`."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
