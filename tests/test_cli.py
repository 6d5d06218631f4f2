"""train.py's CLI: every shipped YAML parses, links, --print_config, W&B offline, DDP on CPU (gloo)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kp_lightning.cli import KPLightningCLI, main
from tests.text_fixtures import save_tiny_model, write_sst2

REPO = Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))
PRUNE_CONFIGS = [c for c in ALL_CONFIGS if "pruner" in (yaml.safe_load((REPO / c).read_text()) or {})]
CONFIGS = [c for c in ALL_CONFIGS if c not in PRUNE_CONFIGS]
BASE = ["-c", "configs/finetune/glue.yaml", "-c", "configs/data/glue/sst2.yaml"]


class ParseOnlyCLI(KPLightningCLI):
    """Parses and validates a config (class paths, argument names and types) without building anything."""

    def instantiate_classes(self) -> None:
        pass


def parse(args: list[str]):
    import lightning.pytorch as pl

    cli = ParseOnlyCLI(
        pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        args=args, run=False,
    )  # fmt: skip
    return cli.config


def test_configs_are_found():
    assert len(CONFIGS) >= 20 and "configs/logger/wandb.yaml" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_every_shipped_yaml_parses(config, monkeypatch):
    monkeypatch.chdir(REPO)
    args = [*BASE, "-c", config, "--model.init_args.model_name_or_path", "student-model"]
    if "distill" in config or "cofi" in config or ("pofa" in config and "teacher_mlm" not in config):
        args += ["--model.init_args.teacher_name_or_path", "teacher-model"]
    parsed = parse(args)
    assert parsed.model.init_args.model_name_or_path == "student-model"
    assert parsed.data.init_args.tokenizer == "student-model"  # linked from the model path


def test_print_config_shows_resolved_classes(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        main(["fit", *BASE, "--model.init_args.model_name_or_path", "m", "--print_config"])
    printed = capsys.readouterr().out
    assert "class_path: kp_lightning.modules.TaskModule" in printed
    assert "task: sst2" in printed and "learning_rate: 2.0e-05" in printed


def test_unknown_task_fails_before_training(tmp_path, monkeypatch):
    model_dir = save_tiny_model(tmp_path / "model", "ForSequenceClassification")
    with pytest.raises(ValueError, match="unknown GLUE task 'sst3'"):
        main(["fit", *BASE, "--model.init_args.model_name_or_path", str(model_dir), "--data.init_args.task", "sst3",
              "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert not (tmp_path / "lightning_logs").exists()


def run_train(args: list[str], cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": str(REPO), **(env_extra or {})}  # fmt: skip
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def sst2_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_model(root / "model", "ForSequenceClassification")
    glue = write_sst2(root / "glue", n_train=32, n_dev=25)
    common = ["-c", str(REPO / "configs/finetune/glue.yaml"), "-c", str(REPO / "configs/data/glue/sst2.yaml"),
              "-c", str(REPO / "configs/trainer/cpu.yaml"), "--data.init_args.data_dir", str(glue),
              "--data.init_args.cache_dir", str(root / "cache"), "--data.init_args.batch_size", "8",
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    return root, model, common


def test_wandb_offline_run_logs_the_resolved_config(sst2_setup, tmp_path):
    root, model, common = sst2_setup
    run_train(["fit", *common, "-c", str(REPO / "configs/logger/wandb.yaml"),
               "--model.init_args.model_name_or_path", str(model), "--trainer.max_epochs", "1",
               "--trainer.logger.init_args.save_dir", str(tmp_path)], cwd=tmp_path)  # fmt: skip
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))[:20]
    # Offline runs keep their records (config included) in the run's binary log until `wandb sync`.
    records = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"kp_lightning.datamodules.GlueDataModule" in records and str(model).encode() in records
    assert b"val/accuracy" in records


def read_metrics(directory: Path) -> dict[str, float]:
    rows = list(csv.DictReader(next(directory.rglob("metrics.csv")).open()))
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


def test_ddp_two_processes_give_the_single_process_metrics(sst2_setup, tmp_path):
    root, model, common = sst2_setup
    csv_logger = ["-c", str(REPO / "configs/logger/csv.yaml")]
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    # Fine-tune under DDP (the best model is written once, by rank 0).
    run_train(["fit", *common, *csv_logger, *ddp, "--model.init_args.model_name_or_path", str(model),
               "--model.init_args.learning_rate", "1e-3", "--trainer.max_epochs", "2",
               "--trainer.logger.init_args.save_dir", str(tmp_path / "fit")], cwd=tmp_path)  # fmt: skip
    best = next((tmp_path / "fit").rglob("best_model"))
    scores = {}
    for name, extra in (("one", ["--trainer.devices", "1"]), ("two", ddp)):
        run_train(["validate", *common, *csv_logger, *extra, "--model.init_args.model_name_or_path", str(best),
                   "--trainer.logger.init_args.save_dir", str(tmp_path / name)], cwd=tmp_path)  # fmt: skip
        scores[name] = read_metrics(tmp_path / name)
    assert set(scores["one"]) == {"val/accuracy", "val/loss"}
    assert scores["two"]["val/accuracy"] == scores["one"]["val/accuracy"]  # 25 examples: 13 + 12, none repeated
    assert scores["two"]["val/loss"] == pytest.approx(scores["one"]["val/loss"], abs=1e-5)


def test_short_class_names_resolve(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model", "DistillationModule", "--data", "GlueDataModule", "--data.task", "rte",
              "--model.model_name_or_path", "s", "--model.teacher_name_or_path", "t",
              "--trainer.callbacks+=SaveBestPretrained", "--print_config"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "kp_lightning.modules.DistillationModule" in printed and "callbacks.SaveBestPretrained" in printed
