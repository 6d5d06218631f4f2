"""PNG of what a compressed model keeps: attention heads and FFN neurons per layer."""

from __future__ import annotations

from pathlib import Path

from .structure import EncoderStructure


def plot_structure(structure: EncoderStructure, path: str | Path, title: str = "") -> Path:
    """Bar charts of heads and neurons kept per layer, each against the layer's original count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = structure.shape
    layers = list(range(shape.num_layers))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, kept, total, name in (
        (axes[0], [len(h) for h in structure.heads], shape.heads, "attention heads"),
        (axes[1], [len(n) for n in structure.neurons], shape.neurons, "FFN neurons"),
    ):
        ax.bar(layers, total, color="#dddddd", label="original")
        ax.bar(layers, kept, color="#3b6ea5", label="kept")
        for x, k in zip(layers, kept, strict=True):
            ax.text(x, k, str(k), ha="center", va="bottom", fontsize=8)
        ax.set_xlabel("layer")
        ax.set_ylabel(name)
        ax.set_xticks(layers)
        ax.set_title(f"{name}: {sum(kept)} of {sum(total)} kept")
    axes[0].legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
