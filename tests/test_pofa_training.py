"""Prune Once for All under train.py: gradual pruning while distilling on MLM text, pattern-locked transfer,
resume and DDP."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from kp_lightning.cli import main as train_main
from kp_lightning.quantization import fake_quantize_weight, load_int8
from kp_lightning.sparsity import encoder_linear_names
from kp_lightning.sparsity.storage import load_sparse
from tests.helpers import needs_onnx
from tests.test_cli import REPO
from tests.test_cofi_training import run_script
from tests.text_fixtures import save_tiny_model, write_sst2

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
CORPUS = "the movie was good and the plot was dull while the cast was fine\n\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pofa")
    mlm = save_tiny_model(root / "mlm", "ForMaskedLM", **NO_DROPOUT)
    (root / "corpus.txt").write_text(CORPUS * 40)
    task_teacher = save_tiny_model(root / "task_teacher", "ForSequenceClassification", seed=1)
    save_tiny_model(root / "task_student", "ForSequenceClassification", **NO_DROPOUT)
    glue = write_sst2(root / "glue", n_train=64, n_dev=25)
    return root, mlm, task_teacher, glue


def common(out: Path) -> list[str]:
    return ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(out),
            "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(out),
            "--trainer.log_every_n_steps", "1"]  # fmt: skip


def gmp_args(setup, out: Path, *extra: str) -> list[str]:
    root, mlm, _, _ = setup
    corpus = str(root / "corpus.txt")
    return ["fit", "--model", "DistillationModule", "--model.init_args.model_name_or_path", str(mlm),
            "--model.init_args.teacher_name_or_path", str(mlm), "--model.init_args.learning_rate", "1e-3",
            "--data", "MLMDataModule", "--data.init_args.train_source", corpus,
            "--data.init_args.validation_source", corpus, "--data.init_args.max_length", "32",
            "--data.init_args.cache_dir", "null", "--data.init_args.batch_size", "4",
            "--trainer.max_epochs", "4", *common(out),
            "--trainer.callbacks+=GradualMagnitudePruning", "--trainer.callbacks.final_sparsity", "0.5",
            "--trainer.callbacks.ramp_end_step", "30", "--trainer.callbacks.frequency", "5",
            "--trainer.callbacks.end_step", "40", "--trainer.callbacks.lr_rewinding", "true",
            "--trainer.callbacks.output_dir", str(out / "sparse"), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def gmp_run(setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gmp_run")
    train_main(gmp_args(setup, out))
    return out


def logged(out: Path) -> list[dict]:
    (metrics,) = out.glob("lightning_logs/version_*/metrics.csv")
    with open(metrics) as handle:
        return list(csv.DictReader(handle))


def test_gmp_reaches_the_target_exactly_logs_it_and_writes_a_reloadable_sparse_model(setup, gmp_run):
    _, mlm, _, _ = setup
    export = gmp_run / "sparse"
    model = transformers.AutoModelForMaskedLM.from_pretrained(export)
    names = encoder_linear_names(model)
    modules = dict(model.named_modules())
    for name in names:
        weight = modules[name].weight
        assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-9), name
    assert float((model.bert.embeddings.word_embeddings.weight == 0).float().mean()) < 0.01  # embeddings dense
    assert load_file(export / "model.safetensors").keys() == load_file(mlm / "model.safetensors").keys()
    report = json.loads((export / "sparsity_report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.5) and report["schedule"]["lr_rewinding"] is True
    assert report["storage"]["sparse_file_bytes"] < report["storage"]["dense_fp32_bytes"]
    reloaded = load_sparse(export / "sparse")
    batch = {"input_ids": torch.randint(5, 70, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    model.eval()
    torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)
    rows = logged(gmp_run)
    targets = [float(r["gmp/target_sparsity"]) for r in rows if r.get("gmp/target_sparsity")]
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.5) and any(0 < t < 0.5 for t in targets)
    layer_keys = [k for k in rows[0] if k.startswith("gmp/layer/")]
    assert len(layer_keys) == len(names)
    assert any(r.get("train/loss_kd") for r in rows) and any(r.get("val/perplexity") for r in rows)


def test_pattern_lock_keeps_the_zeros_through_distilled_transfer(setup, gmp_run, tmp_path):
    root, _, teacher, glue = setup
    sparse = gmp_run / "sparse"
    args = ["fit", "--model", "DistillationModule", "--model.init_args.model_name_or_path", str(sparse),
            "--model.init_args.teacher_name_or_path", str(teacher), "--model.init_args.alpha_ce", "0",
            "--model.init_args.alpha_kd", "1", "--model.init_args.learning_rate", "1e-3",
            "--data", "GlueDataModule", "--data.init_args.task", "sst2", "--data.init_args.data_dir", str(glue),
            "--data.init_args.cache_dir", "null", "--data.init_args.batch_size", "8", "--trainer.max_epochs", "2",
            *common(tmp_path), "--trainer.callbacks+=PatternLock", "--trainer.callbacks.output_dir",
            str(tmp_path / "locked"), "--trainer.callbacks+=SaveBestPretrained", "--trainer.callbacks.dirpath",
            str(tmp_path / "best")]  # fmt: skip
    train_main(args)
    before = transformers.AutoModelForMaskedLM.from_pretrained(sparse)
    before_modules = dict(before.named_modules())
    for directory in (tmp_path / "locked", tmp_path / "best"):
        after = transformers.AutoModelForSequenceClassification.from_pretrained(directory)
        for name in encoder_linear_names(after):
            old, new = before_modules[name].weight, dict(after.named_modules())[name].weight
            assert torch.equal(new == 0, old == 0), name
            assert not torch.equal(new, old), name  # the kept weights trained
    report = json.loads((tmp_path / "locked" / "sparsity_report.json").read_text())
    assert report["locked_sparsity"] == pytest.approx(0.5) and report["sparsity"] == pytest.approx(0.5)


@needs_onnx
def test_qat_with_pattern_lock_writes_an_int8_model_that_matches_the_fake_quantized_one(setup, gmp_run, tmp_path):
    _, _, teacher, glue = setup
    args = ["fit", "--model", "DistillationModule", "--model.init_args.model_name_or_path", str(gmp_run / "sparse"),
            "--model.init_args.teacher_name_or_path", str(teacher), "--model.init_args.alpha_ce", "0",
            "--model.init_args.alpha_kd", "1", "--model.init_args.learning_rate", "1e-4",
            "--data", "GlueDataModule", "--data.init_args.task", "sst2", "--data.init_args.data_dir", str(glue),
            "--data.init_args.cache_dir", "null", "--data.init_args.batch_size", "8", "--trainer.max_epochs", "2",
            *common(tmp_path), "--trainer.callbacks+=PatternLock", "--trainer.callbacks.storage_values", "null",
            "--trainer.callbacks.output_dir", str(tmp_path / "locked"),
            "--trainer.callbacks+=QuantizationAwareTraining", "--trainer.callbacks.output_dir", str(tmp_path / "int8"),
            "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(tmp_path / "ckpt")]  # fmt: skip
    train_main(args)
    report = json.loads((tmp_path / "int8" / "quantization_report.json").read_text())
    assert report["quantized_linears"] == 18 + 2  # encoder + pooler + classifier
    fake, real = report["metrics_fake_quant"]["val/accuracy"], report["metrics_int8"]["val/accuracy"]
    assert abs(fake - real) <= 2 / 25  # at most two of 25 dev examples flip
    assert report["max_abs_output_difference"] < 0.05
    int8 = load_int8(tmp_path / "int8")
    batch = {"input_ids": torch.randint(5, 70, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    assert int8(**batch).logits.shape == (3, 2)
    locked = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "locked")
    storage = report["sparse_int8_storage"]
    assert storage["sparsity"] > 0.4 and storage["sparse_file_bytes"] < storage["dense_fp32_bytes"] / 2
    restored = load_sparse(tmp_path / "int8" / "sparse_int8")
    for name in encoder_linear_names(locked):  # the int8 copy is the fake-quantized weight: locked zeros stay zero
        stored, trained = restored.get_submodule(name).weight, locked.get_submodule(name).weight
        assert (stored[trained == 0] == 0).all(), name
        torch.testing.assert_close(stored, fake_quantize_weight(trained), atol=1e-7, rtol=0, msg=name)
    (ckpt,) = (tmp_path / "ckpt").glob("*.ckpt")
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(k.startswith("fake_quant.") for k in state)
    assert all(not k.startswith("model.") or "fake_quant" not in k for k in state)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trainer.callbacks.final_sparsity", "1.0"], "final_sparsity must be in"),
        (["--trainer.callbacks.pattern", "4:4"], "N:M needs 0 < N < M"),
        (["--trainer.callbacks.pattern", "block:1x4", "--trainer.callbacks.final_sparsity", "0.5"], "does not divide"),
        (["--trainer.callbacks.include", "[no_such_layer]"], "no Linear layer matched"),
        (["--trainer.callbacks.pattern", "2:4", "--trainer.callbacks.final_sparsity", "0.9"], "set final_sparsity"),
        (["--trainer.callbacks.ramp_end_step", "500", "--trainer.callbacks.end_step", "-1"], "only 68 optimizer"),
    ],
)
def test_bad_input_fails_before_training_and_writes_nothing(setup, tmp_path, extra, message):
    with pytest.raises((ValueError, SystemExit)) as info:
        train_main(gmp_args(setup, tmp_path, *extra))
    assert message in str(info.value) or message in str(info.value.__context__)
    assert not (tmp_path / "sparse").exists()
    assert not list(tmp_path.rglob("*.ckpt"))


def gmp_sst2_args(setup, out: Path, *extra: str) -> list[str]:
    """GMP while distilling on SST-2 (its batches are reproducible on resume; MLM masking draws are not)."""
    root, _, teacher, glue = setup
    return ["fit", "--model", "DistillationModule", "--model.init_args.model_name_or_path", str(root / "task_student"),
            "--model.init_args.teacher_name_or_path", str(teacher), "--model.init_args.learning_rate", "1e-3",
            "--data", "GlueDataModule", "--data.init_args.task", "sst2", "--data.init_args.data_dir", str(glue),
            "--data.init_args.cache_dir", "null", "--data.init_args.batch_size", "8", "--trainer.max_epochs", "6",
            *common(out), "--trainer.callbacks+=GradualMagnitudePruning", "--trainer.callbacks.final_sparsity", "0.5",
            "--trainer.callbacks.ramp_end_step", "30", "--trainer.callbacks.frequency", "5",
            "--trainer.callbacks.end_step", "40", "--trainer.callbacks.lr_rewinding", "true",
            "--trainer.callbacks.output_dir", str(out / "sparse"), *extra]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["one", "fsdp2"])
def test_resuming_mid_schedule_gives_the_same_masks_and_weights(setup, tmp_path, processes):
    """Resumed mid-ramp: the same masks, weights and export as the uninterrupted run, in one process and under
    FSDP2 (2 processes, half the steps: the ramp scaled to match)."""
    checkpoints = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_top_k", "-1",
                   "--trainer.callbacks.every_n_epochs", "1", "--trainer.callbacks.dirpath"]  # fmt: skip
    steps, end = (8, 40) if processes == "one" else (4, 20)  # steps an epoch; the masks are frozen after ``end``
    if processes == "fsdp2":
        checkpoints = [
            "-c",
            str(REPO / "configs/trainer/fsdp2_cpu.yaml"),
            "--trainer.callbacks.ramp_end_step",
            "15",
            "--trainer.callbacks.frequency",
            "5",
            "--trainer.callbacks.end_step",
            "20",
            *checkpoints,
        ]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_script("train.py", gmp_sst2_args(setup, full, *checkpoints, str(full / "ckpt")), tmp_path)
    mid = full / "ckpt" / f"epoch=1-step={2 * steps}.ckpt"  # mid-ramp
    run_script("train.py", [*gmp_sst2_args(setup, resumed, *checkpoints, str(resumed / "ckpt")), "--ckpt_path",
                            str(mid)], tmp_path)  # fmt: skip
    exports = [load_file(d / "sparse" / "model.safetensors") for d in (full, resumed)]
    for key, value in exports[0].items():
        torch.testing.assert_close(exports[1][key], value, atol=1e-6, rtol=0, msg=key)
    last = f"epoch=5-step={6 * steps}.ckpt"
    saved = sorted(p.name for p in (resumed / "ckpt").glob("epoch=*.ckpt"))
    assert saved == [f"epoch={e}-step={(e + 1) * steps}.ckpt" for e in range(2, 6)]  # it did resume
    states = [torch.load(d / "ckpt" / last, weights_only=False) for d in (full, resumed)]
    gmp = [next(v for k, v in s["callbacks"].items() if "GradualMagnitudePruning" in k) for s in states]
    assert gmp[0]["last_update"] == gmp[1]["last_update"] == end
    for name, mask in gmp[0]["masks"].items():
        assert torch.equal(gmp[1]["masks"][name], mask)


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_masks(setup, tmp_path):
    args = gmp_args(setup, tmp_path, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                    "--trainer.callbacks+=tests.sparsity_probe.MaskRecorder",
                    "--trainer.callbacks.out_dir", str(tmp_path / "masks"))  # fmt: skip
    run_script("train.py", args, tmp_path)
    rank0, rank1 = (torch.load(tmp_path / "masks" / f"rank{r}.pt") for r in (0, 1))
    assert rank0["masks"].keys() == rank1["masks"].keys() and len(rank0["masks"]) == 18
    for name in rank0["masks"]:
        assert torch.equal(rank0["masks"][name], rank1["masks"][name])
        torch.testing.assert_close(rank0["weights"][name], rank1["weights"][name], atol=0, rtol=0)
        assert float((~rank0["masks"][name]).float().mean()) == pytest.approx(0.5)
    assert (tmp_path / "sparse" / "sparsity_report.json").is_file()
