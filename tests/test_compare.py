"""``kp-lightning compare``: table and Pareto plot of real exports (tiny models), the Pareto front, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kp_lightning import commands
from kp_lightning.compare import compare_exports, load_report, main, pareto_front
from kp_lightning.core.compaction import compact
from kp_lightning.core.export import export_dense
from kp_lightning.core.structured_export import export_structured, structure_fields
from kp_lightning.errors import ConfigError, MissingFileError
from tests.helpers import edge_case_masks, tiny_model


def prune_fields(method, dense, small, metric_dense, metric_compressed, speedup, task="sst2", metric="val/accuracy"):
    """The report fields ``prune_cli._export`` passes (K-prune / Kwon et al.), with chosen metrics and speedup."""
    fields = {
        "method": method,
        "base_model": "google-bert/bert-base-uncased",
        "task": task,
        "flops_reduction_target": 0.5,
        **structure_fields(small, dense, 16),
        "metric_name": metric,
        "metric_dense": metric_dense,
        "metric_compressed": metric_compressed,
        "metrics_dense": {metric: metric_dense},
        "metrics_compressed": {metric: metric_compressed},
        "prune_seconds": 1.0,
        "phase_seconds": {"total": 1.0},
        "latency_speedup": speedup,
        "latency": {},
        "pruner_config": {"method": method},
        "sample_set": {},
        "notes": [],
    }
    if method == "cofi":  # callbacks/cofi_export.export_result's extra keys
        fields.update(sparsity_target=0.6, sparsity_actual=0.58, sparsity_expected=0.6, flops_reduction_target=None,
                      teacher="teacher", metrics_dense={metric: metric_dense}, selected="best at step 3",
                      train_seconds=2.0, step_seconds=0.1, global_steps=30, pruner_config={"seed": 0})  # fmt: skip
    return fields


def structured(out: Path, method: str, compressed: float, speedup: float | None, seed: int, **kwargs) -> dict:
    """A real compact export (``export_structured``, as prune.py and CoFi write it) of a tiny BERT."""
    dense = tiny_model("bert", "ForSequenceClassification")
    small = compact(dense, edge_case_masks(dense, seed=seed, soft=False, prune_hidden=False))
    fields = prune_fields(method, dense, small, 0.9, compressed, speedup, **kwargs)
    if speedup is None:
        fields.pop("latency_speedup")
    return export_structured(small, dense, out, None, f"{method} test", **fields)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Five exports of one task: three on the front, one dominated, one dense-with-zeros without a speedup."""
    root = tmp_path_factory.mktemp("compare")
    reports = {
        "kprune": structured(root / "kprune", "kprune", 0.88, 1.7, seed=0),
        "kwon": structured(root / "kwon", "kwon", 0.89, 1.4, seed=1),
        "cofi": structured(root / "cofi", "cofi", 0.85, 2.5, seed=2),
        "dominated": structured(root / "dominated", "kprune", 0.86, 1.5, seed=3),
    }
    dense = tiny_model("bert", "ForSequenceClassification")
    sparse = tiny_model("bert", "ForSequenceClassification")
    with torch.no_grad():  # Prune OFA style: unstructured zeros in the stock architecture
        for layer in sparse.bert.encoder.layer:
            weight = layer.intermediate.dense.weight
            weight[weight.abs() < weight.abs().median()] = 0
    export_dense(sparse, root / "pofa", reference=dense, method="GradualMagnitudePruning", task="sst2",
                 metric_name="val/accuracy", metric_dense=0.9, metric_compressed=0.87)  # fmt: skip
    reports["pofa"] = load_report(root / "pofa")
    order = ["kprune", "kwon", "cofi", "dominated", "pofa"]
    return root, [root / name for name in order], reports


def table_rows(markdown: str) -> dict[str, list[str]]:
    """Cells of each table row by export name (header and separator dropped)."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split(" | ")] for line in lines[1:])}


def test_the_table_has_one_row_per_export_with_its_report_numbers(exports):
    root, dirs, reports = exports
    markdown = compare_exports(dirs)
    rows = table_rows(markdown)
    assert list(rows) == ["kprune", "kwon", "cofi", "dominated", "pofa"]
    header = markdown.splitlines()[0]
    assert "dense → compressed" in header and "Δ (points)" in header and "speedup" in header

    k = reports["kprune"]
    assert rows["kprune"][1:4] == ["kprune", "sst2", "accuracy"]
    assert rows["kprune"][4] == "0.9000 → 0.8800"
    assert rows["kprune"][5] == "-2.00"  # fractions: points are ×100
    assert rows["kprune"][6] == f"{100 * k['flops_reduction_actual']:.1f} %"
    assert rows["kprune"][7] == f"{k['params_dense']:,} → {k['params_compressed']:,}"
    assert rows["kprune"][8] == "1.70×"
    size = (root / "kprune" / "model.safetensors").stat().st_size
    assert rows["kprune"][9] == f"{size / 1e3:.2f} kB"
    assert rows["cofi"][1] == "cofi" and rows["cofi"][5] == "-5.00" and rows["cofi"][8] == "2.50×"

    pofa = reports["pofa"]
    assert rows["pofa"][1] == "GradualMagnitudePruning" and rows["pofa"][8] == "–"
    assert rows["pofa"][6] == f"{100 * (1 - pofa['ratios']['encoder_flops_kept']):.1f} %"
    nonzero = pofa["compressed"]["parameters"]["nonzero"]
    assert nonzero < pofa["reference"]["parameters"]["nonzero"]
    assert rows["pofa"][7] == f"{pofa['reference']['parameters']['nonzero']:,} → {nonzero:,} non-zero"

    assert [name for name, cells in rows.items() if cells[10] == "yes"] == ["kprune", "kwon", "cofi"]
    assert "Pareto front (no other export is both faster and better): kprune, kwon, cofi." in markdown
    assert "Not plotted, no measured latency speedup: pofa." in markdown


def test_the_png_marks_the_front_and_the_dense_point(exports, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    _, dirs, _ = exports
    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k))[1])
    png = tmp_path / "plots" / "pareto.png"
    compare_exports(dirs, png_path=png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[2] in (3, 4)

    (ax,) = figures[0].axes
    labels = {t.get_text(): t for t in ax.texts}
    assert set(labels) == {"kprune", "kwon", "cofi", "dominated", "dense"}  # pofa: no speedup, not plotted
    assert {n for n, t in labels.items() if t.get_fontweight() == "bold"} == {"kprune", "kwon", "cofi"}
    assert tuple(labels["dense"].xy) == (1.0, 0.9)
    by_label = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert sorted(map(tuple, by_label["Pareto front"])) == [(1.4, 0.89), (1.7, 0.88), (2.5, 0.85)]
    assert by_label["export"] == [[1.5, 0.86]]
    assert by_label["dense (1.0×)"] == [[1.0, 0.9]]
    assert "speedup" in ax.get_xlabel() and "accuracy" in ax.get_ylabel()


def test_pareto_front_on_hand_made_points():
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]
    points = [(1.0, 0.90), (2.0, 0.80), (1.5, 0.85), (1.5, 0.80), (0.9, 0.95), (2.0, 0.70)]
    assert pareto_front(points) == [0, 1, 2, 4]  # (1.5, .80) ≤ (1.5, .85); (2.0, .70) ≤ (2.0, .80)
    # identical points: neither is strictly better, both stay
    assert pareto_front([(2.0, 0.8), (2.0, 0.8), (1.0, 0.7)]) == [0, 1]
    # a tie in one coordinate is dominated by the one better in the other
    assert pareto_front([(2.0, 0.8), (2.0, 0.9)]) == [1]
    assert pareto_front([(1.0, 0.8), (2.0, 0.8)]) == [1]
    # lower is better (perplexity): the lowest at each speed wins
    assert pareto_front([(1.0, 10.0), (2.0, 12.0), (2.0, 15.0), (1.0, 11.0)], higher_is_better=False) == [0, 1]
    # non-finite points are never on the front and dominate nothing
    assert pareto_front([(math.nan, 1.0), (1.0, 0.5), (math.inf, 0.9)]) == [1]


def hand_report(directory: Path, **fields) -> Path:
    """A report with the prune.py key layout (no model files), for metric scales the tiny exports lack."""
    directory.mkdir(parents=True)
    report = {"export": "compact", "method": "kprune", "flops_reduction_actual": 0.5, "params_dense": 100,
              "params_compressed": 60, "latency": {}, **fields}  # fmt: skip
    (directory / "compression_report.json").write_text(json.dumps(report))
    return directory


def test_squad_points_are_not_rescaled_and_perplexity_prefers_lower(tmp_path):
    a = hand_report(tmp_path / "a", task="squad", metric_name="val/f1", metric_dense=88.5, metric_compressed=87.0,
                    latency_speedup=2.0)  # fmt: skip
    b = hand_report(tmp_path / "b", task="squad", metric_name="val/f1", metric_dense=88.5, metric_compressed=86.0,
                    latency_speedup=1.5)  # fmt: skip
    rows = table_rows(compare_exports([a, b]))
    assert rows["a"][5] == "-1.50" and rows["a"][10] == "yes" and rows["b"][10] == ""

    c = hand_report(tmp_path / "c", task="mlm", metric_name="val/perplexity", metric_dense=10.0,
                    metric_compressed=12.0, latency_speedup=2.0)  # fmt: skip
    d = hand_report(tmp_path / "d", task="mlm", metric_name="val/perplexity", metric_dense=10.0,
                    metric_compressed=11.0, latency_speedup=2.0)  # fmt: skip
    markdown = compare_exports([c, d])
    rows = table_rows(markdown)
    assert rows["c"][5] == "+2.00" and rows["d"][10] == "yes" and rows["c"][10] == ""
    assert "lower is better" in markdown


def test_main_prints_the_table_and_writes_the_files(exports, tmp_path, capsys):
    _, dirs, _ = exports
    md, png = tmp_path / "out" / "table.md", tmp_path / "out" / "plot.png"
    assert main([*map(str, dirs[:3]), "--markdown", str(md), "--png", str(png)]) == 0
    printed = capsys.readouterr().out
    assert printed == md.read_text()
    assert list(table_rows(printed)) == ["kprune", "kwon", "cofi"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_exports_of_different_tasks_are_refused(exports, tmp_path):
    _, dirs, _ = exports
    other = hand_report(tmp_path / "mrpc", task="mrpc", metric_name="val/accuracy", metric_dense=0.8,
                        metric_compressed=0.79, latency_speedup=1.3)  # fmt: skip
    with pytest.raises(ConfigError, match="different tasks") as info:
        compare_exports([dirs[0], other])
    assert "sst2" in str(info.value) and "mrpc" in str(info.value) and "one task" in info.value.fix
    f1 = hand_report(tmp_path / "f1", task="sst2", metric_name="val/f1", metric_dense=0.8, metric_compressed=0.7)
    with pytest.raises(ConfigError, match="different main metrics"):
        compare_exports([dirs[0], f1])


def test_missing_directories_and_reports_are_named(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        load_report(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingFileError, match=r"empty has no compression_report\.json") as info:
        compare_exports([empty])
    assert "kp-lightning prune" in info.value.fix and "CoFi" in info.value.fix
    qat = tmp_path / "int8_model"
    qat.mkdir()
    (qat / "quantization_report.json").write_text("{}")
    with pytest.raises(MissingFileError, match="quantization_report.json"):
        load_report(qat)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "compression_report.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_report(broken)
    with pytest.raises(ConfigError, match="no export directory"):
        compare_exports([])


def test_the_installed_command_reports_a_missing_report_as_one_block(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        commands.main(["compare", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "compression_report.json" in err and "\nfix: " in err
