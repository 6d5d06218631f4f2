"""Export a structurally pruned model with its report, side-by-side latency and per-layer structure PNG."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .compaction import original_structure
from .export import REPORT_FILE, export_compact
from .flops import encoder_flops
from .latency import measure_latency
from .report import parameter_counts
from .structure_plot import plot_structure

STRUCTURE_PNG = "structure.png"


@dataclass
class LatencyCheck:
    """How to time dense vs compressed (``seconds`` = 0 skips it)."""

    batch_size: int = 32
    seq_len: int = 128
    seconds: float = 2.0


def latency_speedup(dense: nn.Module, small: nn.Module, check: LatencyCheck) -> tuple[float | None, dict]:
    """Dense/compressed median latency ratio, the two measured one after the other on the same device."""
    if check.seconds <= 0:
        return None, {}
    grid = {"batch_sizes": [check.batch_size], "seq_lens": [check.seq_len]}
    latency = {
        "dense": measure_latency(dense, min_run_time=check.seconds, **grid),
        "compressed": measure_latency(small, min_run_time=check.seconds, **grid),
    }
    speedup = latency["dense"]["results"][0]["median_ms"] / latency["compressed"]["results"][0]["median_ms"]
    return speedup, latency


def structure_fields(small: nn.Module, dense: nn.Module, seq_len: int, batch_size: int = 1) -> dict:
    """Report fields every structured method shares: parameters, FLOPs removed (per sequence of a batch of
    ``batch_size``), kept structure."""
    structure = original_structure(small)
    dense_flops = encoder_flops(structure.shape, seq_len, batch_size)
    return {
        "flops_reduction_actual": 1 - encoder_flops(structure.compacted_shape(), seq_len, batch_size) / dense_flops,
        "flops_seq_len": seq_len,
        "flops_batch_size": batch_size,
        "params_dense": parameter_counts(dense)["total"],
        "params_compressed": parameter_counts(small)["total"],
        "structure": {
            "hidden_size": len(structure.hidden),
            "heads_per_layer": [len(h) for h in structure.heads],
            "neurons_per_layer": [len(n) for n in structure.neurons],
            "kept": structure.to_dict(),
        },
    }


def export_structured(
    small: nn.Module, dense: nn.Module, out_dir: str | Path, tokenizer, title: str, overwrite: bool = False, **fields
) -> dict:
    """Write the compact export (report included) and ``structure.png``; return the report."""
    out_dir = Path(out_dir)
    export_compact(small.cpu(), out_dir, tokenizer=tokenizer, reference=dense.cpu(), overwrite=overwrite, **fields)
    plot_structure(original_structure(small), out_dir / STRUCTURE_PNG, title=title)
    return json.loads((out_dir / REPORT_FILE).read_text())
