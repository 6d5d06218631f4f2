"""The STS-B vs speedup plot (``results/embedding_minilm.png``)."""

from __future__ import annotations

from harness import RESULTS


def write_plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    families = (
        (
            "K-prune (similarity_kl+cosine_mse)",
            lambda r: r["method"] == "kprune" and "[" not in r["name"],
            "#3b6ea5",
            "o-",
        ),
        ("K-prune (similarity_kl)", lambda r: r["name"].endswith("[similarity_kl]"), "#7fa7d6", "s--"),
        ("K-prune (cosine_mse)", lambda r: r["name"].endswith("[cosine_mse]"), "#1f3d5c", "^--"),
        ("Kwon et al.", lambda r: r["method"] == "kwon", "#c0504d", "o-"),
    )
    measured = [r for r in rows if r.get("stsb_spearman") is not None and r.get("speedup_b32") is not None]
    for label, pick, color, style in families:
        mine = sorted((r for r in measured if r.get("method") and pick(r)), key=lambda r: r["flops_reduction"])
        if mine:
            ax.plot(
                [r["speedup_b32"] for r in mine], [r["stsb_spearman"] for r in mine], style, color=color, label=label
            )
            for r in mine:
                ax.annotate(f"{r['flops_reduction']:.0%}", (r["speedup_b32"], r["stsb_spearman"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))  # fmt: skip
    peers = (
        ("dense", "k", "*"),
        ("dense+int8", "#8064a2", "D"),
        ("kprune-50+int8", "#4bacc6", "D"),
        ("model2vec", "#f79646", "P"),
    )
    for name, color, marker in peers:
        r = next((x for x in rows if x["name"] == name), None)
        if r and r.get("stsb_spearman") is not None:
            ax.scatter(
                [r.get("speedup_b32") or 1.0],
                [r["stsb_spearman"]],
                color=color,
                marker=marker,
                s=70,
                label=name,
                zorder=3,
            )
    ax.set_xscale("log")
    ax.set_xlabel("measured speedup vs dense fp32, batch 32 × 128, 2 CPU threads (log)")
    ax.set_ylabel("STS-B dev Spearman")
    ax.set_title("all-MiniLM-L6-v2 compressed without retraining")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(RESULTS / "embedding_minilm.png", dpi=110)
    plt.close(fig)
