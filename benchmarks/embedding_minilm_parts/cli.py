"""The command line of ``benchmarks/embedding_minilm.py``: the runs phase, then latency and render."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .context import Context
from .cpu_load import Clock
from .int8 import run_int8
from .jobs import job_list, load_runs, save_run
from .latency import relatency
from .model2vec_run import run_model2vec
from .pruning import run_dense, run_pruning
from .render import render
from .settings import M2V_PYTHON, THREADS


def run_all(args) -> None:
    ctx = None
    stored = load_runs()
    for job in job_list():
        if args.only and job["name"] not in args.only:
            continue
        if job["name"] in stored and not (args.force and args.only):
            continue
        ctx = ctx or Context()
        print(f"== {job['name']}", flush=True)
        with Clock() as clock:
            if job["kind"] == "dense":
                run = run_dense(ctx, job)
            elif job["kind"] in ("kprune", "kwon"):
                run = run_pruning(ctx, job)
            elif job["kind"] == "int8":
                run = run_int8(ctx, job)
            else:
                run = run_model2vec(ctx, job, args)
        run = {"name": job["name"], "kind": job["kind"], **run, **clock.record(), "finished": time.ctime()}
        stored = save_run(run)
        print(
            f"   {job['name']}: STS-B {run.get('stsb_spearman')}, nDCG@10 {run.get('retrieval_ndcg10')},"
            f" compress {run.get('compress_seconds')} s, job {clock.wall_s:.0f} s wall / {clock.cpu_s:.0f} s CPU",
            flush=True,
        )
        render(stored)


def main(description: str) -> None:
    """Parse the command line (``description``: the script's docstring, shown by ``--help``) and run its phases."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--phases", nargs="+", default=["runs", "latency", "render"], choices=["runs", "latency", "render"]
    )
    parser.add_argument("--only", nargs="+", help="run / re-time only these names (see --list)")
    parser.add_argument("--force", action="store_true", help="redo stored runs named by --only")
    parser.add_argument("--list", action="store_true", help="print the run names in order and exit")
    parser.add_argument("--quiet-cores", type=float, default=0.3, help="latency: wait until others use fewer cores")
    parser.add_argument("--quiet-wait", type=float, default=300, help="latency: at most this many s per row")
    parser.add_argument("--m2v-python", type=Path, default=M2V_PYTHON, help="python with model2vec[distill]")
    args = parser.parse_args()
    if args.list:
        print("\n".join(j["name"] for j in job_list()))
        return
    torch.set_num_threads(THREADS)
    if "runs" in args.phases:
        run_all(args)
    if "latency" in args.phases:
        relatency(args)
    render()
