"""The table rows from the runs file, their formatting and the CPU time totals."""

from __future__ import annotations

COLUMNS = [
    "method", "flops_reduction", "sparsity", "embedding_loss", "stsb_spearman", "retrieval_ndcg10",
    "retrieval_recall1", "retrieval_mrr10", "params", "size_bytes", "latency_ms_b32_s128", "latency_ms_b1_s32",
    "speedup_b32", "speedup_b1", "compress_seconds", "sample", "note",
]  # fmt: skip
NOT_RUN = [
    {"name": "cofi-60", "method": "cofi", "flops_reduction": 0.6, "note": "not run: CoFi 60 % sparsity "
     "(training-time, ~45 min on this CPU for SST-2); another engineer decides whether to run it"},
    {"name": "cofi-90", "method": "cofi", "flops_reduction": 0.9, "note": "not run: CoFi 90 % sparsity "
     "(training-time); another engineer decides whether to run it"},
    {"name": "gmp-90-int8", "method": "gmp+int8", "sparsity": 0.9, "note": "not run: GMP 90 % unstructured + int8 "
     "(Prune Once for All; training-time); another engineer decides whether to run it"},
]  # fmt: skip


def table_rows(runs: dict[str, dict]) -> list[dict]:
    rows = []
    for name, run in runs.items():
        row = {"name": name, **{c: run.get(c) for c in COLUMNS}}
        latency = run.get("latency") or {}
        for key, column in (("b32_s128", "latency_ms_b32_s128"), ("b1_s32", "latency_ms_b1_s32")):
            if key in latency:
                row[column] = latency[key]["ms"]
                row["speedup_" + key.split("_")[0]] = latency[key]["dense_ms"] / latency[key]["ms"]
        busy = (run.get("latency_conditions") or {}).get("others_cores_during")
        if busy is not None and busy > 0.3:
            row["note"] = (row["note"] + "; " if row.get("note") else "") + f"timed while others used {busy:.1f} cores"
        for extra in ("stsb_pearson", "retrieval_recall10", "flops_reduction_at_128", "weight_type", "not_run"):
            if run.get(extra) is not None:
                row[extra] = run[extra]
        rows.append(row)
    for item in NOT_RUN:
        rows.append({"name": item["name"], **{c: item.get(c) for c in COLUMNS}, "not_run": True})
    return rows


def fmt(value, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{value:.0%}"
    if kind == "pct1":
        return f"{value:.1%}"
    if kind == "m":
        return f"{value:.4f}"
    if kind == "x":
        return f"{value:.2f}×"
    if kind == "ms":
        return f"{value:.1f}"
    if kind == "int":
        return f"{value:,}"
    if kind == "s":
        return f"{value:.0f}"
    return str(value)


def total_cpu(runs: dict[str, dict]) -> dict:
    jobs = sum(r.get("job_cpu_seconds") or 0 for r in runs.values())
    wall = sum(r.get("job_wall_seconds") or 0 for r in runs.values())
    phase = (runs.get("dense") or {}).get("latency_phase") or {}
    return {
        "runs_cpu_seconds": jobs,
        "runs_wall_seconds": wall,
        "latency_phase_cpu_seconds": phase.get("job_cpu_seconds"),
        "latency_phase_wall_seconds": phase.get("job_wall_seconds"),
        "total_cpu_seconds": jobs + (phase.get("job_cpu_seconds") or 0),
        "total_wall_seconds": wall + (phase.get("job_wall_seconds") or 0),
    }
