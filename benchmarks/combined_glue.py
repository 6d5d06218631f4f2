"""Methods composed on MiniLM-L6 SST-2: K-prune 60 % → QAT int8, and K-prune → short distillation → QAT int8.

    python benchmarks/combined_glue.py                        # every stage, then measure and render
    python benchmarks/combined_glue.py --stages measure render  # re-time the finished models only

Stages (a finished stage's output is reused unless ``--retrain``; models under ``benchmarks/.work/combined``):

* ``kprune``: ``kp-lightning prune -c kprune`` on the SST-2 teacher (``benchmarks/finetune_teachers.py sst2``),
  60 % of encoder FLOPs removed, the paper's 100K-token sample;
* ``distill``: ``train fit -c distill/glue`` of the compact model with KD from the dense teacher, ``--distill-steps``;
* ``qat``: ``train fit -c pofa/qat_compact_glue_cpu`` (8-bit QAT + KD from the dense teacher) of the K-prune model and
  of the distilled one; each writes an int8 ONNX model and its dev accuracy (``quantization_report.json``);
* ``measure``: dev accuracy, file size and CPU latency of every model against the dense fp32 teacher, timed in one
  process, interleaved (dense, model, dense, model, ...), at batch 32 × 128 and 1 × 32;
* ``render``: ``results/combined_glue.{json,md}``.

Target (the issue): ≥ 3.5× faster than dense fp32 at ≤ 2 points accuracy loss.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"
WORK = ROOT / ".work" / "combined"
SHARED = REPO.parent / "shared" / "data"
TEACHER = Path(os.path.expanduser("~/.cache/kp_lightning/teachers/minilm-sst2"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
SHAPES = ((32, 128), (1, 32))
STAGES = ("kprune", "distill", "qat", "measure", "render")
DATA: list[str] = []  # set in main(): the SST-2 recipe and --data-dir


def command(*args: str) -> float:
    """``python -m kp_lightning <args>`` from the repository; returns wall seconds."""
    tick = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kp_lightning", *args], check=True, cwd=REPO, env=ENV)
    return time.perf_counter() - tick


def fit(name: str, args: list[str]) -> float:
    root = WORK / f"{name}_run"
    shutil.rmtree(root, ignore_errors=True)
    return command("train", "fit", *args, "--trainer.enable_progress_bar", "false", "--trainer.logger", "CSVLogger",
                   "--trainer.logger.save_dir", str(root), "--trainer.default_root_dir", str(root))  # fmt: skip


def kprune_stage(args, timings: dict) -> None:
    out = WORK / "kprune60"
    if (out / "compression_report.json").is_file() and not args.retrain:
        return
    timings["kprune"] = command(
        "prune", "-c", "kprune", *DATA, "--model.init_args.model_name_or_path", str(TEACHER),
        "--pruner.flops_reduction", "0.6", "--pruner.num_tokens", str(args.num_tokens), "--pruner.progress", "false",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--latency_seconds", "0",
        "--output_dir", str(out), "--overwrite", "true",
    )  # fmt: skip


def distill_stage(args, timings: dict) -> None:
    out = WORK / "kprune60_kd"
    if (out / "config.json").is_file() and not args.retrain:
        return
    timings["distill"] = fit("distill", [
        "-c", "distill/glue", *DATA, "--data.init_args.max_length", "64",
        "--model.init_args.model_name_or_path", str(WORK / "kprune60"),
        "--model.init_args.teacher_name_or_path", str(TEACHER), "--model.init_args.alpha_ce", "0.0",
        "--model.init_args.alpha_kd", "1.0", "--model.init_args.learning_rate", "5e-5",
        "--trainer.max_epochs", "-1", "--trainer.max_steps", str(args.distill_steps),
        "--trainer.val_check_interval", str(max(args.distill_steps // 4, 1)), "--trainer.check_val_every_n_epoch",
        "null",
    ])  # fmt: skip
    best = max((WORK / "distill_run").rglob("best_model"), key=lambda p: p.stat().st_mtime)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(best, out)


def qat_stage(args, timings: dict) -> None:
    for source in ("kprune60", "kprune60_kd"):
        out = WORK / f"{source}_int8"
        if (out / "quantization_report.json").is_file() and not args.retrain:
            continue
        timings[f"qat_{source}"] = fit(f"qat_{source}", [
            "-c", "pofa/qat_compact_glue_cpu", *DATA, "--data.init_args.max_length", "64",
            "--model.init_args.model_name_or_path", str(WORK / source),
            "--model.init_args.teacher_name_or_path", str(TEACHER), "--trainer.max_steps", str(args.qat_steps),
            "--trainer.callbacks.output_dir", str(out), "--trainer.callbacks.overwrite", "true",
        ])  # fmt: skip


def interleaved_ms(models: dict, batch: int, seq: int, rounds: int, seconds: float) -> dict[str, float]:
    """Median latency of each model over ``rounds`` interleaved measurements (dense first in every round)."""
    from kp_lightning.core.latency import measure_latency

    samples: dict[str, list[float]] = {name: [] for name in models}
    grid = {"batch_sizes": [batch], "seq_lens": [seq], "min_run_time": seconds}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name].append(measure_latency(model, **grid)["results"][0]["median_ms"])
    return {name: statistics.median(values) for name, values in samples.items()}


def dev_accuracy(path: Path) -> float:
    """SST-2 dev accuracy of a model directory with ``train validate`` (same metric code as training)."""
    import lightning.pytorch as pl

    from kp_lightning.datamodules import GlueDataModule
    from kp_lightning.modules import TaskModule

    data = GlueDataModule(task="sst2", data_dir=DATA[-1], tokenizer=str(TEACHER), max_length=128)
    module = TaskModule(str(path), task_spec=data.task_spec)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return float(trainer.validate(module, datamodule=data, verbose=False)[0]["val/accuracy"])


def measure_stage(args) -> dict:
    import transformers

    from kp_lightning.core.export import load_compressed
    from kp_lightning.quantization import load_int8

    dense = transformers.AutoModelForSequenceClassification.from_pretrained(TEACHER).eval()
    models = {"dense fp32": dense}
    rows = [{"model": "dense fp32", "path": str(TEACHER), "accuracy": dev_accuracy(TEACHER),
             "size_bytes": (TEACHER / "model.safetensors").stat().st_size}]  # fmt: skip
    for name, path in (("K-prune 60 % fp32", WORK / "kprune60"), ("K-prune 60 % → KD fp32", WORK / "kprune60_kd")):
        if (path / "config.json").is_file():
            models[name] = load_compressed(path).eval()
            rows.append({"model": name, "path": str(path), "accuracy": dev_accuracy(path),
                         "size_bytes": (path / "model.safetensors").stat().st_size})  # fmt: skip
    for name, source in (("K-prune 60 % → QAT int8", "kprune60"), ("K-prune 60 % → KD → QAT int8", "kprune60_kd")):
        path = WORK / f"{source}_int8"
        if (path / "quantization_report.json").is_file():
            report = json.loads((path / "quantization_report.json").read_text())
            models[name] = load_int8(path)
            rows.append({"model": name, "path": str(path), "accuracy": report["metrics_int8"]["val/accuracy"],
                         "size_bytes": (path / "model.onnx").stat().st_size})  # fmt: skip
    latency = {f"{b}x{s}": interleaved_ms(models, b, s, args.rounds, args.latency_seconds) for b, s in SHAPES}
    dense_acc = rows[0]["accuracy"]
    for row in rows:
        row["delta_points"] = 100 * (row["accuracy"] - dense_acc)
        row["latency_ms"] = {shape: ms[row["model"]] for shape, ms in latency.items()}
        row["speedup"] = {shape: ms["dense fp32"] / ms[row["model"]] for shape, ms in latency.items()}
        row["meets_target"] = row["delta_points"] >= -2 and row["speedup"]["32x128"] >= 3.5
    meta = {"torch_threads": torch.get_num_threads(), "rounds": args.rounds, "seconds": args.latency_seconds,
            "teacher": str(TEACHER), "num_tokens": args.num_tokens, "distill_steps": args.distill_steps,
            "qat_steps": args.qat_steps, "cpu": os.cpu_count()}  # fmt: skip
    return {"meta": meta, "rows": rows}


def render(data: dict) -> None:
    meta = data["meta"]
    lines = [
        "# Methods composed on MiniLM-L6 SST-2 (2-core CPU)", "",
        f"Dense fp32 teacher vs each model, timed interleaved in one process ({meta['rounds']} rounds × "
        f"{meta['seconds']} s per model and shape, torch threads {meta['torch_threads']}); K-prune on "
        f"{meta['num_tokens']} tokens, KD {meta['distill_steps']} steps, QAT {meta['qat_steps']} steps. "
        "Target: ≥ 3.5× at batch 32 × 128 with ≤ 2 points lost.", "",
        "| model | dev accuracy | Δ points | size | speedup 32×128 | speedup 1×32 | target |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in data["rows"]:
        lines.append(
            f"| {r['model']} | {100 * r['accuracy']:.2f} | {r['delta_points']:+.2f} | {r['size_bytes'] / 1e6:.1f} MB "
            f"| {r['speedup']['32x128']:.2f}× | {r['speedup']['1x32']:.2f}× | {'yes' if r['meets_target'] else 'no'} |"
        )
    (RESULTS / "combined_glue.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def configure(args) -> None:
    global TEACHER, WORK, RESULTS
    TEACHER, WORK, RESULTS = args.teacher.expanduser(), args.work, args.results
    DATA[:] = ["-c", "data/glue/sst2", "--data.init_args.data_dir", str(args.data_dir)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--retrain", action="store_true", help="redo finished stages")
    parser.add_argument("--num-tokens", type=int, default=100_000)
    parser.add_argument("--distill-steps", type=int, default=400)
    parser.add_argument("--qat-steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=2.0)
    parser.add_argument("--teacher", type=Path, default=TEACHER, help="fine-tuned dense SST-2 model")
    parser.add_argument("--data-dir", type=Path, default=SHARED / "glue", help="GLUE folder with SST-2/")
    parser.add_argument("--work", type=Path, default=WORK, help="where the models go")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    configure(args)
    if not TEACHER.is_dir():
        sys.exit(f"error: no SST-2 teacher at {TEACHER}\nfix: python benchmarks/finetune_teachers.py sst2")
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    for stage, run in (("kprune", kprune_stage), ("distill", distill_stage), ("qat", qat_stage)):
        if stage in args.stages:
            run(args, timings)
    out = RESULTS / "combined_glue.json"
    if "measure" in args.stages:
        data = measure_stage(args)
        previous = json.loads(out.read_text()).get("meta", {}).get("stage_seconds", {}) if out.is_file() else {}
        data["meta"]["stage_seconds"] = {**previous, **timings}
        out.write_text(json.dumps(data, indent=2) + "\n")
    if "render" in args.stages:
        render(json.loads(out.read_text()))


if __name__ == "__main__":
    main()
