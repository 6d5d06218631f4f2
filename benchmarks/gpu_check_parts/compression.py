"""The compression parts: K-prune on the device, compact latency, 2:4 sparse linears and the int8 path."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
import transformers
from harness import median_ms, sync

from .measurements import gpu_memory
from .settings import Check, Skip


def part_kprune(check: Check) -> dict:
    from kp_lightning.modules.model_loading import accepted_inputs, load_task_model
    from kp_lightning.pruning import KPruneConfig, kprune
    from kp_lightning.pruning.sample_set import SampleSet

    pl.seed_everything(0, verbose=False)
    data = check.data()
    data.setup("fit")
    model = load_task_model(str(check.model_dir), data.task_spec).eval().to(check.device)
    batches, tokens = [], 0
    for batch in data.train_dataloader():
        batches.append(batch)
        tokens += int(batch["attention_mask"].sum())
        if tokens >= check.kprune_tokens:
            break
    samples = SampleSet(batches, check.device, accepted_inputs(model))
    sync(check.device)
    start = time.perf_counter()
    result = kprune(model, samples, "classification", KPruneConfig(flops_reduction=0.6), progress=False)
    sync(check.device)
    seconds = time.perf_counter() - start
    return {
        "flops_reduction_target": 0.6,
        "flops_removed": 1 - result.flops_pruned / result.flops_dense,
        "sample_tokens": samples.num_tokens,
        "sample_sequences": samples.num_sequences,
        "seconds": seconds,
        "seconds_per_phase": result.seconds,
        "kept": result.structure.kept_counts(),
        "result_device": str(next(result.model.parameters()).device),
        "notes": result.notes,
        **gpu_memory(check.device),
    }


def _dense_and_compact(check: Check):
    from kp_lightning import compact, model_flops
    from kp_lightning.core.importance import magnitude_structure

    dense = transformers.AutoModel.from_pretrained(str(check.model_dir)).eval()
    structure = magnitude_structure(dense, 0.4, 0.4)  # 40 % of heads and neurons kept: about 60 % FLOPs removed
    small = compact(dense, structure).eval()
    flops = {name: model_flops(m, check.max_length)["encoder"] for name, m in (("dense", dense), ("compact", small))}
    return dense, small, structure, 1 - flops["compact"] / flops["dense"]


def part_compact_latency(check: Check) -> dict:
    from kp_lightning.core.latency import environment, measure_latency

    dense, small, structure, removed = _dense_and_compact(check)
    dtypes = [torch.float32] if check.dry else [torch.float32, torch.bfloat16]
    rows = []
    for dtype in dtypes:
        for name, model in (("dense", dense), ("compact", small)):
            m = model.to(device=check.device, dtype=dtype)
            timed = measure_latency(m, [b for b, _ in check.shapes], sorted({s for _, s in check.shapes}),
                                    min_run_time=check.latency_s)  # fmt: skip
            for r in timed["results"]:
                if (r["batch_size"], r["seq_len"]) in check.shapes:
                    rows.append({"model": name, "dtype": str(dtype).removeprefix("torch."), **r})
        dense.float().cpu(), small.float().cpu()
    speedups = {}
    for dtype in {r["dtype"] for r in rows}:
        for b, s in check.shapes:
            ms = {
                r["model"]: r["median_ms"] for r in rows if (r["dtype"], r["batch_size"], r["seq_len"]) == (dtype, b, s)
            }
            speedups[f"{dtype} {b}x{s}"] = ms["dense"] / ms["compact"]
    env = environment(dense.to(check.device))
    return {"flops_removed_encoder": removed, "kept": structure.kept_counts(), "environment": env,
            "rows": rows, "speedup": speedups, "ideal_speedup": 1 / (1 - removed)}  # fmt: skip


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive input weights."""
    from kp_lightning.sparsity.patterns import SparsityPattern, magnitude_mask

    return magnitude_mask(weight, 0.5, SparsityPattern.parse("2:4"))


def part_semi_structured_2to4(check: Check) -> dict:
    rows, skipped = [], None
    if check.device.type != "cuda":
        skipped = "to_sparse_semi_structured needs a CUDA device (sm80+); only the 2:4 masks and dense timings ran"
    elif torch.cuda.get_device_capability(check.device) < (8, 0):
        major, minor = torch.cuda.get_device_capability(check.device)
        raise Skip(f"2:4 sparse kernels need sm80+, this GPU is sm{major}{minor}")
    dtypes = [torch.float32] if check.dry else [torch.float16, torch.bfloat16]
    from torch import nn

    for dtype in dtypes:
        for in_features, out_features in check.linear_shapes:
            torch.manual_seed(0)
            linear = nn.Linear(in_features, out_features).to(device=check.device, dtype=dtype).eval()
            with torch.no_grad():
                mask = two_four_mask(linear.weight)
                linear.weight.mul_(mask)
            x = torch.randn(check.linear_tokens, in_features, device=check.device, dtype=dtype)
            row = {"dtype": str(dtype).removeprefix("torch."), "in": in_features, "out": out_features,
                   "tokens": check.linear_tokens, "density": float(mask.float().mean())}  # fmt: skip
            with torch.inference_mode():
                expected = linear(x)
                row["dense_ms"] = median_ms(lambda lin=linear: lin(x), check.latency_s, check.device)
                if skipped is None:
                    from torch.sparse import to_sparse_semi_structured

                    sparse = nn.Linear(in_features, out_features).to(device=check.device, dtype=dtype).eval()
                    sparse.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
                    sparse.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
                    got = sparse(x)
                    row["max_abs_diff"] = float((got.float() - expected.float()).abs().max())
                    row["sparse_ms"] = median_ms(lambda lin=sparse: lin(x), check.latency_s, check.device)
                    row["speedup"] = row["dense_ms"] / row["sparse_ms"]
            rows.append(row)
    result = {"rows": rows}
    if skipped is not None:
        result["skipped_reason"] = skipped
    return result


def part_int8(check: Check) -> dict:
    try:
        import onnxruntime  # noqa: F401

        from kp_lightning.quantization import FakeQuantizer, convert_to_int8, default_quantized_linears
    except ImportError as err:
        raise Skip(f"the int8 path needs the [onnx] extra (pip install -e '.[onnx]'): {err}") from None
    data = check.data()
    data.setup("fit")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(check.model_dir)).cpu()
    quantizer = FakeQuantizer(model, default_quantized_linears(model), attach=True)
    model.train()
    with torch.no_grad():  # calibrate the observers on a few training batches (on the CPU)
        for i, batch in enumerate(data.train_dataloader()):
            model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch})
            if i >= 3:
                break
    model.eval()
    start = time.perf_counter()
    int8 = convert_to_int8(model, quantizer)
    convert_s = time.perf_counter() - start
    quantizer.detach()
    float_model = transformers.AutoModelForSequenceClassification.from_pretrained(str(check.model_dir)).eval()
    batch, seq = (2, 16) if check.dry else (8, 128)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        reference = float_model(input_ids=ids, attention_mask=mask).logits
        diff = float((int8(ids, attention_mask=mask)["logits"] - reference).abs().max())
        int8_ms = median_ms(lambda: int8(ids, attention_mask=mask), check.latency_s)
        fp32_ms = median_ms(lambda: float_model(input_ids=ids, attention_mask=mask), check.latency_s)
    return {
        "cuda": "not applicable on CUDA: the int8 export runs on ONNX Runtime's CPU provider; timed on the CPU",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "shape": f"{batch}x{seq}",
        "convert_s": convert_s,
        "int8_ms": int8_ms,
        "fp32_torch_cpu_ms": fp32_ms,
        "speedup_vs_fp32_cpu": fp32_ms / int8_ms,
        "max_abs_logit_diff_vs_float": diff,
        "unsigned_weights": int8.meta.get("unsigned_weights"),
    }
