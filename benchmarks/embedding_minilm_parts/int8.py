"""The int8 runs: ONNX export, pre-processing and ONNX Runtime dynamic quantization of a stored run."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from harness import minilm_dir

from kp_lightning.embedding.loading import load_embedding_model
from kp_lightning.embedding.pooling import model_pooling

from .context import Context
from .evaluation import evaluate_batches, size_record, torch_embedder
from .jobs import load_runs
from .onnx_runtime import onnx_op_count, ort_embedder, ort_session, runtime_weight_matmuls
from .settings import CACHE


def run_int8(ctx: Context, job: dict) -> dict:
    """ORT dynamic int8 of ``job["source"]``: exported twice, with the model's sdpa attention (``export_onnx``
    as is: the exporter adds an IsNaN + Where guard over every [batch, heads, seq, seq] softmax) and with eager
    attention (same math, no guard), each pre-processed (constant folding) and quantized; the eager export is
    the row, the sdpa one is timed as a diagnostic. The weight type is QUInt8 if its mean cosine to the fp32
    model on 256 training sentences is higher by more than 1e-3, else QInt8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from kp_lightning.core.export import load_compressed
    from kp_lightning.core.onnx_export import export_onnx

    runs = load_runs()
    if job["source"] not in runs:
        raise SystemExit(f"{job['name']} needs the run {job['source']} first")
    source_run = runs[job["source"]]

    def load():
        if job["source"] == "dense":
            return load_embedding_model(minilm_dir()).eval()
        if not (CACHE / job["source"] / "model.safetensors").exists():
            raise SystemExit(
                f"{CACHE / job['source']} is missing: rerun --only {job['source']} --force (it exports it)"
            )
        return load_compressed(CACHE / job["source"]).eval()

    model = load()
    pooling = model_pooling(model)
    folder = CACHE / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    samples, _ = ctx.samples("kprune")  # fidelity on training sentences, never the evaluation data
    check_batches = [b for _, b in samples.batches()][:8]
    with torch.no_grad():
        reference = [torch_embedder(model)(b) for b in check_batches]
    exports, candidates = {}, {}
    for attention in ("eager", "sdpa"):
        exported = load()
        if attention == "eager":
            exported.set_attn_implementation("eager")
        fp32 = folder / f"{job['source']}-{attention}.onnx"
        tick = time.perf_counter()
        export_onnx(exported, fp32)
        export_seconds = time.perf_counter() - tick
        # ORT's recommended pre-processing (constant folding, no symbolic shapes): a compact model's fused Q/K/V
        # weight is exported as a runtime Concat of three initializers, which quantize_dynamic would leave fp32
        prepared = folder / f"{job['source']}-{attention}-pre.onnx"
        tick = time.perf_counter()
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        exports[attention] = {
            "path": str(fp32),
            "export_seconds": export_seconds,
            "preprocess_seconds": time.perf_counter() - tick,
            "isnan_nodes": onnx_op_count(fp32, "IsNaN"),
            "matmuls_with_runtime_weight": runtime_weight_matmuls(fp32),
            "matmuls_with_runtime_weight_after_preprocess": runtime_weight_matmuls(prepared),
        }
        fp32 = prepared
        for weight_type in ("QInt8", "QUInt8"):
            path = folder / f"{job['source']}-{attention}-{weight_type.lower()}.onnx"
            tick = time.perf_counter()
            quantize_dynamic(str(fp32), str(path), weight_type=getattr(QuantType, weight_type))
            seconds = time.perf_counter() - tick
            embed = ort_embedder(ort_session(path), pooling)
            cos = torch.cat([torch.cosine_similarity(embed(b), r, dim=-1) for b, r in zip(check_batches, reference)])
            candidates[f"{attention}-{weight_type}"] = {
                "path": str(path),
                "quantize_seconds": seconds,
                "size_bytes": path.stat().st_size,
                "matmul_integer_nodes": onnx_op_count(path, "MatMulInteger"),
                "fidelity_mean_cosine": float(cos.mean()),
                "fidelity_min_cosine": float(cos.min()),
            }
            print(f"  {job['name']} {attention} {weight_type}: {candidates[f'{attention}-{weight_type}']}", flush=True)
    signed, unsigned = candidates["eager-QInt8"], candidates["eager-QUInt8"]
    best = "QUInt8" if unsigned["fidelity_mean_cosine"] - signed["fidelity_mean_cosine"] > 1e-3 else "QInt8"
    chosen = candidates[f"eager-{best}"]
    session = ort_session(Path(chosen["path"]))
    metrics = evaluate_batches(ort_embedder(session, pooling), ctx.dm)
    sizes = size_record(model, ctx.dense)
    pruned = job["source"] != "dense"
    export_seconds = exports["eager"]["export_seconds"] + exports["eager"]["preprocess_seconds"]
    return {
        "method": f"{source_run['method']}+int8" if pruned else "dense+int8",
        "flops_reduction": source_run["flops_reduction"],
        "embedding_loss": source_run.get("embedding_loss"),
        "source": job["source"],
        **metrics,
        **sizes,
        "size_bytes": chosen["size_bytes"],
        "weight_type": best,
        "onnx_path": chosen["path"],
        "onnx_path_sdpa_export": candidates[f"sdpa-{best}"]["path"],
        "exports": exports,
        "candidates": candidates,
        "export_seconds": export_seconds,
        "compress_seconds": (source_run.get("compress_seconds") or 0.0) + export_seconds + chosen["quantize_seconds"],
        "sample": (source_run["sample"] + " (pruning); " if pruned else "") + "int8: none (dynamic)",
        "note": f"ONNX Runtime dynamic int8, {best} weights (by fidelity to fp32 on 256 training sentences), "
        "eager-attention export"
        + (f"; compress s = pruning {source_run['compress_seconds']:.0f} + export + quantize" if pruned else ""),
    }
