"""Multiple choice: SWAG-style data, (batch, choices, seq) batches, exact compaction and exports of every
architecture's head, FLOPs and sample counts per flattened sequence, and Kwon et al. through prune.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kp_lightning import EncoderAdapter, compact, measure_latency, measured_flops, model_flops
from kp_lightning.cli import main as train_main
from kp_lightning.core.export import export_compact, load_compressed
from kp_lightning.core.onnx_export import export_onnx, run_onnx
from kp_lightning.data.glue_files import DataFormatError
from kp_lightning.data.multiple_choice import load_choice_splits
from kp_lightning.datamodules import MultipleChoiceDataModule
from kp_lightning.prune_cli import main as prune_main
from kp_lightning.pruning import KPruneConfig, KwonConfig, kprune, kwon_prune
from kp_lightning.pruning.sample_set import SampleSet
from kp_lightning.pruning.sampling import token_budget_indices
from tests.head_checks import check_compact_exports, check_dense_exports
from tests.helpers import ARCHS, edge_case_masks, needs_onnx, tiny_batch, tiny_model
from tests.task_fixtures import save_choice_model, swag_rows, write_swag_csv

COLUMNS = {"context_column": "sent1", "question_column": "sent2", "ending_columns": [f"ending{i}" for i in range(4)],
           "choices_column": None, "label_column": "label"}  # fmt: skip


def choice_batch(batch: int = 2, choices: int = 3, seq: int = 11) -> dict:
    """``[batch, choices, seq]`` inputs; one choice is padded."""
    flat = tiny_batch(batch=batch * choices, seq=seq)
    return {k: v.view(batch, choices, seq) for k, v in flat.items()}


@pytest.fixture(scope="module")
def swag(tmp_path_factory):
    root = tmp_path_factory.mktemp("swag")
    train, dev = write_swag_csv(root / "train.csv", 32, seed=0), write_swag_csv(root / "dev.csv", 12, seed=1)
    return root, train, dev, save_choice_model(root / "model")


# ---- data ----------------------------------------------------------------------------------------------------
def test_ending_columns_and_a_list_column_read_the_same_examples(swag, tmp_path):
    root, train, _, _ = swag
    rows = swag_rows(32, seed=0)
    listed = tmp_path / "train.jsonl"
    listed.write_text("".join(json.dumps({"ctx": r["sent1"], "options": [r[f"ending{i}"] for i in range(4)],
                                          "answer": str(r["label"])}) + "\n" for r in rows))  # fmt: skip
    from_csv = load_choice_splits({"train": str(train)}, **COLUMNS)["train"]
    columns = {"context_column": "ctx", "question_column": None, "ending_columns": [], "choices_column": "options",
               "label_column": "answer"}  # fmt: skip
    from_list = load_choice_splits({"train": str(listed)}, **columns)["train"]
    assert from_csv["label"] == from_list["label"] == [r["label"] for r in rows]
    assert from_csv["context"] == from_list["context"]
    assert from_csv["endings"][0] == ["then " + rows[0][f"ending{i}"] for i in range(4)]  # sent2 + ending
    assert from_list["endings"][0] == [rows[0][f"ending{i}"] for i in range(4)]


def test_bad_rows_name_the_file_and_row(tmp_path):
    rows = swag_rows(3)
    rows[1]["label"] = 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataFormatError, match=r"bad.jsonl, row 2: label 4 is not a choice index in \[0, 3\]") as err:
        load_choice_splits({"train": str(bad)}, **COLUMNS)
    assert "index of the right ending" in err.value.fix
    uneven = tmp_path / "uneven.jsonl"
    uneven.write_text(json.dumps({"c": "x", "e": ["a", "b"], "y": 0}) + "\n" + json.dumps({"c": "x", "e": ["a"] * 3,
                      "y": 1}) + "\n")  # fmt: skip
    with pytest.raises(DataFormatError, match="uneven.jsonl, row 2: 3 endings, but earlier rows have 2"):
        load_choice_splits({"train": str(uneven)}, context_column="c", question_column=None, ending_columns=[],
                           choices_column="e", label_column="y")  # fmt: skip
    with pytest.raises(DataFormatError, match=r"bad.jsonl: missing column\(s\) \['sent3'\]"):
        load_choice_splits({"train": str(bad)}, **{**COLUMNS, "question_column": "sent3"})


def test_batches_are_batch_by_choices_by_sequence(swag):
    root, train, dev, model = swag
    data = MultipleChoiceDataModule(str(train), str(dev), tokenizer=str(model), cache_dir=None, batch_size=5)
    assert data.task_spec.kind == "multiple_choice" and data.task_spec.num_labels == 4
    assert data.task_spec.main_metric == "val/accuracy"
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[:2] == (5, 4) and batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["labels"].shape == (5,) and bool((batch["labels"] < 4).all())
    for example, row in zip(data.datasets["train"], swag_rows(32, seed=0), strict=True):
        decoded = data.tokenizer.decode(example["input_ids"][example["labels"]], skip_special_tokens=True)
        assert decoded == f"{row['sent1']} then {row['ending' + str(row['label'])]}"  # the labelled choice


# ---- models, exports, FLOPs, samples -------------------------------------------------------------------------
def test_every_architecture_masked_equals_compact_equals_reloaded(tmp_path):
    check_compact_exports(tmp_path, "ForMultipleChoice", choice_batch(), "AutoModelForMultipleChoice")


def test_dense_exports_load_with_the_stock_class(tmp_path):
    check_dense_exports(tmp_path, "ForMultipleChoice", choice_batch())


@pytest.mark.parametrize("arch", ARCHS)
def test_flops_are_counted_per_flattened_sequence(arch):
    model = tiny_model(arch, "ForMultipleChoice")
    small = compact(model, edge_case_masks(model))
    for m in (model, small):
        analytic, counted = model_flops(m, 24), measured_flops(m, 24)
        assert counted["encoder"] == pytest.approx(analytic["encoder"], rel=0.02)
        assert counted["total"] == pytest.approx(analytic["total"], rel=0.02)
    # One choice of a multiple-choice model costs what the same encoder costs on one sequence.
    twin = tiny_model(arch, "ForSequenceClassification")
    assert model_flops(model, 24)["encoder"] == model_flops(twin, 24)["encoder"]
    assert measure_latency(small, batch_sizes=(2,), seq_lens=(8,), min_run_time=0.01)["results"][0]["median_ms"] > 0


def test_the_sample_set_counts_tokens_and_lengths_per_sequence():
    batch = choice_batch(batch=2, choices=3, seq=11)  # flattened row 1 (example 0, choice 1) has 4 padding tokens
    samples = SampleSet([batch], "cpu", ("input_ids", "attention_mask", "labels"))
    assert (samples.num_samples, samples.num_sequences, samples.num_tokens) == (2, 6, 6 * 11 - 4)
    assert samples.mean_length == pytest.approx((6 * 11 - 4) / 6)
    assert samples.token_mask(samples.all_batches[0]).shape == (6, 11)
    data = [{"input_ids": [[1] * 5, [1] * 5]} for _ in range(3)]
    assert len(token_budget_indices(data, num_tokens=15, seed=0)) == 2  # 10 tokens per example: every choice counts


@needs_onnx
def test_onnx_export_has_dynamic_batch_choices_and_sequence_axes(tmp_path):
    model = tiny_model("distilbert", "ForMultipleChoice")
    small = compact(model, edge_case_masks(model)).eval()
    path = export_onnx(small, tmp_path / "model.onnx", seq_len=16, batch_size=2)
    batch = choice_batch(batch=3, choices=4, seq=9)
    (logits,) = run_onnx(path, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(torch.from_numpy(logits), small(**batch).logits, atol=1e-4, rtol=0)
    assert EncoderAdapter(small).shape().heads[1] == 0


@pytest.mark.parametrize("method", ["kprune", "kwon"])
@pytest.mark.parametrize("arch", ARCHS)
def test_retraining_free_pruning_on_choices_meets_the_budget_and_reloads_exactly(arch, method, tmp_path):
    model = tiny_model(arch, "ForMultipleChoice")
    batches = [{**choice_batch(batch=3, choices=2, seq=10), "labels": torch.tensor([0, 1, 1])} for _ in range(3)]
    samples = SampleSet(batches, "cpu", ("input_ids", "attention_mask", "labels"))  # Kwon's Fisher needs labels
    prune, config = (kprune, KPruneConfig(0.5)) if method == "kprune" else (kwon_prune, KwonConfig(0.5))
    result = prune(model, samples, "multiple_choice", config, progress=False)
    assert result.flops_pruned <= 0.5 * result.flops_dense * (1 + 1e-9)
    assert result.seq_len == pytest.approx(samples.num_tokens / samples.num_sequences)
    export_compact(result.model, tmp_path / "out")
    batch = choice_batch(batch=2, choices=3, seq=11)
    reloaded = load_compressed(tmp_path / "out").eval()
    torch.testing.assert_close(reloaded(**batch).logits, result.model(**batch).logits, atol=1e-5, rtol=0)


# ---- prune.py: Kwon et al. on multiple choice ----------------------------------------------------------------
def test_kwon_through_prune_py_exports_a_model_that_reproduces_the_metric(swag, tmp_path):
    root, train, dev, model = swag
    data = ["--data", "MultipleChoiceDataModule", "--data.init_args.train_file", str(train),
            "--data.init_args.validation_file", str(dev), "--data.init_args.cache_dir", str(root / "cache"),
            "--data.init_args.batch_size", "4", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    out = tmp_path / "pruned"
    report = prune_main(["--model", "TaskModule", "--model.init_args.model_name_or_path", str(model), *data,
                         "--pruner.method", "kwon", "--pruner.flops_reduction", "0.5", "--pruner.num_tokens", "2000",
                         "--pruner.batch_size", "4", "--pruner.progress", "false", "--latency_seconds", "0.05",
                         "--latency_seq_len", "16", "--output_dir", str(out)])  # fmt: skip
    assert report["method"] == "kwon" and report["metric_name"] == "val/accuracy"
    assert report["flops_reduction_actual"] == pytest.approx(0.5, abs=0.08)
    stats = report["sample_set"]
    assert stats["num_sequences"] == 4 * stats["num_samples"]
    assert report["flops_seq_len"] == pytest.approx(stats["num_tokens"] / stats["num_sequences"])
    assert report["latency_speedup"] > 0 and report["compressed"]["class"] == "KPBertForMultipleChoice"
    assert type(load_compressed(out)).__name__ == "KPBertForMultipleChoice"
    cli = train_main(["validate", "--model", "TaskModule", "--model.init_args.model_name_or_path", str(out), *data])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["val/accuracy"]) == pytest.approx(report["metric_compressed"])
    assert float(metrics["val/loss"]) == pytest.approx(report["metrics_compressed"]["val/loss"], abs=1e-5)
    assert Path(out / "structure.png").is_file()
