"""prune.py and the KPrune callback: export contents, bad input, W&B offline, DDP, checkpoints, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file

from callbacks import KPrune
from kp_lightning.cli import main as train_main
from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.export import ExportError, load_compressed
from kp_lightning.datamodules import GlueDataModule
from kp_lightning.modules import TaskModule
from kp_lightning.modules.model_loading import load_task_model
from kp_lightning.prune_cli import PruneCLI
from kp_lightning.prune_cli import main as prune_main
from kp_lightning.pruning import PruneError
from tests.test_cli import PRUNE_CONFIGS, REPO
from tests.text_fixtures import save_tiny_model, write_sst2

REPORT_KEYS = {
    "method", "base_model", "task", "flops_reduction_target", "flops_reduction_actual", "params_dense",
    "params_compressed", "metric_name", "metric_dense", "metric_compressed", "prune_seconds", "latency_speedup",
    "structure",
}  # fmt: skip
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    model = save_tiny_model(root / "model", "ForSequenceClassification")
    glue = write_sst2(root / "glue", n_train=48, n_dev=25)
    common = ["--model", "TaskModule", "--model.init_args.model_name_or_path", str(model),
              "--data", "GlueDataModule", "--data.init_args.task", "sst2", "--data.init_args.data_dir", str(glue),
              "--data.init_args.cache_dir", str(root / "cache"), "--data.init_args.batch_size", "8",
              "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
              "--pruner.num_tokens", "200", "--pruner.batch_size", "8", "--pruner.progress", "false",
              "--latency_seconds", "0.05", "--latency_seq_len", "32"]  # fmt: skip
    return root, model, glue, common


def csv_logger(directory: Path) -> list[str]:
    return ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(directory)]


@pytest.mark.parametrize("config", PRUNE_CONFIGS)
def test_prune_configs_parse(config, monkeypatch):
    class ParseOnly(PruneCLI):
        def instantiate_classes(self) -> None:
            pass

    monkeypatch.chdir(REPO)
    cli = ParseOnly(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    args=["-c", config, "-c", "configs/data/glue/sst2.yaml",
                          "--model.init_args.model_name_or_path", "m"], run=False)  # fmt: skip
    assert cli.config.data.init_args.tokenizer == "m"
    assert 0 < cli.config.pruner.flops_reduction < 1


@pytest.mark.parametrize("method", ["kprune", "kwon"])
def test_prune_writes_a_complete_export_whose_metric_reproduces(setup, tmp_path, method):
    root, model, glue, common = setup
    out = tmp_path / "out"
    report = prune_main([*common, *csv_logger(tmp_path / "logs"), "--pruner.method", method,
                         "--pruner.flops_reduction", "0.5", "--output_dir", str(out)])  # fmt: skip
    assert set(report) >= REPORT_KEYS
    assert report["method"] == method and report["task"] == "sst2" and report["base_model"] == str(model)
    assert report["flops_reduction_actual"] == pytest.approx(0.5, abs=0.06)
    assert report["params_compressed"] < report["params_dense"]
    assert report["latency_speedup"] > 0 and report["metric_name"] == "val/accuracy"
    assert len(report["structure"]["heads_per_layer"]) == 3
    assert {"structure.png", "compression_report.json", "README.md", "model.safetensors"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "structure.png").read_bytes()[:4] == b"\x89PNG"
    reloaded = load_compressed(out)
    assert list(EncoderAdapter(reloaded).shape().heads) == report["structure"]["heads_per_layer"]
    # The exported model, validated by train.py, scores what prune.py reported.
    cli = train_main(["validate", "--model", "TaskModule", "--model.init_args.model_name_or_path", str(out),
                      "--data", "GlueDataModule", "--data.init_args.task", "sst2",
                      "--data.init_args.data_dir", str(glue), "--data.init_args.cache_dir", str(root / "cache"),
                      "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                      "--trainer.default_root_dir", str(root / "validate"),
                      "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert float(cli.trainer.callback_metrics["val/accuracy"]) == pytest.approx(report["metric_compressed"])
    metrics = (next((tmp_path / "logs").rglob("metrics.csv"))).read_text()
    assert "prune/flops_reduction_actual" in metrics and "prune/metric_compressed" in metrics


def test_bad_input_stops_before_any_output(setup, tmp_path):
    root, model, glue, common = setup
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not empty"):
        prune_main([*common, "--pruner.flops_reduction", "0.5", "--output_dir", str(busy),
                    "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "logs")])  # fmt: skip
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    with pytest.raises((PruneError, SystemExit)):
        prune_main([*common, "--pruner.flops_reduction", "1.5", "--output_dir", str(tmp_path / "a")])
    untrained = tmp_path / "encoder-only"
    save_tiny_model(untrained, "Model")  # no task head: loading initialises a new one
    args = [*common, "--pruner.flops_reduction", "0.5", "--output_dir", str(tmp_path / "b"),
            *csv_logger(tmp_path / "logs"), "--trainer.default_root_dir", str(tmp_path / "logs")]  # fmt: skip
    args[args.index(str(model))] = str(untrained)
    with pytest.raises(PruneError, match="newly initialised"):
        prune_main(args)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list((tmp_path / "logs").rglob("metrics.csv"))  # refused before the dense model was validated


def test_a_data_tokenizer_that_is_not_the_models_is_refused(setup, tmp_path):
    root, model, glue, _ = setup
    other = tmp_path / "other"
    save_tiny_model(other, "ForSequenceClassification")
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad"]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(other)
    data = GlueDataModule(task="sst2", data_dir=str(glue), tokenizer=str(other), cache_dir=None, batch_size=8)
    module = TaskModule(str(model), task_spec=data.task_spec)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         callbacks=[KPrune(0.5, num_tokens=200, batch_size=8, progress=False)])  # fmt: skip
    with pytest.raises(PruneError, match="ships another tokenizer"):
        trainer.validate(module, datamodule=data)


def test_wandb_offline_records_the_pruning(setup, tmp_path):
    root, model, glue, common = setup
    run_script("prune.py", [*common, "--pruner.flops_reduction", "0.4", "--output_dir", str(tmp_path / "out"),
                            "--trainer.logger", "WandbLogger", "--trainer.logger.save_dir", str(tmp_path),
                            "--trainer.logger.project", "kp_test"], tmp_path)  # fmt: skip
    run = next((tmp_path / "wandb").glob("offline-run-*"))
    records = next(run.glob("run-*.wandb")).read_bytes()
    assert b"prune/flops_reduction_actual" in records and b"prune/metric_compressed" in records
    assert b"prune/structure" in records  # the structure PNG


def run_script(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kprune", "kwon"])
def test_two_gloo_processes_prune_exactly_like_one(setup, tmp_path, method):
    root, model, glue, common = setup
    weights = {}
    for name, extra in (("one", []), ("two", ["--trainer.strategy", "ddp", "--trainer.devices", "2"])):
        args = [*common, *extra, "--pruner.method", method, "--pruner.flops_reduction", "0.5",
                "--output_dir", str(tmp_path / name), "--trainer.logger", "false"]  # fmt: skip
        run_script("prune.py", args, tmp_path)
        weights[name] = load_file(tmp_path / name / "model.safetensors")
    assert weights["one"].keys() == weights["two"].keys()
    for key, value in weights["one"].items():
        torch.testing.assert_close(weights["two"][key], value, atol=1e-5, rtol=0, msg=key)


@pytest.mark.slow
def test_kprune_then_fit_checkpoints_reload_and_resume(setup, tmp_path):
    root, model, glue, _ = setup
    args = ["-c", str(REPO / "configs/finetune/glue.yaml"), "-c", str(REPO / "configs/data/glue/sst2.yaml"),
            "-c", str(REPO / "configs/trainer/cpu.yaml"), "--model.init_args.model_name_or_path", str(model),
            "--data.init_args.data_dir", str(glue), "--data.init_args.cache_dir", str(root / "cache"),
            "--data.init_args.batch_size", "8", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks+=KPrune", "--trainer.callbacks.flops_reduction", "0.5",
            "--trainer.callbacks.num_tokens", "200", "--trainer.callbacks.batch_size", "8",
            "--trainer.callbacks.progress", "false",
            "-c", str(REPO / "configs/logger/csv.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    run_script("train.py", ["fit", *args, "--trainer.max_steps", "3"], tmp_path)
    ckpt = next(tmp_path.rglob("last.ckpt"))  # configs/finetune/glue.yaml saves the last checkpoint
    spec = GlueDataModule(task="sst2", data_dir=str(glue), tokenizer=str(model), cache_dir=None).task_spec
    pruned = load_task_model(str(ckpt), spec)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in pruned.state_dict().items():
        torch.testing.assert_close(value, state["model." + key])
    assert sum(EncoderAdapter(pruned).shape().heads) < 12
    # Resuming rebuilds the pruned structure from the checkpoint (no second pruning) and trains on.
    resumed = run_script("train.py", ["fit", *args, "--trainer.max_steps", "5", "--ckpt_path", str(ckpt)], tmp_path)
    assert "Restored all states" in resumed.stderr + resumed.stdout
    assert "KPrune: rebuilt the pruned structure recorded in" in resumed.stderr + resumed.stdout
    # prune.py takes a Lightning checkpoint as its model.
    out = tmp_path / "again"
    run_script("prune.py", ["--model", "TaskModule", "--model.init_args.model_name_or_path", str(ckpt),
                            "--data", "GlueDataModule", "--data.init_args.task", "sst2",
                            "--data.init_args.data_dir", str(glue), "--data.init_args.cache_dir", str(root / "cache"),
                            "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                            "--pruner.flops_reduction", "0.3", "--pruner.num_tokens", "200",
                            "--pruner.batch_size", "8", "--latency_seconds", "0",
                            "--output_dir", str(out)], tmp_path)  # fmt: skip
    report = json.loads((out / "compression_report.json").read_text())
    assert report["base_model"] == str(ckpt)
    assert sum(report["structure"]["heads_per_layer"]) <= sum(EncoderAdapter(pruned).shape().heads)


@pytest.mark.gpu
def test_fsdp1_is_refused_with_a_way_forward_to_fsdp2(setup, tmp_path):
    """Lightning's FSDPStrategy (FSDP1, CUDA only) is refused; FSDP2 works (tests/test_distributed_runs.py)."""
    if not torch.cuda.is_available():
        pytest.skip("FSDP1 needs a CUDA device")
    root, model, glue, common = setup
    args = [*common, "--trainer.accelerator", "gpu", "--trainer.strategy", "fsdp", "--pruner.flops_reduction", "0.5",
            "--output_dir", str(tmp_path / "out"), "--trainer.logger", "false"]  # fmt: skip
    with pytest.raises(PruneError, match=r"does not run under FSDPStrategy \(FSDP1\)") as err:
        prune_main(args)
    assert "configs/trainer/fsdp2.yaml" in err.value.fix
    assert not (tmp_path / "out").exists()
