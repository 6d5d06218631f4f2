"""CoFi vs K-prune at the same FLOPs on the MiniLM-L6 SST-2 teacher (2-core CPU schedule).

    python benchmarks/cofi_glue.py [--targets 0.6 0.9] [--steps 1200] [--warmup 600]
    python benchmarks/cofi_glue.py --phases timing latency render   # re-measure without training again

Phases (each appends to ``benchmarks/results/cofi_glue.json``; ``render`` rewrites the markdown):

* ``cofi``: ``train.py fit -c configs/cofi/glue_cpu.yaml`` per target (student = a copy of the teacher);
* ``kprune``: ``prune.py`` at the FLOPs reduction each CoFi model reached (FLOPs at 64 tokens, 20K-token sample);
* ``timing``: one CoFi training step (gate sample, KL, layer distillation, Lagrangian, backward) against
  student forward+backward plus teacher forward, alternating on the same batches in one process;
* ``latency``: dense vs every export at batch 32 × 64 on CPU, measured one after the other in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"
WORK = ROOT / ".work" / "cofi"
SHARED = REPO.parent / "shared" / "data"
TEACHER = Path(os.path.expanduser("~/.cache/kp_lightning/teachers/minilm-sst2"))
SEQ_LEN = 64
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
COLUMNS = ["task", "method", "sparsity_target", "sparsity_actual", "metric_name", "metric_dense", "metric_pruned",
           "train_seconds", "latency_speedup", "step_seconds", "teacher_fwd_plus_student_step_seconds"]  # fmt: skip


def load_rows() -> list[dict]:
    path = RESULTS / "cofi_glue.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def save_rows(rows: list[dict], meta: dict | None = None) -> None:
    path = RESULTS / "cofi_glue.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"meta": meta or old.get("meta", {}), "rows": rows}, indent=2))


def upsert(rows: list[dict], row: dict) -> list[dict]:
    key = (row["method"], row["sparsity_target"] if row["method"] == "cofi" else row["matches"])
    kept = [r for r in rows if (r["method"], r["sparsity_target"] if r["method"] == "cofi" else r["matches"]) != key]
    return [*kept, row]


def run(script: str, args: list[str]) -> float:
    tick = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / script), *args], check=True, cwd=REPO, env=ENV)
    return time.perf_counter() - tick


def cofi_phase(targets: list[float], steps: int, warmup: int, reuse: bool) -> None:
    for target in targets:
        out = WORK / f"cofi_s{round(target * 100)}"
        if reuse and (out / "compression_report.json").is_file():
            print(f"reusing {out}")
        else:
            train_cofi(target, out, steps, warmup)
        report = json.loads((out / "compression_report.json").read_text())
        row = {
            "task": "sst2", "method": "cofi", "sparsity_target": target,
            "sparsity_actual": report["sparsity_actual"], "sparsity_expected": report["sparsity_expected"],
            "metric_name": report["metric_name"], "metric_dense": report["metric_dense"],
            "metric_pruned": report["metric_compressed"], "train_seconds": report["train_seconds"],
            "step_seconds": report["step_seconds"], "flops_reduction": report["flops_reduction_actual"],
            "params_compressed": report["params_compressed"], "selected": report["selected"],
            "structure": {k: report["structure"][k] for k in ("hidden_size", "heads_per_layer", "neurons_per_layer")},
            "export": str(out.relative_to(REPO)),
            "schedule": {"steps": report["global_steps"], "warmup": report["pruner_config"]["warmup_steps"],
                         "batch": 32},
        }  # fmt: skip
        save_rows(upsert(load_rows(), row))


def train_cofi(target: float, out: Path, steps: int, warmup: int) -> None:
    run("train.py", ["fit", "-c", "configs/cofi/glue_cpu.yaml", "-c", "configs/data/glue/sst2.yaml",
                         "--data.init_args.data_dir", str(SHARED / "glue"),
                         "--model.init_args.model_name_or_path", str(TEACHER),
                         "--model.init_args.teacher_name_or_path", str(TEACHER),
                         "--trainer.max_steps", str(steps), "--trainer.callbacks.warmup_steps", str(warmup),
                         "--trainer.callbacks.target_sparsity", str(target),
                         "--trainer.callbacks.output_dir", str(out), "--trainer.callbacks.overwrite", "true",
                         "--trainer.callbacks.latency_seconds", "0", "--trainer.enable_progress_bar", "false",
                         "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(WORK / "logs"),
                         "--trainer.default_root_dir", str(WORK / "root")])  # fmt: skip


def kprune_phase(num_tokens: int) -> None:
    from kp_lightning.cofi import structure_sparsity
    from kp_lightning.core.structure import EncoderStructure

    for cofi in [r for r in load_rows() if r["method"] == "cofi"]:
        out = WORK / f"kprune_at_s{round(cofi['sparsity_target'] * 100)}"
        run("prune.py", ["-c", "configs/prune/kprune.yaml", "-c", "configs/data/glue/sst2.yaml",
                         "--data.init_args.data_dir", str(SHARED / "glue"),
                         "--model.init_args.model_name_or_path", str(TEACHER),
                         "--pruner.flops_reduction", f"{cofi['flops_reduction']:.4f}", "--pruner.seq_len", str(SEQ_LEN),
                         "--pruner.num_tokens", str(num_tokens), "--pruner.progress", "false",
                         "--latency_seconds", "0", "--output_dir", str(out), "--overwrite", "true",
                         "--trainer.logger", "false"])  # fmt: skip
        report = json.loads((out / "compression_report.json").read_text())
        structure = EncoderStructure.from_dict(report["structure"]["kept"])
        row = {
            "task": "sst2", "method": "kprune", "sparsity_target": None, "matches": cofi["sparsity_target"],
            "sparsity_actual": structure_sparsity(structure), "metric_name": report["metric_name"],
            "metric_dense": report["metric_dense"], "metric_pruned": report["metric_compressed"],
            "train_seconds": report["prune_seconds"], "step_seconds": None,
            "flops_reduction": report["flops_reduction_actual"],
            "params_compressed": report["params_compressed"], "export": str(out.relative_to(REPO)),
        }  # fmt: skip
        save_rows(upsert(load_rows(), row))


def timing_phase(repeats: int = 15) -> dict:
    """Median seconds of a CoFi step and of student fwd+bwd + teacher fwd, alternating on the same batches."""
    from kp_lightning.cofi import CoFiPruner, SparsitySchedule
    from kp_lightning.datamodules import GlueDataModule
    from kp_lightning.modules import CoFiSparsityLoss, DistillationModule, DynamicLayerDistillation

    torch.manual_seed(0)
    data = GlueDataModule(task="sst2", data_dir=str(SHARED / "glue"), tokenizer=str(TEACHER), batch_size=32)
    data.setup("fit")
    batches = [b for _, b in zip(range(repeats + 2), data.train_dataloader(), strict=False)]
    module = DistillationModule(str(TEACHER), str(TEACHER), data.task_spec, alpha_ce=0.0, alpha_kd=0.1)
    plain = DistillationModule(str(TEACHER), str(TEACHER), data.task_spec, alpha_ce=1.0, alpha_kd=0.0)
    pruner = CoFiPruner(module.model, SparsitySchedule(0.6, 0, 100))
    pruner.step = 50
    module.add_loss_term("cofi_sparsity", CoFiSparsityLoss(pruner))
    layer = DynamicLayerDistillation()
    layer.existing_layers = pruner.existing_layers
    module.add_loss_term("cofi_layer_distillation", layer)
    module.setup("fit")
    pruner.attach(module.model)
    module.train(), plain.train()

    def cofi_step(batch) -> None:
        sum(module.training_losses(batch).values()).backward()
        module.zero_grad(set_to_none=True)

    def baseline_step(batch) -> None:
        plain.teacher_outputs(batch)
        plain(batch).loss.backward()
        plain.zero_grad(set_to_none=True)

    cofi_s, base_s = [], []
    for i, batch in enumerate(batches):
        for fn, sink in ((cofi_step, cofi_s), (baseline_step, base_s)):
            tick = time.perf_counter()
            fn(batch)
            if i >= 2:  # warm-up
                sink.append(time.perf_counter() - tick)
        pruner.step += 1
    return {"cofi_step_seconds": statistics.median(cofi_s), "baseline_seconds": statistics.median(base_s),
            "repeats": len(cofi_s)}  # fmt: skip


def latency_phase(rows: list[dict]) -> None:
    from kp_lightning.core.export import load_compressed
    from kp_lightning.core.latency import measure_latency
    from kp_lightning.data.task_spec import TaskSpec
    from kp_lightning.modules.model_loading import load_task_model

    spec = TaskSpec(name="sst2", kind="classification", num_labels=2, metrics=["accuracy"])
    dense = load_task_model(str(TEACHER), spec).eval()
    grid = {"batch_sizes": [32], "seq_lens": [SEQ_LEN], "min_run_time": 3.0}
    for row in rows:
        model = load_compressed(REPO / row["export"]).eval()
        d = measure_latency(dense, **grid)["results"][0]["median_ms"]
        p = measure_latency(model, **grid)["results"][0]["median_ms"]
        row["latency_ms"] = {"dense": d, "pruned": p}
        row["latency_speedup"] = d / p


def render(rows: list[dict], meta: dict) -> None:
    order = sorted(rows, key=lambda r: (r.get("sparsity_target") or r.get("matches"), r["method"] != "cofi"))
    lines = [
        "# CoFi vs K-prune on SST-2 (MiniLM-L6-H384 teacher, 2-core CPU)",
        "",
        f"Schedule: {meta.get('schedule', '')}. Latency: fp32 CPU, batch 32 × {SEQ_LEN}, dense and pruned timed "
        "one after the other. K-prune runs at the FLOPs reduction the CoFi model reached.",
        "",
        "| method | sparsity target | sparsity actual | FLOPs removed | accuracy (dense) | accuracy pruned | Δ | "
        "train/prune s | step s | teacher fwd + student step s | CPU speedup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in order:
        target = f"{r['sparsity_target']:.0%}" if r["sparsity_target"] else f"(at CoFi {r['matches']:.0%})"
        step = f"{r['step_seconds']:.3f}" if r.get("step_seconds") else "—"
        base = r.get("teacher_fwd_plus_student_step_seconds")
        lines.append(
            f"| {r['method']} | {target} | {r['sparsity_actual']:.1%} | {r['flops_reduction']:.1%} | "
            f"{100 * r['metric_dense']:.2f} | {100 * r['metric_pruned']:.2f} | "
            f"{100 * (r['metric_pruned'] - r['metric_dense']):+.2f} | {r['train_seconds']:.0f} | {step} | "
            f"{f'{base:.3f}' if base else '—'} | {r.get('latency_speedup') or 0:.2f}× |"
        )
    timing = meta.get("timing")
    if timing:
        ratio = timing["cofi_step_seconds"] / timing["baseline_seconds"]
        lines += ["", f"Step cost, alternating on the same {timing['repeats']} SST-2 batches (median): CoFi step "
                  f"{timing['cofi_step_seconds']:.3f} s vs student fwd+bwd + teacher fwd "
                  f"{timing['baseline_seconds']:.3f} s "
                  f"= {ratio:.2f}×."]  # fmt: skip
    (RESULTS / "cofi_glue.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.6, 0.9])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--warmup", type=int, default=600)
    parser.add_argument("--num-tokens", type=int, default=20000)
    parser.add_argument("--reuse", action="store_true", help="Read finished CoFi exports instead of training again.")
    parser.add_argument("--phases", nargs="+", default=["cofi", "kprune", "timing", "latency", "render"])
    args = parser.parse_args()
    if not TEACHER.is_dir():
        raise SystemExit(f"no teacher at {TEACHER}: run benchmarks/finetune_teachers.py --tasks sst2 first")
    meta = (
        json.loads((RESULTS / "cofi_glue.json").read_text()).get("meta", {})
        if (RESULTS / "cofi_glue.json").exists()
        else {}
    )
    if "cofi" in args.phases:
        meta["schedule"] = "batch 32, student = teacher copy, reg lr 0.05, configs/cofi/glue_cpu.yaml; steps per row"
        save_rows(load_rows(), meta)
        cofi_phase(args.targets, args.steps, args.warmup, args.reuse)
    if "kprune" in args.phases:
        kprune_phase(args.num_tokens)
    if "timing" in args.phases:
        meta["timing"] = timing_phase()
    rows = load_rows()
    if "latency" in args.phases:
        latency_phase(rows)
    for row in rows:
        if "timing" in meta:
            row["teacher_fwd_plus_student_step_seconds"] = meta["timing"]["baseline_seconds"]
            if row["method"] == "cofi":
                row["step_seconds_same_run"] = meta["timing"]["cofi_step_seconds"]
    save_rows(rows, meta)
    if "render" in args.phases:
        render(rows, meta)


if __name__ == "__main__":
    main()
