"""Every export's README.md: YAML front matter that huggingface_hub's ModelCard parses, with the right fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from kp_lightning.core.compaction import compact
from kp_lightning.core.export import export_compact, export_dense
from kp_lightning.core.model_card import hub_model_id, render_model_card, write_model_card
from kp_lightning.core.structured_export import export_structured, structure_fields
from tests.helpers import edge_case_masks, tiny_config, tiny_model
from tests.text_fixtures import save_tiny_model, write_sst2


def load_card(directory: Path) -> ModelCard:
    text = (directory / "README.md").read_text()
    assert text.startswith("---\n")
    card = ModelCard.load(directory / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.tags[0] == "kp-lightning"
    assert ModelCard(text).data.to_dict() == card.data.to_dict()
    return card


def structured_fields(method, dense, small, task, metric, dense_value, value, base_model):
    """The keys prune.py / the CoFi callback pass to export_structured (see tests/test_compare.py)."""
    return {"method": method, "base_model": base_model, "task": task, **structure_fields(small, dense, 16),
            "metric_name": metric, "metric_dense": dense_value, "metric_compressed": value,
            "latency_speedup": 1.6, "latency": {}}  # fmt: skip


def test_a_kprune_compact_card_carries_hub_metadata(tmp_path):
    dense = tiny_model("bert", "ForSequenceClassification")
    small = compact(dense, edge_case_masks(dense, soft=False, prune_hidden=False))
    fields = structured_fields("kprune", dense, small, "sst2", "val/accuracy", 0.91, 0.8875,
                               "google-bert/bert-base-uncased")  # fmt: skip
    report = export_structured(small, dense, tmp_path / "out", None, "t", **fields)
    card = load_card(tmp_path / "out")
    data = card.data
    assert data.base_model == "google-bert/bert-base-uncased"
    assert data.pipeline_tag == "text-classification"
    assert {"k-prune", "pruned", "compact-export"} <= set(data.tags)
    assert data.datasets == ["nyu-mll/glue"]
    (result,) = data.eval_results
    assert (result.task_type, result.dataset_type, result.dataset_name, result.dataset_config) == (
        "text-classification", "nyu-mll/glue", "GLUE SST-2", "sst2",
    )  # fmt: skip
    assert (result.metric_type, result.metric_name, result.dataset_split) == ("accuracy", "Accuracy", "validation")
    assert result.metric_value == report["metric_compressed"] == 0.8875
    assert data.model_name == "bert-base-uncased-kprune"
    # the human-readable body is kept
    assert "| parameters (total) | " in card.text and "compressed with kp_lightning" in card.text
    assert "0.8875 (dense: 0.9100)" in card.text and "trust_remote_code=True" in card.text


def test_a_cofi_question_answering_card(tmp_path):
    dense = tiny_model("bert", "ForQuestionAnswering")
    small = compact(dense, edge_case_masks(dense, seed=2, soft=False, prune_hidden=False))
    fields = structured_fields("cofi", dense, small, "squad", "val/f1", 80.0, 71.25, "org/bert-squad")
    fields.update(sparsity_target=0.6, sparsity_actual=0.58, selected="best at step 3")
    export_structured(small, dense, tmp_path / "cofi", None, "t", **fields)
    data = load_card(tmp_path / "cofi").data
    assert data.pipeline_tag == "question-answering" and data.base_model == "org/bert-squad"
    assert {"cofi", "pruned"} <= set(data.tags)
    (result,) = data.eval_results
    assert (result.task_type, result.dataset_type, result.metric_type, result.metric_value) == (
        "question-answering", "rajpurkar/squad", "f1", 71.25,
    )  # fmt: skip


def test_a_dense_sparse_mlm_card_from_a_local_base_model(tmp_path):
    """A local base model is not a Hub id: base_model is left out; the task kind comes from the class."""
    local = tmp_path / "teacher"
    local.mkdir()
    dense = tiny_model("bert", "ForMaskedLM")
    sparse = tiny_model("bert", "ForMaskedLM")
    with torch.no_grad():
        sparse.bert.encoder.layer[0].intermediate.dense.weight[:, ::2] = 0
    metric = {"metric_name": "val/perplexity", "metric_dense": 9.5, "metric_compressed": 10.25}
    export_dense(sparse, tmp_path / "pofa", reference=dense, method="GradualMagnitudePruning", task="mlm",
                 base_model=str(local), **metric)  # fmt: skip
    card = load_card(tmp_path / "pofa")
    data = card.data
    assert data.base_model is None and str(local) not in (tmp_path / "pofa" / "README.md").read_text()
    assert data.pipeline_tag == "fill-mask"
    assert {"gradual-magnitude-pruning", "prune-once-for-all", "sparse", "dense-export"} <= set(data.tags)
    assert data.datasets is None  # "mlm" names no Hub dataset
    (result,) = data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("perplexity", 10.25, "mlm")
    assert data.model_name == "teacher-gradual-magnitude-pruning"
    assert "AutoModel.from_pretrained(path)" in card.text


def test_a_plain_compact_export_card_has_no_metrics(tmp_path):
    """What the SavePretrained callback writes: no method, no metric, no base model."""
    model = tiny_model("roberta", "Model")
    export_compact(model, tmp_path / "plain")
    data = load_card(tmp_path / "plain").data
    assert data.pipeline_tag == "feature-extraction"
    assert data.eval_results is None and data.base_model is None
    assert data.tags == ["kp-lightning", "compact-export"]


def test_an_int8_report_layout_gets_int8_tags_and_the_int8_metric(tmp_path):
    """The QAT report layout (metrics_int8, no model summary): the class comes from config.json."""
    config = tiny_config("bert")
    config.architectures = ["BertForSequenceClassification"]
    config.save_pretrained(tmp_path)
    report = {"method": "QuantizationAwareTraining", "task": "sst2", "metric_name": "val/accuracy",
              "metrics_fake_quant": {"val/accuracy": 0.86}, "metrics_int8": {"val/accuracy": 0.855}}  # fmt: skip
    write_model_card(tmp_path, report, "int8", base_model="org/bert-sst2")
    card = load_card(tmp_path)
    assert card.data.pipeline_tag == "text-classification"
    assert {"int8", "quantized", "quantization-aware-training"} <= set(card.data.tags)
    assert card.data.eval_results[0].metric_value == 0.855
    assert "load_int8(path)" in card.text


def test_hub_model_ids_and_local_paths(tmp_path, monkeypatch):
    assert hub_model_id("bert-base-uncased") == "bert-base-uncased"
    assert hub_model_id("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"
    for local in ("", None, "/abs/model", "./model", "../model", "~/model", "a/b/c", "outputs/bad--name"):
        assert hub_model_id(local) is None, local
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert hub_model_id("org/model") is None  # a local directory of that spelling
    assert render_model_card({"task_kind": "regression"}, "dense").data.pipeline_tag == "text-classification"


@pytest.fixture(scope="module")
def pruned_export(tmp_path_factory):
    """A real ``prune.py`` run (K-prune) on a tiny model saved in a local directory."""
    from kp_lightning.prune_cli import main as prune_main

    root = tmp_path_factory.mktemp("card_prune")
    model = save_tiny_model(root / "model", "ForSequenceClassification")
    glue = write_sst2(root / "glue", n_train=32, n_dev=16)
    out = root / "out"
    report = prune_main(["--model", "TaskModule", "--model.init_args.model_name_or_path", str(model),
                         "--data", "GlueDataModule", "--data.init_args.task", "sst2",
                         "--data.init_args.data_dir", str(glue), "--data.init_args.cache_dir", str(root / "cache"),
                         "--data.init_args.batch_size", "8", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                         "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
                         "--trainer.default_root_dir", str(root / "logs"), "--pruner.num_tokens", "200",
                         "--pruner.batch_size", "8", "--pruner.progress", "false", "--latency_seconds", "0.05",
                         "--latency_seq_len", "32", "--pruner.flops_reduction", "0.5",
                         "--output_dir", str(out)])  # fmt: skip
    return out, report


@pytest.mark.slow
def test_the_prune_command_writes_a_card_that_parses(pruned_export):
    out, report = pruned_export
    data = load_card(out).data
    assert json.loads((out / "compression_report.json").read_text())["metric_compressed"] == report["metric_compressed"]
    assert data.base_model is None  # the source was a local directory
    assert data.pipeline_tag == "text-classification" and "k-prune" in data.tags
    (result,) = data.eval_results
    assert result.metric_value == pytest.approx(report["metric_compressed"])
    assert (result.dataset_type, result.metric_type) == ("nyu-mll/glue", "accuracy")
