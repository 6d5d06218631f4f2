"""The latency phase: every stored run re-timed against the dense fp32 model, interleaved, on a quiet machine."""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness import minilm_dir

from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.compaction import compact
from kp_lightning.core.latency import measure_latency
from kp_lightning.core.structure import EncoderStructure
from kp_lightning.embedding.loading import load_embedding_model

from .cpu_load import Clock, OthersCpu, wait_quiet
from .jobs import load_runs, save_run
from .model2vec_run import m2v_ms, m2v_texts
from .onnx_runtime import ort_session, ort_timer
from .settings import LATENCY_SHAPES


def torch_ms(model, batch: int, seq: int) -> float:
    result = measure_latency(model, batch_sizes=[batch], seq_lens=[seq], min_run_time=2.0)
    return result["results"][0]["median_ms"]


def relatency(args) -> None:
    """Re-time every stored run against the dense model, interleaved, in one pass."""
    clock = Clock().__enter__()
    dense = load_embedding_model(minilm_dir()).eval()
    shape = EncoderAdapter(dense).shape()
    runs = load_runs()
    dense_ms = {f"b{b}_s{s}": [] for b, s in LATENCY_SHAPES}
    for name, run in runs.items():
        if name == "dense" or run.get("not_run") or (args.only and name not in args.only):
            continue
        if run["kind"] in ("kprune", "kwon"):
            structure = EncoderStructure(
                shape=shape,
                heads=[list(range(h)) for h in run["heads_per_layer"]],
                neurons=[list(range(n)) for n in run["neurons_per_layer"]],
                hidden=list(range(shape.hidden_size)),
            )
            model = compact(dense, structure).eval()
            timed = lambda b, s, m=model: torch_ms(m, b, s)  # noqa: E731
        elif run["kind"] == "int8":
            session = ort_session(Path(run["onnx_path"]))
            timed = lambda b, s, sess=session: ort_timer(sess, b, s, dense.config.vocab_size)  # noqa: E731
        elif run["kind"] == "model2vec":
            import transformers
            from model2vec import StaticModel

            static = StaticModel.from_pretrained(run["model_path"])
            tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
            texts = {(b, s): m2v_texts(tokenizer, b, s) for b, s in LATENCY_SHAPES}
            run["latency_texts_tokens"] = {
                f"b{b}_s{s}": [len(static.tokenizer.encode(t).ids) for t in texts[(b, s)]][:4]
                for b, s in LATENCY_SHAPES
            }
            timed = lambda b, s, m=static: m2v_ms(m, texts[(b, s)])  # noqa: E731
        else:
            continue
        quiet = wait_quiet(args.quiet_cores, args.quiet_wait)
        latency = {}
        with OthersCpu() as others:
            for batch, seq in LATENCY_SHAPES:
                d, p = [], []
                for _ in range(2):  # A B A B: drift on a shared machine hits both alike
                    d.append(torch_ms(dense, batch, seq))
                    p.append(timed(batch, seq))
                key = f"b{batch}_s{seq}"
                latency[key] = {"dense_ms": min(d), "ms": min(p), "dense_all_ms": d, "all_ms": p}
                dense_ms[key].append(min(d))
            if run["kind"] == "int8" and run.get("onnx_path_sdpa_export"):  # diagnostic: the as-is export
                sdpa = ort_session(Path(run["onnx_path_sdpa_export"]))
                run["latency_sdpa_export_ms"] = {
                    f"b{b}_s{s}": ort_timer(sdpa, b, s, dense.config.vocab_size) for b, s in LATENCY_SHAPES
                }
        run["latency"] = latency
        run["latency_conditions"] = {**quiet, "others_cores_during": others.cores, "loadavg_1min": os.getloadavg()[0]}
        save_run(run)
        print(
            f"latency {name}: "
            + ", ".join(f"{k} {v['ms']:.1f} ms ({v['dense_ms'] / v['ms']:.2f}x)" for k, v in latency.items()),
            flush=True,
        )
    clock.__exit__(None, None, None)
    runs = load_runs()
    if "dense" in runs and any(dense_ms.values()) and not args.only:  # a partial pass keeps the full pass's dense row
        runs["dense"]["latency"] = {
            k: {"dense_ms": sorted(v)[len(v) // 2], "ms": sorted(v)[len(v) // 2], "dense_all_ms": v}
            for k, v in dense_ms.items()
            if v
        }
        runs["dense"]["latency_phase"] = {**clock.record(), "finished": time.ctime()}
        save_run(runs["dense"])
