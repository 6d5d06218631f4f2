"""Every architecture through the commands a user types: prune.py (K-prune) and train.py fit with CoFi, each
export reloaded and validated by train.py to the score the run reported."""

from __future__ import annotations

import json

import pytest

from kp_lightning.cli import main as train_main
from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.export import load_compressed
from kp_lightning.prune_cli import main as prune_main
from tests.helpers import ARCHS, PREFIX
from tests.test_cofi_training import NO_DROPOUT, cofi_args
from tests.text_fixtures import save_tiny_model, write_sst2


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return write_sst2(tmp_path_factory.mktemp("glue"), n_train=64, n_dev=25)  # as tests/test_cofi_training.py


def validated_accuracy(export, glue, root) -> float:
    cli = train_main(["validate", "--model", "TaskModule", "--model.init_args.model_name_or_path", str(export),
                      "--data", "GlueDataModule", "--data.init_args.task", "sst2", "--data.init_args.data_dir",
                      str(glue), "--data.init_args.cache_dir", "null", "--trainer.accelerator", "cpu",
                      "--trainer.logger", "false", "--trainer.default_root_dir", str(root / "validate"),
                      "--trainer.enable_progress_bar", "false"])  # fmt: skip
    return float(cli.trainer.callback_metrics["val/accuracy"])


@pytest.mark.parametrize("arch", ARCHS)
def test_prune_py_kprune_exports_a_model_that_validates_to_its_reported_score(arch, glue, tmp_path):
    model = save_tiny_model(tmp_path / "model", "ForSequenceClassification", arch=arch)
    out = tmp_path / "out"
    report = prune_main(["--model", "TaskModule", "--model.init_args.model_name_or_path", str(model),
                         "--data", "GlueDataModule", "--data.init_args.task", "sst2", "--data.init_args.data_dir",
                         str(glue), "--data.init_args.cache_dir", "null", "--data.init_args.batch_size", "8",
                         "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
                         "--trainer.enable_progress_bar", "false", "--pruner.method", "kprune",
                         "--pruner.flops_reduction", "0.5", "--pruner.num_tokens", "200", "--pruner.batch_size", "8",
                         "--pruner.progress", "false", "--pruner.flops_batch_size", "4",
                         "--latency_seconds", "0.05", "--latency_seq_len", "32",
                         "--output_dir", str(out)])  # fmt: skip
    assert report["flops_reduction_actual"] == pytest.approx(0.5, abs=0.06)
    assert report["flops_batch_size"] == 4  # counted per sequence of a batch of 4 (only DeBERTa shares a cost)
    reloaded = load_compressed(out)
    assert type(reloaded).__name__ == f"KP{PREFIX[arch]}ForSequenceClassification"
    assert list(EncoderAdapter(reloaded).shape().heads) == report["structure"]["heads_per_layer"]
    assert validated_accuracy(out, glue, tmp_path) == pytest.approx(report["metric_compressed"])


@pytest.mark.parametrize("arch", ["deberta-v2", "modernbert"])  # relative-position attention; pre-LN, gated FFN
def test_cofi_fit_exports_a_model_that_validates_to_its_selected_score(arch, glue, tmp_path):
    student = save_tiny_model(tmp_path / "student", "ForSequenceClassification", arch=arch, **NO_DROPOUT)
    teacher = save_tiny_model(tmp_path / "teacher", "ForSequenceClassification", arch=arch, seed=1)
    train_main(cofi_args((tmp_path, student, teacher, glue), tmp_path / "run"))
    export = tmp_path / "run" / "export"
    report = json.loads((export / "compression_report.json").read_text())
    assert report["params_compressed"] < report["params_dense"] and report["sparsity_actual"] > 0.3
    small = load_compressed(export)
    assert type(small).__name__ == f"KP{PREFIX[arch]}ForSequenceClassification"
    assert validated_accuracy(export, glue, tmp_path) == pytest.approx(report["metric_compressed"])
