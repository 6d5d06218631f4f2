"""K-prune vs Kwon et al. on MiniLM-L6 teachers: dev metric, pruning time and CPU speedup per FLOPs reduction.

    python benchmarks/kprune_glue.py --tasks sst2 mrpc [--num-tokens 20000] [--reductions 0.4 0.5 0.6 0.7 0.8]
    python benchmarks/kprune_glue.py --tasks squad --reductions 0.6 --methods kprune kwon

Teachers come from ``benchmarks/finetune_teachers.py`` (``~/.cache/kp_lightning/teachers/minilm-<task>``),
data from ``../shared/data``. For each task the dense model is evaluated once and one forward+backward pass
over the sample set is timed right before each pruning run (``pass_seconds``); each run is evaluated with the
same ``TaskModule`` validation as ``train.py``, and timed at batch 32 × 128 on CPU next to the dense model.
Rows are appended to ``benchmarks/results/kprune_glue.json`` as they finish (a rerun replaces rows with
the same task, method and reduction); the markdown table and PNG are rewritten from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from kp_lightning.core.latency import measure_latency
from kp_lightning.datamodules import GlueDataModule, SquadDataModule
from kp_lightning.modules import TaskModule
from kp_lightning.modules.model_loading import accepted_inputs
from kp_lightning.pruning import KPruneConfig, KwonConfig, kprune, kwon_prune
from kp_lightning.pruning.sample_set import SampleSet
from kp_lightning.pruning.sampling import draw_sample_batches

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SHARED = ROOT.parent.parent / "shared" / "data"
TEACHERS = Path(os.path.expanduser("~/.cache/kp_lightning/teachers"))


def datamodule(task: str, teacher: str) -> pl.LightningDataModule:
    if task == "squad":  # configs/data/squad_dev_split.yaml
        return SquadDataModule(
            tokenizer=teacher,
            validation_source=str(SHARED / "squad" / "dev-v1.1.json.zip"),
            eval_fraction=0.2,
            max_length=256,
            doc_stride=64,
            batch_size=16,
            eval_batch_size=32,
        )
    return GlueDataModule(task=task, data_dir=str(SHARED / "glue"), tokenizer=teacher, batch_size=32, max_length=128)


def evaluate(module: TaskModule, data) -> float:
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    return float(trainer.validate(module, datamodule=data, verbose=False)[0][module.task.main_metric])


def pass_seconds(model: torch.nn.Module, samples: SampleSet) -> float:
    """One forward+backward pass of the dense model over the sample set (task loss, parameter gradients)."""
    model.train(False)
    tick = time.perf_counter()
    with torch.enable_grad():
        for _, batch in samples.batches():
            model(**samples.model_inputs(batch, with_labels=True)).loss.backward()
    seconds = time.perf_counter() - tick
    model.zero_grad(set_to_none=True)
    return seconds


def latency_ms(model: torch.nn.Module) -> float:
    return measure_latency(model, batch_sizes=[32], seq_lens=[128], min_run_time=3.0)["results"][0]["median_ms"]


def side_by_side_latency(dense: torch.nn.Module, pruned: torch.nn.Module) -> tuple[float, float]:
    """Dense and pruned latency, interleaved twice (A B A B) so drift on a shared machine hits both alike."""
    dense_ms, pruned_ms = [], []
    for _ in range(2):
        dense_ms.append(latency_ms(dense))
        pruned_ms.append(latency_ms(pruned))
    return min(dense_ms), min(pruned_ms)


def save_row(row: dict) -> list[dict]:
    path = RESULTS / "kprune_glue.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    key = (row["task"], row["method"], row["flops_reduction"])
    rows = [r for r in rows if (r["task"], r["method"], r["flops_reduction"]) != key] + [row]
    rows.sort(key=lambda r: (r["task"], r["method"], r["flops_reduction"]))
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def percent(row: dict, value: float) -> float:
    """Metric in points (SQuAD's torchmetrics F1/EM are already percentages)."""
    return value if row["task"] == "squad" else value * 100


def write_markdown(rows: list[dict]) -> None:
    lines = [
        "# K-prune vs Kwon et al. on MiniLM-L6 (CPU, 2 cores)",
        "",
        "Written by `benchmarks/kprune_glue.py`. `pass_seconds`: one forward+backward pass of the dense model over",
        "the same sample set, measured in the same run. Speedup: fp32 CPU latency at batch 32 × 128, dense and",
        "pruned measured side by side. Reduction = fraction of encoder FLOPs removed.",
        "",
        "| task | method | FLOPs removed | metric | dense | pruned | Δ | prune s | pass s | prune/pass | speedup"
        " | ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['flops_reduction']:.0%} (actual {r['flops_reduction_actual']:.1%})"
            f" | {r['metric_name']} | {percent(r, r['metric_dense']):.2f} | {percent(r, r['metric_pruned']):.2f}"
            f" | {percent(r, r['metric_pruned'] - r['metric_dense']):+.2f} | {r['prune_seconds']:.1f}"
            f" | {r['pass_seconds']:.1f} | {r['prune_seconds'] / r['pass_seconds']:.2f}"
            f" | {r['latency_speedup']:.2f}× | {r['ideal_speedup']:.2f}× |"
        )
    settings = sorted({(r["task"], r["num_tokens"], r["num_samples"]) for r in rows})
    lines += ["", "Sample sets: " + "; ".join(f"{t}: {n} examples, {k} tokens" for t, k, n in settings)]
    (RESULTS / "kprune_glue.md").write_text("\n".join(lines) + "\n")


def write_plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        task_rows = [r for r in rows if r["task"] == task]
        for method, color in (("kprune", "#3b6ea5"), ("kwon", "#c0504d")):
            mine = [r for r in task_rows if r["method"] == method]
            pts = sorted((r["flops_reduction"], percent(r, r["metric_pruned"])) for r in mine)
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=color, label=method)
        ax.axhline(percent(task_rows[0], task_rows[0]["metric_dense"]), color="gray", ls="--", label="dense")
        ax.set_title(f"MiniLM-L6 {task}")
        ax.set_xlabel("fraction of encoder FLOPs removed")
        ax.set_ylabel(task_rows[0]["metric_name"])
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "kprune_glue.png", dpi=110)
    plt.close(fig)


def run_task(task: str, methods: list[str], reductions: list[float], num_tokens: int, teachers: Path) -> None:
    teacher = teachers / f"minilm-{task}"
    if not (teacher / "config.json").exists():
        raise SystemExit(f"{teacher} not found: run python benchmarks/finetune_teachers.py {task} first")
    data = datamodule(task, str(teacher))
    data.prepare_data()
    data.setup("fit")
    module = TaskModule(str(teacher), task_spec=data.task_spec)
    dense = module.model.eval()
    metric_dense = evaluate(module, data)
    batch_size = 16 if task == "squad" else 32
    batches = draw_sample_batches(data.datasets["train"], data.train_collator(), num_tokens, batch_size, seed=0)
    samples = SampleSet(batches, "cpu", accepted_inputs(dense))
    print(
        f"{task}: dense {metric_dense:.4f}, sample {samples.num_samples} examples / {samples.num_tokens} tokens",
        flush=True,
    )
    for method in methods:
        for reduction in reductions:
            seconds_pass = pass_seconds(dense, samples)  # next to each pruning run: same machine load
            if method == "kprune":
                result = kprune(dense, samples, module.task.kind, KPruneConfig(reduction), progress=False)
            else:
                result = kwon_prune(dense, samples, module.task.kind, KwonConfig(reduction), progress=False)
            module.model = result.model
            metric = evaluate(module, data)
            module.model = dense
            t_dense, t_pruned = side_by_side_latency(dense, result.model)
            row = {
                "task": task,
                "method": method,
                "flops_reduction": reduction,
                "flops_reduction_actual": result.flops_reduction,
                "metric_name": module.task.main_metric,
                "metric_dense": metric_dense,
                "metric_pruned": metric,
                "prune_seconds": result.seconds["total"],
                "pass_seconds": seconds_pass,
                "latency_speedup": t_dense / t_pruned,
                "ideal_speedup": 1 / (1 - reduction),
                "latency_ms_dense": t_dense,
                "latency_ms_pruned": t_pruned,
                "phase_seconds": result.seconds,
                "num_samples": samples.num_samples,
                "num_tokens": samples.num_tokens,
                "heads_per_layer": [len(h) for h in result.structure.heads],
                "neurons_per_layer": [len(n) for n in result.structure.neurons],
                "notes": result.notes,
                "peak_process_rss_bytes": result.stats.get("peak_process_rss_bytes"),
                "peak_cache_bytes": result.stats.get("peak_cache_bytes"),
            }
            rows = save_row(row)
            write_markdown(rows)
            write_plot(rows)
            print(
                f"{task} {method} {reduction:.0%}: {metric:.4f} (dense {metric_dense:.4f}), "
                f"{row['prune_seconds']:.1f} s, speedup {row['latency_speedup']:.2f}x",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"])
    parser.add_argument("--methods", nargs="+", default=["kprune", "kwon"], choices=["kprune", "kwon"])
    parser.add_argument("--reductions", nargs="+", type=float, default=[0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--num-tokens", type=int, default=20_000, help="sample-set tokens (paper: 100000)")
    parser.add_argument("--teachers", type=Path, default=TEACHERS)
    parser.add_argument("--render-only", action="store_true", help="rewrite the markdown and PNG from the JSON")
    args = parser.parse_args()
    if args.render_only:
        rows = json.loads((RESULTS / "kprune_glue.json").read_text())
        write_markdown(rows)
        write_plot(rows)
        return
    torch.manual_seed(0)
    RESULTS.mkdir(exist_ok=True)
    for task in args.tasks:
        run_task(task, args.methods, args.reductions, args.num_tokens, args.teachers)


if __name__ == "__main__":
    main()
