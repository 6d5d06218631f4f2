"""``sample_draw``: our token-budget draw vs the reference implementations' protocol (kprune.md §1)."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from callbacks import KPrune
from kp_lightning.datamodules import GlueDataModule, TextClassificationDataModule
from kp_lightning.modules import TaskModule
from kp_lightning.prune_cli import main as prune_main
from kp_lightning.pruning import PruneError
from kp_lightning.pruning.reference_protocol import REFERENCE_AVG_LENGTHS, task_avg_length
from kp_lightning.pruning.sampling import draw_sample_batches, draw_sample_indices
from tests.text_fixtures import save_tiny_model, sentiment_rows, write_sst2

DATA = [{"input_ids": list(range(1, 4 + i % 5)), "attention_mask": [1] * (3 + i % 5)} for i in range(40)]


def collate(rows: list[dict]) -> dict:
    width = max(len(r["input_ids"]) for r in rows)
    ids = [[*r["input_ids"], *[0] * (width - len(r["input_ids"]))] for r in rows]
    mask = [[*r["attention_mask"], *[0] * (width - len(r["attention_mask"]))] for r in rows]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


@pytest.fixture(scope="module")
def tiny_sst2(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_draw")
    return root, save_tiny_model(root / "model", "ForSequenceClassification"), write_sst2(root / "glue", 48, 16)


def test_reference_draw_is_numpy_choice_with_replacement():
    indices = draw_sample_indices(DATA, num_tokens=300, seed=7, sample_draw="reference", avg_length=10.0)
    assert len(indices) == int(300 / 10.0) == 30
    assert indices == np.random.RandomState(7).choice(len(DATA), 30).tolist()
    assert len(set(indices)) < len(indices)  # with replacement: 30 draws from 40 repeat some
    # K-prune's cap min(int(num_tokens / L), len(train)); an explicit num_samples (Kwon's 2048) is not capped.
    assert len(draw_sample_indices(DATA, 10_000, 0, "reference", avg_length=10.0)) == len(DATA)
    assert draw_sample_indices(DATA, 1, 3, "reference", avg_length=10.0, num_samples=100) == (
        np.random.RandomState(3).choice(len(DATA), 100).tolist()
    )
    batches = draw_sample_batches(DATA, collate, 300, 8, seed=7, sample_draw="reference", avg_length=10.0)
    assert sum(len(b["input_ids"]) for b in batches) == 30  # duplicates are samples too
    first = [DATA[i]["input_ids"] for i in indices[:8]]
    assert batches[0]["input_ids"][0, : len(first[0])].tolist() == first[0]
    with pytest.raises(PruneError, match="average length"):
        draw_sample_indices(DATA, 300, 0, "reference")


def test_our_draw_is_unchanged_distinct_examples_up_to_the_token_count():
    indices = draw_sample_indices(DATA, num_tokens=60, seed=3)
    order = torch.randperm(len(DATA), generator=torch.Generator().manual_seed(3)).tolist()
    assert indices == order[: len(indices)] and len(set(indices)) == len(indices)
    tokens = [len(DATA[i]["input_ids"]) for i in indices]
    assert sum(tokens) >= 60 > sum(tokens[:-1])
    with pytest.raises(PruneError, match="sample_draw must be one of"):
        draw_sample_indices(DATA, 60, 0, "numpy")


def test_reference_lengths_and_the_refusal_of_unknown_tasks():
    assert task_avg_length("sst2") == task_avg_length("SST-2") == 25.16
    assert task_avg_length("squad") == task_avg_length("squad_v2") == 170.0
    assert task_avg_length("mnli") == 39.05 and task_avg_length("reviews", override=12.5) == 12.5
    assert set(REFERENCE_AVG_LENGTHS) >= {"stsb", "mrpc", "rte", "sst2", "qqp", "qnli", "cola", "mnli", "squad"}
    with pytest.raises(PruneError, match="Known tasks: stsb") as refused:
        task_avg_length("reviews")
    assert all(word in str(refused.value) for word in ("'reviews'", "reference_avg_length", "seq_len", "ours"))
    with pytest.raises(PruneError, match="must be positive"):
        KPrune(0.5, sample_draw="reference", reference_avg_length=0.0)
    with pytest.raises(PruneError, match="apply to sample_draw: reference"):
        KPrune(0.5, num_samples=2048)
    with pytest.raises(PruneError, match="sample_draw must be one of"):
        KPrune(0.5, sample_draw="numpy")


def test_prune_py_reference_draw_reports_duplicates_and_prunes_at_the_task_length(tiny_sst2, tmp_path):
    root, model, glue = tiny_sst2
    report = prune_main([
        "--model", "TaskModule", "--model.init_args.model_name_or_path", str(model),
        "--data", "GlueDataModule", "--data.init_args.task", "sst2", "--data.init_args.data_dir", str(glue),
        "--data.init_args.cache_dir", str(root / "cache"), "--data.init_args.batch_size", "8",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "logs"),  # config.yaml goes here
        "--pruner.flops_reduction", "0.5", "--pruner.num_tokens", "1000",
        "--pruner.batch_size", "8", "--pruner.seed", "5", "--pruner.progress", "false",
        "--pruner.sample_draw", "reference", "--latency_seconds", "0", "--output_dir", str(tmp_path / "out"),
    ])  # fmt: skip
    count = min(int(1000 / 25.16), 48)  # 39 of the 48 training examples, with replacement
    distinct = len(set(np.random.RandomState(5).choice(48, count).tolist()))
    assert report["flops_seq_len"] == 25.16  # the FLOPs model runs at SST-2's reference length
    assert report["sample_set"]["num_samples"] == count and report["sample_set"]["num_distinct_samples"] == distinct
    assert distinct < count and report["sample_set"]["sample_draw"] == "reference"
    assert report["sample_set"]["reference_avg_length"] == 25.16
    assert report["pruner_config"]["sample_draw"] == "reference" and report["pruner_config"]["seed"] == 5
    assert json.loads((tmp_path / "out" / "compression_report.json").read_text())["flops_seq_len"] == 25.16


def test_an_unknown_task_is_refused_before_pruning_unless_its_length_is_given(tiny_sst2, tmp_path):
    root, model, _ = tiny_sst2
    for split, n, seed in (("train", 40, 0), ("dev", 8, 1)):
        rows = [{"text": text, "label": label} for text, label in sentiment_rows(n, seed)]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = TextClassificationDataModule(
        str(tmp_path / "train.jsonl"), str(tmp_path / "dev.jsonl"), ["text"], label_names=["negative", "positive"],
        task_name="reviews", tokenizer=str(model), cache_dir=None, batch_size=8,
    )  # fmt: skip

    def validate(pruner: KPrune) -> TaskModule:
        module = TaskModule(str(model), task_spec=data.task_spec)
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[pruner],
                             default_root_dir=tmp_path)  # fmt: skip
        trainer.validate(module, datamodule=data, verbose=False)
        return module

    refused = KPrune(0.5, num_tokens=200, batch_size=8, sample_draw="reference", progress=False)
    with pytest.raises(PruneError, match="the task 'reviews' has none. Known tasks"):
        validate(refused)
    assert refused.result is None and refused.dense_model is None  # nothing was drawn or pruned
    given = KPrune(0.5, num_tokens=200, batch_size=8, sample_draw="reference", reference_avg_length=8.0,
                   progress=False)  # fmt: skip
    validate(given)
    assert given.result.seq_len == 8.0 and given.result.stats["num_samples"] == int(200 / 8.0)


def test_an_explicit_seq_len_wins_over_the_reference_length_for_the_flops_model():
    for method in ("kprune", "kwon"):
        pruner = KPrune(0.5, method=method, sample_draw="reference", seq_len=12.0)
        assert pruner._config_for_task("mrpc").seq_len == 12.0 and pruner.avg_length == 53.24
        assert KPrune(0.5, method=method, sample_draw="reference")._config_for_task("mrpc").seq_len == 53.24
    ours = KPrune(0.5)
    assert ours._config_for_task("unknown") is ours.config and ours.config.seq_len is None


def test_our_draw_through_the_callback_is_unchanged(tiny_sst2, tmp_path):
    root, model, glue = tiny_sst2
    data = GlueDataModule(task="sst2", data_dir=str(glue), tokenizer=str(model), cache_dir=None, batch_size=8)
    pruner = KPrune(0.5, num_tokens=200, batch_size=8, seed=2, progress=False)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[pruner],
                         default_root_dir=tmp_path)  # fmt: skip
    trainer.validate(TaskModule(str(model), task_spec=data.task_spec), datamodule=data, verbose=False)
    stats = pruner.result.stats
    assert stats["sample_draw"] == "ours" and stats["num_distinct_samples"] == stats["num_samples"]
    assert stats["num_tokens"] >= 200 and stats["reference_avg_length"] is None
    assert pruner.result.seq_len == pytest.approx(stats["num_tokens"] / stats["num_samples"])
