"""``kp-lightning compare``: several exports side by side, as a markdown table and a metric-vs-speedup PNG.

Every export directory is read through its ``compression_report.json`` (written by ``kp-lightning prune`` for
K-prune and Kwon et al., by the CoFi callback, by the GradualMagnitudePruning / PatternLock sparse exports, by the
QuantizationAwareTraining int8 export, by SaveBestPretrained and by ``export_compact`` / ``export_dense``). One row
per export:

============================  ===========================================================================
column                        report keys
============================  ===========================================================================
export                        the directory's name (its path when two directories share a name)
method                        ``method`` (else ``"<export> export"``)
task                          ``task``
metric                        ``metric_name`` without the ``val/`` prefix
dense → compressed            ``metric_dense`` → ``metric_compressed`` (QAT layout: ``metrics_int8[metric_name]``)
Δ (points)                    compressed − dense, ×100 for metrics stored as fractions (GLUE, MLM accuracy);
                              SQuAD's ``f1``/``exact_match`` are already percent; perplexity is shown raw
encoder FLOPs removed         ``flops_reduction_actual``, else 1 − ``ratios.encoder_flops_kept``
parameters                    ``params_dense`` → ``params_compressed``, else ``reference/compressed.parameters.total``;
                              for ``export`` ``"dense"`` or ``"sparse"`` (zeros in place) the non-zero counts
speedup                       ``latency_speedup`` (dense / compressed median latency, measured in the same run)
size on disk                  a recorded compressed copy (``storage.sparse_file_bytes``,
                              ``sparse_int8_storage.sparse_file_bytes``), else the weights file in the directory
                              (``model.safetensors``, ``model.onnx``, ``sparse_model.safetensors``)
Pareto                        ``yes`` for exports on the Pareto front
============================  ===========================================================================

The plot shows the compressed metric against the measured speedup, the Pareto front (no other plotted export is
both at least as fast and at least as good, and strictly better in one) joined and labelled, and the dense
model(s) at speedup 1.0 (the reference, not part of the front). Exports without a measured speedup or without a
compressed metric are in the table but not on the plot; a note under the table names them.

Exports of different tasks or main metrics are refused (:class:`~kp_lightning.errors.ConfigError`): their
metrics are not on one axis. Compare one task at a time. Reports that name no task or metric are accepted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from kp_lightning.errors import ConfigError, MissingFileError

REPORT_FILE = "compression_report.json"
PROG = "kp-lightning compare"
WRITERS = (
    "`kp-lightning prune` (K-prune, Kwon et al.), the CoFi, GradualMagnitudePruning, PatternLock and "
    "QuantizationAwareTraining callbacks at the end of `kp-lightning train fit`, SaveBestPretrained, and "
    "kp_lightning.export_compact / export_dense"
)
# Reports of exports written before these exports had a compression_report.json: named in the error.
OTHER_REPORTS = {
    "sparsity_report.json": "a GradualMagnitudePruning / PatternLock sparse export",
    "quantization_report.json": "a QuantizationAwareTraining int8 export",
}
LOWER_IS_BETTER = ("perplexity", "loss")
NONZERO_EXPORTS = ("dense", "sparse")  # zeros in place: the non-zero parameters are what compression removed
WEIGHT_FILES = ("model.safetensors", "model.onnx", "sparse_model.safetensors", "pytorch_model.bin")
SIZE_KEYS = (("storage", "sparse_file_bytes"), ("sparse_int8_storage", "sparse_file_bytes"))


def load_report(directory: str | Path) -> dict:
    """The parsed ``compression_report.json`` of an export directory.

    Raises:
        MissingFileError: the directory does not exist, or has no ``compression_report.json``.
        ConfigError: the report is not a JSON object.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingFileError(
            f"export directory {directory} does not exist" + (" (it is a file)" if directory.exists() else ""),
            fix=f"pass directories written by {WRITERS}",
        )
    path = directory / REPORT_FILE
    if not path.is_file():
        others = [f"{name} ({what})" for name, what in OTHER_REPORTS.items() if (directory / name).is_file()]
        found = (
            f"; it has {', '.join(others)}, which compare does not read (an export from an earlier kp_lightning: "
            f"this version writes {REPORT_FILE} next to it, re-run the export)"
            if others
            else ""
        )
        raise MissingFileError(
            f"{directory} has no {REPORT_FILE}{found}",
            fix=f"pass export directories that hold {REPORT_FILE}: those written by {WRITERS}",
        )
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON: {err}", fix="re-run the export that wrote it") from None
    if not isinstance(report, dict):
        raise ConfigError(f"{path} holds a JSON {type(report).__name__}, not an object", fix="re-run the export")
    return report


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices (ascending) of the points no other point dominates.

    A point is ``(speedup, metric)``; higher speedup is better, and higher metric unless ``higher_is_better`` is
    false. ``j`` dominates ``i`` when it is at least as good in both and strictly better in one, so identical
    points do not dominate each other: ties are all on the front. Points with a non-finite coordinate are never
    on the front and dominate nothing.
    """
    sign = 1.0 if higher_is_better else -1.0
    pts = [(float(s), sign * float(m)) for s, m in points]
    finite = [math.isfinite(s) and math.isfinite(m) for s, m in pts]
    front = []
    for i, (si, mi) in enumerate(pts):
        if not finite[i]:
            continue
        dominated = any(
            finite[j] and sj >= si and mj >= mi and (sj > si or mj > mi) for j, (sj, mj) in enumerate(pts) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _get(report: dict, *keys):
    for key in keys:
        if not isinstance(report, dict):
            return None
        report = report.get(key)
    return report


def _size(directory: Path, report: dict) -> int | None:
    for keys in SIZE_KEYS:
        if (size := _number(_get(report, *keys))) is not None:
            return int(size)
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return (directory / name).stat().st_size
    return None


def _metric_scale(metric: str | None, task: str | None, values: list[float]) -> float | None:
    """Points per unit of the metric: 100 for fractions, 1 for percents, ``None`` (raw) for perplexity/loss."""
    base = (metric or "").rsplit("/", 1)[-1]
    if base in LOWER_IS_BETTER:
        return None
    if (task or "").startswith("squad") and base in ("f1", "exact_match"):
        return 1.0
    return 100.0 if all(abs(v) <= 1.0 for v in values) else 1.0


def export_row(directory: str | Path, report: dict) -> dict:
    """One export's numbers (see the module docstring for where each comes from)."""
    directory = Path(directory)
    metric = report.get("metric_name")
    compressed = report.get("metric_compressed")
    if compressed is None and metric and isinstance(report.get("metrics_int8"), dict):
        compressed = report["metrics_int8"].get(metric)
    flops = _number(report.get("flops_reduction_actual"))
    if flops is None and (kept := _number(_get(report, "ratios", "encoder_flops_kept"))) is not None:
        flops = 1.0 - kept
    count = "nonzero" if report.get("export") in NONZERO_EXPORTS else "total"
    params_dense = _number(report.get("params_dense")) if count == "total" else None
    params_small = _number(report.get("params_compressed")) if count == "total" else None
    if params_dense is None:
        params_dense = _number(_get(report, "reference", "parameters", count))
    if params_small is None:
        params_small = _number(_get(report, "compressed", "parameters", count))
    export = report.get("export")
    return {
        "path": str(directory),
        "name": directory.resolve().name or str(directory),
        "method": report.get("method") or (f"{export} export" if export else None),
        "task": report.get("task"),
        "metric_name": metric,
        "dense": _number(report.get("metric_dense")),
        "compressed": _number(compressed),
        "flops_removed": flops,
        "params_dense": int(params_dense) if params_dense is not None else None,
        "params_compressed": int(params_small) if params_small is not None else None,
        "params_kind": count,
        "speedup": _number(report.get("latency_speedup")),
        "size_bytes": _size(directory, report),
    }


def _check_one_task(rows: list[dict]) -> None:
    for key, what in (("task", "tasks"), ("metric_name", "main metrics")):
        seen = {row[key] for row in rows if row[key]}
        if len(seen) > 1:
            listing = ", ".join(f"{row['path']}: {row[key]}" for row in rows if row[key])
            raise ConfigError(
                f"the exports have different {what} ({listing}); their metrics cannot share one table and plot",
                fix="compare the exports of one task and metric at a time",
            )


def _bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _metric_label(metric: str | None) -> str:
    return metric.removeprefix("val/") if metric else "–"


def _markdown(rows: list[dict], front: set[int], scale: float | None, notes: list[str]) -> str:
    head = [
        "export", "method", "task", "metric", "dense → compressed", "Δ (points)" if scale else "Δ",
        "encoder FLOPs removed", "parameters", "speedup", "size on disk", "Pareto",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---"] + ["---:"] * 6 + [":---:"]) + "|"]
    for i, row in enumerate(rows):
        dense, small = row["dense"], row["compressed"]
        delta = None if dense is None or small is None else (small - dense) * (scale or 1.0)
        params = "–"
        if row["params_compressed"] is not None:
            params = f"{row['params_compressed']:,}"
            if row["params_dense"] is not None:
                params = f"{row['params_dense']:,} → {params}"
            if row["params_kind"] == "nonzero":
                params += " non-zero"
        cells = [
            row["name"],
            row["method"] or "–",
            row["task"] or "–",
            _metric_label(row["metric_name"]),
            f"{_fmt(dense, '.4f')} → {_fmt(small, '.4f')}" if dense is not None or small is not None else "–",
            _fmt(delta, "+.2f"),
            _fmt(None if row["flops_removed"] is None else 100 * row["flops_removed"], ".1f", " %"),
            params,
            _fmt(row["speedup"], ".2f", "×"),
            _bytes(row["size_bytes"]),
            "yes" if i in front else "",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _plot(rows: list[dict], plotted: list[int], front: list[int], metric: str | None, task: str | None, path: Path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    others = [i for i in plotted if i not in front]
    if others:
        ax.scatter([rows[i]["speedup"] for i in others], [rows[i]["compressed"] for i in others],
                   color="#9a9a9a", label="export", zorder=2)  # fmt: skip
        for i in others:
            ax.annotate(rows[i]["name"], (rows[i]["speedup"], rows[i]["compressed"]), textcoords="offset points",
                        xytext=(5, -10), fontsize=7, color="#666666")  # fmt: skip
    if front:
        ordered = sorted(front, key=lambda i: (rows[i]["speedup"], rows[i]["compressed"]))
        xs, ys = [rows[i]["speedup"] for i in ordered], [rows[i]["compressed"] for i in ordered]
        ax.plot(xs, ys, color="#3b6ea5", linewidth=1.2, zorder=1)
        ax.scatter(xs, ys, color="#3b6ea5", s=45, label="Pareto front", zorder=3)
        for i in ordered:
            ax.annotate(rows[i]["name"], (rows[i]["speedup"], rows[i]["compressed"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8, color="#1f3f66", fontweight="bold")  # fmt: skip
    dense = sorted({rows[i]["dense"] for i in range(len(rows)) if rows[i]["dense"] is not None})
    if dense:
        ax.scatter([1.0] * len(dense), dense, marker="*", s=140, color="#c0392b", label="dense (1.0×)", zorder=4)
        for value in dense:
            ax.annotate("dense", (1.0, value), textcoords="offset points", xytext=(6, 4), fontsize=8, color="#c0392b")
    if not plotted and not dense:
        ax.text(0.5, 0.5, "no export has both a measured speedup and a metric", ha="center", transform=ax.transAxes)
    ax.set_xlabel("measured latency speedup over dense (×)")
    label = _metric_label(metric) if metric else "metric"
    lower = label.rsplit("/", 1)[-1] in LOWER_IS_BETTER
    ax.set_ylabel(label + (" (lower is better)" if lower else ""))
    ax.set_title(f"{task + ': ' if task else ''}{label} vs. measured speedup")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.12)  # room for the labels at the edges
    if plotted or dense:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    return path


def compare_exports(
    dirs: Sequence[str | Path], markdown_path: str | Path | None = None, png_path: str | Path | None = None
) -> str:
    """The markdown table of ``dirs`` (also written to ``markdown_path``), and the PNG at ``png_path`` if given.

    Raises:
        ConfigError: no directory, or exports of different tasks / main metrics.
        MissingFileError: a directory that does not exist or has no ``compression_report.json``.
    """
    if not dirs:
        raise ConfigError("no export directory given", fix=f"{PROG} DIR [DIR ...]")
    rows = [export_row(d, load_report(d)) for d in dirs]
    _check_one_task(rows)
    names = [row["name"] for row in rows]
    for row in rows:
        if names.count(row["name"]) > 1:
            row["name"] = row["path"]
    metric = next((row["metric_name"] for row in rows if row["metric_name"]), None)
    task = next((row["task"] for row in rows if row["task"]), None)
    values = [v for row in rows for v in (row["dense"], row["compressed"]) if v is not None]
    scale = _metric_scale(metric, task, values)
    higher = _metric_label(metric).rsplit("/", 1)[-1] not in LOWER_IS_BETTER
    plotted = [i for i, row in enumerate(rows) if row["speedup"] is not None and row["compressed"] is not None]
    front = [plotted[k] for k in pareto_front([(rows[i]["speedup"], rows[i]["compressed"]) for i in plotted], higher)]

    notes = []
    if metric:
        direction = "higher" if higher else "lower"
        unit = {100.0: "percentage points (fractions ×100)", 1.0: "points"}.get(scale, "metric units")
        notes.append(f"Metric: `{_metric_label(metric)}` ({direction} is better); Δ in {unit}.")
    if front:
        notes.append(
            "Pareto front (no other export is both faster and better): "
            + ", ".join(rows[i]["name"] for i in front) + "."
        )  # fmt: skip
    no_speed = [row["name"] for row in rows if row["speedup"] is None]
    if no_speed:
        notes.append(f"Not plotted, no measured latency speedup: {', '.join(no_speed)}.")
    no_metric = [row["name"] for row in rows if row["speedup"] is not None and row["compressed"] is None]
    if no_metric:
        notes.append(f"Not plotted, no compressed metric: {', '.join(no_metric)}.")
    notes.append("Size on disk: the compressed copy the report records (sparse storage), else the weights file.")
    markdown = _markdown(rows, set(front), scale, notes)
    if markdown_path is not None:
        markdown_path = Path(markdown_path)
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(markdown)
    if png_path is not None:
        _plot(rows, plotted, front, metric, task, Path(png_path))
    return markdown


def main(argv: list[str] | None = None) -> int:
    """``kp-lightning compare DIR [DIR ...] [--markdown PATH] [--png PATH]``: prints the table to stdout.

    User errors (:class:`~kp_lightning.errors.KPError`) propagate; ``kp-lightning`` prints them as one
    ``error:`` / ``fix:`` block.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Markdown table and metric-vs-speedup PNG (with the Pareto front) of several exports, "
        f"from their {REPORT_FILE}.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="export directories (one task and metric)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table to this file")
    parser.add_argument("--png", metavar="PATH", help="write the metric-vs-speedup plot to this PNG")
    args = parser.parse_args(argv)
    print(compare_exports(args.dirs, args.markdown, args.png), end="")
    for what, path in (("table", args.markdown), ("plot", args.png)):
        if path:
            print(f"{what}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
