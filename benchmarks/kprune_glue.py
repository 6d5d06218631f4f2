"""K-prune vs Kwon et al. on MiniLM-L6 teachers: dev metric (mean ± std over seeds), pruning time, CPU speedup.

    python benchmarks/kprune_glue.py --tasks mrpc sst2                       # the committed protocol
    python benchmarks/kprune_glue.py --tasks mrpc --methods kwon --reductions 0.6 --kwon-examples 377
    python benchmarks/kprune_glue.py --render-only
    python benchmarks/kprune_glue.py --tasks mrpc --relatency   # re-time every stored run's shape

Protocol: K-prune on the paper's default sample (``--num-tokens``, 100K tokens of training examples); Kwon on
its own default (``--kwon-examples``, 2048 examples). Each seed draws a different sample set; the reductions in
``--multi-seed-reductions`` run every seed of ``--seeds``, the others the first seed only. Teachers come from
``benchmarks/finetune_teachers.py`` (``~/.cache/kp_lightning/teachers/minilm-<task>``), data from
``../shared/data``. Each run is evaluated with the same ``TaskModule`` validation as ``train.py`` and timed at
batch 32 × 128 and 1 × 32 on CPU, interleaved with the dense model. One forward+backward pass of the dense
model over the same sample set is timed right before each run (``pass_seconds``).

Every single run is stored in ``results/kprune_glue_runs.json`` as it finishes (a rerun of the same task,
method, reduction, seed and sample size is skipped, so an interrupted benchmark resumes); the rows of
``results/kprune_glue.json`` (one per task, method and reduction; the mean over its seeds, with
``metric_pruned_std``), the markdown table and the PNG are rewritten from it. Latency depends only on the
kept sizes, so ``--relatency`` re-times each stored run with a compact model of its sizes (after a change to
the compact modeling code) without pruning again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.compaction import compact
from kp_lightning.core.export import load_compressed
from kp_lightning.core.flops import model_flops
from kp_lightning.core.latency import measure_latency
from kp_lightning.core.structure import EncoderStructure
from kp_lightning.datamodules import GlueDataModule, SquadDataModule
from kp_lightning.modules import TaskModule
from kp_lightning.modules.model_loading import accepted_inputs
from kp_lightning.pruning import KPruneConfig, KwonConfig, kprune, kwon_prune
from kp_lightning.pruning.sample_set import SampleSet
from kp_lightning.pruning.sampling import collate_sample_batches, draw_sample_batches

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RUNS = RESULTS / "kprune_glue_runs.json"
SHARED = ROOT.parent.parent / "shared" / "data"
TEACHERS = Path(os.path.expanduser("~/.cache/kp_lightning/teachers"))
LATENCY_SHAPES = ((32, 128), (1, 32))


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


def side_by_side_latency(dense: torch.nn.Module, pruned: torch.nn.Module, batch: int, seq: int) -> tuple[float, float]:
    """Dense and pruned median latency, interleaved twice (A B A B) so drift on a shared machine hits both alike."""
    dense_ms, pruned_ms = [], []
    for _ in range(2):
        for model, store in ((dense, dense_ms), (pruned, pruned_ms)):
            result = measure_latency(model, batch_sizes=[batch], seq_lens=[seq], min_run_time=2.0)
            store.append(result["results"][0]["median_ms"])
    return min(dense_ms), min(pruned_ms)


def latency_table(dense: torch.nn.Module, pruned: torch.nn.Module) -> dict:
    table = {}
    for batch, seq in LATENCY_SHAPES:
        t_dense, t_pruned = side_by_side_latency(dense, pruned, batch, seq)
        table[f"b{batch}_s{seq}"] = {"dense_ms": t_dense, "pruned_ms": t_pruned}
    return table


def relatency(task: str, args) -> None:
    """Re-time every stored run of ``task`` with a compact model of its kept sizes (the units do not matter)."""
    dense = load_compressed(args.teachers / f"minilm-{task}").eval()
    shape = EncoderAdapter(dense).shape()
    for run in [r for r in load_runs() if r["task"] == task]:
        structure = EncoderStructure(
            shape=shape,
            heads=[list(range(h)) for h in run["heads_per_layer"]],
            neurons=[list(range(n)) for n in run["neurons_per_layer"]],
            hidden=list(range(shape.hidden_size)),
        )
        run["latency"] = latency_table(dense, compact(dense, structure).eval())
        render(save_run(run))
        speed = run["latency"]["b32_s128"]["dense_ms"] / run["latency"]["b32_s128"]["pruned_ms"]
        print(f"{task} {run['method']} {run['flops_reduction']:.0%} seed {run['seed']}: {speed:.2f}x", flush=True)


def sample_set(data, dense, task: str, method: str, seed: int, num_tokens: int, kwon_examples: int) -> SampleSet:
    """K-prune: random examples up to ``num_tokens``; Kwon: ``kwon_examples`` random examples (its default)."""
    train = data.datasets["train"]
    batch_size = 16 if task == "squad" else 32
    if method == "kprune":
        batches = draw_sample_batches(train, data.train_collator(), num_tokens, batch_size, seed=seed)
    else:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:kwon_examples].tolist()
        batches = collate_sample_batches(train, data.train_collator(), order, batch_size)
    return SampleSet(batches, "cpu", accepted_inputs(dense))


def sample_key(method: str, num_tokens: int, kwon_examples: int) -> str:
    return f"tokens={num_tokens}" if method == "kprune" else f"examples={kwon_examples}"


def load_runs() -> list[dict]:
    return json.loads(RUNS.read_text()) if RUNS.exists() else []


def save_run(run: dict) -> list[dict]:
    key = ("task", "method", "flops_reduction", "seed", "sample")
    runs = [r for r in load_runs() if tuple(r[k] for k in key) != tuple(run[k] for k in key)] + [run]
    runs.sort(key=lambda r: tuple(r[k] for k in key))
    RUNS.write_text(json.dumps(runs, indent=1) + "\n")
    return runs


def one_run(task, method, reduction, seed, dense, module, data, metric_dense, args) -> dict:
    samples = sample_set(data, dense, task, method, seed, args.num_tokens, args.kwon_examples)
    seconds_pass = pass_seconds(dense, samples)  # next to the pruning run: same machine load
    cpu_start = time.process_time()
    if method == "kprune":
        result = kprune(dense, samples, module.task.kind, KPruneConfig(reduction), progress=False)
    else:
        result = kwon_prune(dense, samples, module.task.kind, KwonConfig(reduction), progress=False)
    cpu_seconds = time.process_time() - cpu_start
    module.model = result.model
    metric = evaluate(module, data)
    module.model = dense
    latency = latency_table(dense, result.model)
    flops_128 = model_flops(dense, 128)["total"] / model_flops(result.model, 128)["total"]
    return {
        "task": task,
        "method": method,
        "flops_reduction": reduction,
        "seed": seed,
        "sample": sample_key(method, args.num_tokens, args.kwon_examples),
        "flops_reduction_actual": result.flops_reduction,
        "metric_name": module.task.main_metric,
        "metric_dense": metric_dense,
        "metric_pruned": metric,
        "prune_seconds": result.seconds["total"],
        "prune_cpu_seconds": cpu_seconds,
        "pass_seconds": seconds_pass,
        "latency": latency,
        "ideal_speedup_b32_s128": flops_128,
        "phase_seconds": result.seconds,
        "num_samples": samples.num_samples,
        "num_tokens": samples.num_tokens,
        "heads_per_layer": [len(h) for h in result.structure.heads],
        "neurons_per_layer": [len(n) for n in result.structure.neurons],
        "notes": result.notes,
        "peak_process_rss_bytes": result.stats.get("peak_process_rss_bytes"),
        "peak_cache_bytes": result.stats.get("peak_cache_bytes"),
    }


def mean(values) -> float:
    return statistics.fmean(values)


def std(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per task, method and reduction: means over its seeds (the keys of the single-seed rows)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["task"], run["method"], run["flops_reduction"], run["sample"]), []).append(run)
    rows = []
    for (task, method, reduction, sample), group in sorted(groups.items()):
        group.sort(key=lambda r: r["seed"])
        speed = {
            k: [r["latency"][k]["dense_ms"] / r["latency"][k]["pruned_ms"] for r in group] for k in group[0]["latency"]
        }
        rows.append(
            {
                "task": task,
                "method": method,
                "flops_reduction": reduction,
                "sample": sample,
                "seeds": [r["seed"] for r in group],
                "flops_reduction_actual": mean([r["flops_reduction_actual"] for r in group]),
                "metric_name": group[0]["metric_name"],
                "metric_dense": group[0]["metric_dense"],
                "metric_pruned": mean([r["metric_pruned"] for r in group]),
                "metric_pruned_std": std([r["metric_pruned"] for r in group]),
                "metric_pruned_per_seed": [r["metric_pruned"] for r in group],
                "prune_seconds": mean([r["prune_seconds"] for r in group]),
                "prune_cpu_seconds": mean([r["prune_cpu_seconds"] for r in group]),
                "pass_seconds": mean([r["pass_seconds"] for r in group]),
                "latency_speedup": mean(speed["b32_s128"]),
                "latency_speedup_b1_s32": mean(speed["b1_s32"]),
                "ideal_speedup": 1 / (1 - reduction),
                "ideal_speedup_b32_s128": mean([r["ideal_speedup_b32_s128"] for r in group]),
                "latency_ms_dense": mean([r["latency"]["b32_s128"]["dense_ms"] for r in group]),
                "latency_ms_pruned": mean([r["latency"]["b32_s128"]["pruned_ms"] for r in group]),
                "num_samples": round(mean([r["num_samples"] for r in group])),
                "num_tokens": round(mean([r["num_tokens"] for r in group])),
                "heads_per_layer": group[0]["heads_per_layer"],
                "neurons_per_layer": group[0]["neurons_per_layer"],
                "notes": sorted({n for r in group for n in r["notes"]}),
                "peak_process_rss_bytes": max(r["peak_process_rss_bytes"] or 0 for r in group),
            }
        )
    return rows


def percent(row: dict, value: float) -> float:
    """Metric in points (SQuAD's torchmetrics F1/EM are already percentages)."""
    return value if row["task"] == "squad" else value * 100


def write_markdown(rows: list[dict]) -> None:
    lines = [
        "# K-prune vs Kwon et al. on MiniLM-L6 (CPU, 2 cores)",
        "",
        "Written by `benchmarks/kprune_glue.py` from `kprune_glue_runs.json`. Pruned metric: mean ± sample std over",
        "the seeds (each seed draws another sample set). K-prune: 100K-token sample; Kwon: 2048 examples (its own",
        "default). `prune s` / `cpu s`: wall and process CPU time of one pruning run; `pass s`: one forward+backward",
        "pass of the dense model over the same sample. Speedup: fp32 CPU latency, dense and pruned interleaved;",
        "`ideal`: dense / pruned analytic FLOPs (encoder + head) at 128 tokens. Reduction = encoder FLOPs removed",
        "at the FLOPs model's sequence length (the sample's mean length).",
        "",
        "| task | method | FLOPs removed | sample | seeds | metric | dense | pruned | Δ | prune s | cpu s | pass s"
        " | speedup b32×128 | ideal | of ideal | speedup b1×32 |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        spread = f" ± {percent(r, r['metric_pruned_std']):.2f}" if len(r["seeds"]) > 1 else ""
        lines.append(
            f"| {r['task']} | {r['method']} | {r['flops_reduction']:.0%} | {r['sample']} | {len(r['seeds'])}"
            f" | {r['metric_name']} | {percent(r, r['metric_dense']):.2f}"
            f" | {percent(r, r['metric_pruned']):.2f}{spread}"
            f" | {percent(r, r['metric_pruned'] - r['metric_dense']):+.2f} | {r['prune_seconds']:.0f}"
            f" | {r['prune_cpu_seconds']:.0f} | {r['pass_seconds']:.1f} | {r['latency_speedup']:.2f}×"
            f" | {r['ideal_speedup_b32_s128']:.2f}× | {r['latency_speedup'] / r['ideal_speedup_b32_s128']:.2f}"
            f" | {r['latency_speedup_b1_s32']:.2f}× |"
        )
    settings = sorted({(r["task"], r["method"], r["num_tokens"], r["num_samples"]) for r in rows})
    lines += ["", "Sample sets (mean over seeds): "]
    lines += [f"- {t} {m}: {n} examples, {k} tokens" for t, m, k, n in settings]
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
            mine = sorted((r for r in task_rows if r["method"] == method), key=lambda r: r["flops_reduction"])
            if mine:
                x = [r["flops_reduction"] for r in mine]
                y = [percent(r, r["metric_pruned"]) for r in mine]
                err = [percent(r, r["metric_pruned_std"]) for r in mine]
                ax.errorbar(x, y, yerr=err, fmt="o-", color=color, capsize=3, label=method)
        ax.axhline(percent(task_rows[0], task_rows[0]["metric_dense"]), color="gray", ls="--", label="dense")
        ax.set_title(f"MiniLM-L6 {task} (error bars: std over seeds)")
        ax.set_xlabel("fraction of encoder FLOPs removed")
        ax.set_ylabel(task_rows[0]["metric_name"])
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "kprune_glue.png", dpi=110)
    plt.close(fig)


def render(runs: list[dict]) -> None:
    rows = aggregate(runs)
    (RESULTS / "kprune_glue.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_markdown(rows)
    write_plot(rows)


def run_task(task: str, args) -> None:
    teacher = args.teachers / f"minilm-{task}"
    if not (teacher / "config.json").exists():
        raise SystemExit(f"{teacher} not found: run python benchmarks/finetune_teachers.py {task} first")
    data = datamodule(task, str(teacher))
    data.prepare_data()
    data.setup("fit")
    module = TaskModule(str(teacher), task_spec=data.task_spec)
    dense = module.model.eval()
    metric_dense = None
    done = {(r["method"], r["flops_reduction"], r["seed"], r["sample"]) for r in load_runs() if r["task"] == task}
    for method in args.methods:
        for reduction in args.reductions:
            seeds = args.seeds if reduction in args.multi_seed_reductions else args.seeds[:1]
            for seed in seeds:
                if (method, reduction, seed, sample_key(method, args.num_tokens, args.kwon_examples)) in done:
                    continue
                metric_dense = evaluate(module, data) if metric_dense is None else metric_dense
                run = one_run(task, method, reduction, seed, dense, module, data, metric_dense, args)
                render(save_run(run))
                print(
                    f"{task} {method} {reduction:.0%} seed {seed}: {run['metric_pruned']:.4f}"
                    f" (dense {metric_dense:.4f}),"
                    f" {run['prune_seconds']:.0f} s, {run['num_samples']} examples / {run['num_tokens']} tokens",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "sst2"])
    parser.add_argument("--methods", nargs="+", default=["kprune", "kwon"], choices=["kprune", "kwon"])
    parser.add_argument("--reductions", nargs="+", type=float, default=[0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--multi-seed-reductions", nargs="+", type=float, default=[0.6, 0.8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--num-tokens", type=int, default=100_000, help="K-prune sample tokens (paper: 100K)")
    parser.add_argument("--kwon-examples", type=int, default=2048, help="Kwon sample examples (its default: 2048)")
    parser.add_argument("--teachers", type=Path, default=TEACHERS)
    parser.add_argument("--render-only", action="store_true", help="rewrite the JSON rows, markdown and PNG")
    parser.add_argument("--relatency", action="store_true", help="re-time the stored runs of --tasks, no pruning")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.relatency:
        for task in args.tasks:
            relatency(task, args)
    elif not args.render_only:
        torch.manual_seed(0)
        for task in args.tasks:
            run_task(task, args)
    render(load_runs())


if __name__ == "__main__":
    main()
