"""The CoFi callback under train.py: export, logging, bad input, DDP gate samples, exact resume."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kp_lightning.cli import main as train_main
from kp_lightning.core.export import ExportError, load_compressed
from tests.test_cli import REPO
from tests.test_prune_cli import ENV, REPORT_KEYS
from tests.text_fixtures import save_tiny_model, write_sst2

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cofi")
    student = save_tiny_model(root / "student", "ForSequenceClassification", **NO_DROPOUT)
    teacher = save_tiny_model(root / "teacher", "ForSequenceClassification", seed=1)
    glue = write_sst2(root / "glue", n_train=64, n_dev=25)
    return root, student, teacher, glue


def cofi_args(setup, out: Path, *extra: str) -> list[str]:
    root, student, teacher, glue = setup
    return ["fit", "--model", "DistillationModule", "--model.init_args.model_name_or_path", str(student),
            "--model.init_args.teacher_name_or_path", str(teacher), "--model.init_args.alpha_ce", "0",
            "--model.init_args.alpha_kd", "0.1", "--model.init_args.learning_rate", "1e-3",
            "--data", "GlueDataModule", "--data.init_args.task", "sst2", "--data.init_args.data_dir", str(glue),
            "--data.init_args.cache_dir", "null", "--data.init_args.batch_size", "8",
            "--trainer.accelerator", "cpu", "--trainer.max_epochs", "6", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(out),
            "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(out), "--trainer.log_every_n_steps", "1",
            "--trainer.gradient_clip_val", "1.0",
            "--trainer.callbacks+=CoFi", "--trainer.callbacks.target_sparsity", "0.5",
            "--trainer.callbacks.prepruning_steps", "4", "--trainer.callbacks.warmup_steps", "16",
            "--trainer.callbacks.reg_learning_rate", "0.2", "--trainer.callbacks.sparsity_epsilon", "0.05",
            "--trainer.callbacks.latency_seconds", "0.05", "--trainer.callbacks.latency_seq_len", "32",
            "--trainer.callbacks.output_dir", str(out / "export"), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def cofi_run(setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cofi_run")
    train_main(cofi_args(setup, out))
    return out


def test_cofi_reaches_the_target_logs_it_and_exports_an_exact_compact_model(setup, cofi_run):
    root, _, teacher, glue = setup
    tmp_path = cofi_run
    report = json.loads((tmp_path / "export" / "compression_report.json").read_text())
    assert REPORT_KEYS | {"sparsity_target", "sparsity_actual", "train_seconds", "step_seconds"} <= report.keys()
    assert report["sparsity_target"] == 0.5 and 0.3 <= report["sparsity_actual"] <= 0.8
    assert report["sparsity_expected"] >= 0.5 - 0.05  # kept only once the target was reached within epsilon
    assert report["selected"].startswith("best at step")
    assert (tmp_path / "export" / "structure.png").stat().st_size > 1000
    assert report["params_compressed"] < report["params_dense"]
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"cofi/expected_sparsity", "cofi/target_sparsity", "cofi/lambda_1", "cofi/lambda_2",
            "cofi/val_actual_sparsity", "cofi/kept_heads", "cofi/kept_hidden", "train/loss_cofi_layer_distillation",
            "cofi/final_sparsity_actual"} <= logged  # fmt: skip
    targets = [float(r["cofi/target_sparsity"]) for r in rows if r.get("cofi/target_sparsity")]
    assert targets[0] == 0 and max(targets) == 0.5
    # The export reloads as a compact model; train.py validate on it reproduces the selected validation score.
    small = load_compressed(tmp_path / "export")
    assert sum(small.config.kp_structure["heads"]) <= 12
    metrics = train_main(
        [
            "validate",
            "--model",
            "TaskModule",
            "--model.init_args.model_name_or_path",
            str(tmp_path / "export"),
            "--data",
            "GlueDataModule",
            "--data.init_args.task",
            "sst2",
            "--data.init_args.data_dir",
            str(glue),
            "--data.init_args.cache_dir",
            "null",
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        ]  # fmt: skip
    ).trainer.callback_metrics
    assert float(metrics["val/accuracy"]) == pytest.approx(report["metric_compressed"], abs=1e-6)


def test_the_stage_two_recipe_distils_into_the_compact_export(setup, cofi_run, tmp_path):
    root, _, teacher, glue = setup
    export = cofi_run / "export"
    cli = train_main(
        [
            "fit",
            "-c",
            str(REPO / "configs/cofi/finetune_compact.yaml"),
            "-c",
            str(REPO / "configs/data/glue/sst2.yaml"),
            "--model.init_args.model_name_or_path",
            str(export),
            "--model.init_args.teacher_name_or_path",
            str(teacher),
            "--data.init_args.data_dir",
            str(glue),
            "--data.init_args.cache_dir",
            "null",
            "--data.init_args.batch_size",
            "8",
            "--trainer.accelerator",
            "cpu",
            "--trainer.max_steps",
            "3",
            "--trainer.val_check_interval",
            "3",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]  # fmt: skip
    )
    module = cli.model
    layer = module.extensions.loss_terms["layer_distillation"]
    kept_hidden = load_compressed(export).config.kp_structure["hidden_size"]
    assert tuple(layer.transform.weight.shape) == (32, kept_hidden)  # teacher width × compact student width
    assert float(cli.trainer.callback_metrics["train/loss_layer_distillation"]) > 0
    best = next(tmp_path.rglob("best_model"))
    assert load_compressed(best).config.kp_structure == load_compressed(export).config.kp_structure


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trainer.callbacks.target_sparsity", "1.2"], r"target_sparsity must be in \(0, 1\)"),
        (["--trainer.callbacks.warmup_steps", "100"], "warmup steps, but the run has only"),
        (["--model", "TaskModule"], "CoFi distils from a teacher"),
    ],
)
def test_bad_input_fails_before_training_and_writes_nothing(setup, tmp_path, extra, message):
    args = cofi_args(setup, tmp_path, *extra)
    if "TaskModule" in extra:  # a module without a teacher
        for option in ("teacher_name_or_path", "alpha_ce", "alpha_kd"):
            i = args.index(f"--model.init_args.{option}")
            del args[i : i + 2]
    with pytest.raises((ValueError, SystemExit), match=message):
        train_main(args)
    assert not (tmp_path / "export").exists()
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_non_empty_output_dir_is_refused_before_training(setup, tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "keep.txt").write_text("user data")
    with pytest.raises(ExportError, match="exists and is not empty.*choose another one or set the CoFi option"):
        train_main(cofi_args(setup, tmp_path))
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["keep.txt"]
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_teacher_for_another_task_is_refused(setup, tmp_path):
    qa_teacher = save_tiny_model(tmp_path / "qa", "ForQuestionAnswering")
    three = save_tiny_model(tmp_path / "three", "ForSequenceClassification", num_labels=3)
    for teacher, message in (
        (qa_teacher, "fine-tuned on this task|same task"),
        (three, "3 outputs but task .sst2. needs 2"),
    ):
        args = cofi_args(setup, tmp_path)
        args[args.index("--model.init_args.teacher_name_or_path") + 1] = str(teacher)
        with pytest.raises(ValueError, match=message):
            train_main(args)
    assert not (tmp_path / "export").exists()


def test_an_architecture_without_gate_support_is_refused(setup, tmp_path):
    import transformers

    from tests.text_fixtures import tiny_tokenizer

    config = transformers.AlbertConfig(  # one set of layer weights shared by every layer: not in the layout table
        vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=130, pad_token_id=0,
    )  # fmt: skip
    for name in ("student", "teacher"):
        transformers.AlbertForSequenceClassification(config).save_pretrained(tmp_path / name)
        tiny_tokenizer().save_pretrained(tmp_path / name)
    args = cofi_args(setup, tmp_path)
    args[args.index("--model.init_args.model_name_or_path") + 1] = str(tmp_path / "student")
    args[args.index("--model.init_args.teacher_name_or_path") + 1] = str(tmp_path / "teacher")
    with pytest.raises(ValueError, match="CoFi cannot place gates on this model"):
        train_main(args)


def run_script(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True, text=True,
                            env={**ENV, "PYTHONPATH": str(REPO)}, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_two_gloo_processes_draw_identical_gate_samples(setup, tmp_path):
    args = cofi_args(setup, tmp_path, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                     "--trainer.callbacks+=tests.cofi_probe.GateSampleRecorder",
                     "--trainer.callbacks.out_dir", str(tmp_path / "samples"))[1:]  # fmt: skip
    run_script("train.py", ["fit", *args], tmp_path)
    rank0, rank1 = (torch.load(tmp_path / "samples" / f"rank{r}.pt") for r in (0, 1))
    assert rank0.shape[0] == 24  # 6 epochs × 4 steps (64 examples, batch 8, 2 ranks)
    assert not torch.equal(rank0[-1], rank0[-2])  # a new sample every step once pruning runs
    torch.testing.assert_close(rank0, rank1, atol=0, rtol=0)
    assert (tmp_path / "export" / "compression_report.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["one", "fsdp2"])
def test_resuming_from_a_mid_run_checkpoint_ends_with_the_same_masks(setup, tmp_path, processes):
    """Resumed at the end of epoch 3 of 6 (pruning started, target not reached): the same gates, λ's and export
    as the uninterrupted run, in one process and under FSDP2 (2 processes, full-weight checkpoint files)."""
    checkpoints = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_top_k", "-1",
                   "--trainer.callbacks.every_n_epochs", "1", "--trainer.callbacks.dirpath"]  # fmt: skip
    if processes == "fsdp2":  # 4 steps an epoch: a shorter schedule
        checkpoints = ["-c", str(REPO / "configs/trainer/fsdp2_cpu.yaml"), "--trainer.callbacks.prepruning_steps",
                       "2", "--trainer.callbacks.warmup_steps", "8", *checkpoints]  # fmt: skip
    steps = 8 if processes == "one" else 4
    full = tmp_path / "full"
    run_script("train.py", cofi_args(setup, full, *checkpoints, str(full / "ckpt")), tmp_path)
    mid = full / "ckpt" / f"epoch=2-step={3 * steps}.ckpt"
    resumed = tmp_path / "resumed"
    run_script("train.py", [*cofi_args(setup, resumed, *checkpoints, str(resumed / "ckpt")), "--ckpt_path", str(mid)],
               tmp_path)  # fmt: skip
    last = f"epoch=5-step={6 * steps}.ckpt"
    saved = sorted(p.name for p in (resumed / "ckpt").glob("epoch=*.ckpt"))
    assert saved == [f"epoch={e}-step={(e + 1) * steps}.ckpt" for e in range(3, 6)]  # it did resume
    states = [torch.load(d / "ckpt" / last, weights_only=True)["state_dict"] for d in (full, resumed)]
    gates = [k for k in states[0] if ".gates." in k or "lambda" in k]
    assert len(gates) > 10
    for key in gates:
        torch.testing.assert_close(states[1][key], states[0][key], atol=1e-6, rtol=0, msg=key)
    exports = [load_file(d / "export" / "model.safetensors") for d in (full, resumed)]
    assert exports[0].keys() == exports[1].keys()
    for key, value in exports[0].items():
        torch.testing.assert_close(exports[1][key], value, atol=1e-5, rtol=0, msg=key)
