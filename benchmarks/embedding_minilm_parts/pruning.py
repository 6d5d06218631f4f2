"""The dense reference run and the K-prune and Kwon et al. pruning runs."""

from __future__ import annotations

import time

import torch

from kp_lightning.pruning import KPruneConfig, KwonConfig, kprune, kwon_prune

from .context import Context
from .evaluation import evaluate_batches, size_record, torch_embedder
from .settings import CACHE, KWON_AVG_LENGTH, SEED


def run_dense(ctx: Context, job: dict) -> dict:
    metrics = ctx.evaluate(ctx.dense)
    check = evaluate_batches(torch_embedder(ctx.dense), ctx.dm)  # the ONNX rows' evaluation code on torch
    return {
        "method": "dense",
        "flops_reduction": 0.0,
        **metrics,
        **size_record(ctx.dense, ctx.dense),
        "compress_seconds": 0.0,
        "sample": "-",
        "note": "fp32 PyTorch",
        "evaluate_batches_check": check,
    }


def run_pruning(ctx: Context, job: dict) -> dict:
    samples, info = ctx.samples(job["kind"])
    torch.manual_seed(SEED)
    cpu = time.process_time()
    if job["kind"] == "kprune":
        config = KPruneConfig(job["rate"], embedding_loss=job["loss"])
        result = kprune(ctx.dense, samples, "embedding", config, progress=False)
    else:
        config = KwonConfig(job["rate"], seq_len=KWON_AVG_LENGTH)
        result = kwon_prune(ctx.dense, samples, "embedding", config, progress=False)
    prune_cpu = time.process_time() - cpu
    model = result.model.eval()
    metrics = ctx.evaluate(model)
    if job["name"] == "kprune-50":  # the int8 row's source
        from kp_lightning.core.export import export_compact

        export_compact(model, CACHE / "kprune-50", overwrite=True, method="kprune", flops_reduction=0.5)
    return {
        "method": job["kind"],
        "flops_reduction": job["rate"],
        "embedding_loss": job.get("loss", "contrastive (Fisher objective)"),
        **metrics,
        **size_record(model, ctx.dense),
        "compress_seconds": result.seconds["total"],
        "prune_cpu_seconds": prune_cpu,
        "phase_seconds": result.seconds,
        "flops_reduction_actual": result.flops_reduction,
        "flops_seq_len": result.seq_len,
        **info,
        "note": "; ".join(result.notes),
        "notes": result.notes,
        "peak_process_rss_bytes": result.stats.get("peak_process_rss_bytes"),
    }
