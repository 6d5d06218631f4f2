"""FSDP2 (ModelParallelStrategy, 2 gloo processes) and a simulated 2-node DDP run give what one process gives:
fine-tuning, K-prune then distillation, prune.py, CoFi, gradual magnitude pruning, quantization-aware training;
Lightning's FSDP1 strategy is refused with a way forward."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from safetensors.torch import load_file

from callbacks import CoFi, GradualMagnitudePruning, PatternLock, QuantizationAwareTraining
from callbacks.strategy_support import refuse_fsdp1
from kp_lightning.errors import ConfigError
from kp_lightning.modules import DistillationModule
from tests.helpers import MISSING_ONNX, needs_onnx, tiny_batch
from tests.test_cli import REPO
from tests.test_prune_cli import run_script
from tests.text_fixtures import save_tiny_model, write_sst2

FSDP2_CPU = str(REPO / "configs/trainer/fsdp2_cpu.yaml")
DDP_CPU = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
KPRUNE = ["--trainer.callbacks+=KPrune", "--trainer.callbacks.flops_reduction", "0.5",
          "--trainer.callbacks.num_tokens", "200", "--trainer.callbacks.batch_size", "8",
          "--trainer.callbacks.progress", "false"]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    save_tiny_model(root / "model", "ForSequenceClassification", **NO_DROPOUT)  # no dropout: runs comparable
    save_tiny_model(root / "teacher", "ForSequenceClassification", seed=1)
    write_sst2(root / "glue", n_train=48, n_dev=24)  # 24 = 2 ranks x whole eval batches: no padding anywhere
    return root


def fit_args(root: Path, out: Path, batch_size: int, *extra: str, data: str = "GlobalBatchGlue") -> list[str]:
    """Fine-tune recipe (gradient clipping, SaveBestPretrained, last.ckpt) on the global-batch-sharded SST-2
    (``data``: a data module of ``tests.fsdp_probe``)."""
    return ["fit", "-c", str(REPO / "configs/finetune/glue.yaml"),
            "--model.init_args.model_name_or_path", str(root / "model"), "--model.init_args.learning_rate", "1e-3",
            "--data", f"tests.fsdp_probe.{data}", "--data.init_args.task", "sst2",
            "--data.init_args.data_dir", str(root / "glue"), "--data.init_args.tokenizer", str(root / "model"),
            "--data.init_args.cache_dir", "null", "--data.init_args.batch_size", str(batch_size),
            "--data.init_args.eval_batch_size", "4", "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(out),
            "--trainer.default_root_dir", str(out),
            "--trainer.callbacks+=tests.fsdp_probe.RunRecorder", "--trainer.callbacks.out_dir", str(out / "rec"),
            *extra]  # fmt: skip


def distill_args(root: Path) -> list[str]:
    return ["--model", "DistillationModule", "--model.init_args.model_name_or_path", str(root / "model"),
            "--model.init_args.teacher_name_or_path", str(root / "teacher"),
            "--model.init_args.learning_rate", "1e-3", *KPRUNE]  # fmt: skip


def prune_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "TaskModule", "--model.init_args.model_name_or_path", str(root / "model"),
            "--data", "GlueDataModule", "--data.init_args.task", "sst2",
            "--data.init_args.data_dir", str(root / "glue"), "--data.init_args.cache_dir", "null",
            "--data.init_args.batch_size", "8", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(out), "--pruner.flops_reduction", "0.5",
            "--pruner.num_tokens", "200", "--pruner.batch_size", "8", "--pruner.progress", "false",
            "--latency_seconds", "0", "--output_dir", str(out / "export"), *extra]  # fmt: skip


def assert_same_tensors(got: dict, expected: dict, atol: float = 1e-5) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=atol, rtol=0, msg=key)


def assert_same_fit(run: Path, reference: Path, sharded: bool, epochs: int = 2) -> None:
    """Same validation metrics after every epoch (1e-5), final weights, best export and last checkpoint."""
    metrics = [json.loads((d / "rec" / "metrics.json").read_text()) for d in (run, reference)]
    assert len(metrics[0]) == len(metrics[1]) == epochs
    for got, expected in zip(*metrics, strict=True):
        assert got.keys() == expected.keys() == {"val/accuracy", "val/loss"}
        assert all(got[k] == pytest.approx(expected[k], abs=1e-5) for k in expected)
    assert json.loads((run / "rec" / "info.json").read_text()) == {"sharded": sharded, "world_size": 2}
    assert_same_tensors(torch.load(run / "rec" / "weights.pt"), torch.load(reference / "rec" / "weights.pt"))
    exports = [load_file(next(d.rglob("best_model")) / "model.safetensors") for d in (run, reference)]
    assert_same_tensors(*exports)
    checkpoints = [torch.load(next(d.rglob("last.ckpt")), weights_only=True) for d in (run, reference)]
    steps = 3 * epochs  # 48 examples, global batch 16
    assert checkpoints[0]["global_step"] == checkpoints[1]["global_step"] == steps
    assert_same_tensors(checkpoints[0]["state_dict"], checkpoints[1]["state_dict"])


@pytest.fixture(scope="module")
def single_fit(setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single_fit")
    run_script("train.py", fit_args(setup, out, 16), out)
    return out


@pytest.fixture(scope="module")
def single_prune(setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single_prune")
    run_script("prune.py", prune_args(setup, out), out)
    return out


def assert_same_prune(run: Path, reference: Path) -> None:
    assert_same_tensors(*(load_file(d / "export" / "model.safetensors") for d in (run, reference)))
    reports = [json.loads((d / "export" / "compression_report.json").read_text()) for d in (run, reference)]
    assert reports[0]["structure"] == reports[1]["structure"]
    for key in ("metrics_dense", "metrics_compressed"):
        assert reports[0][key] == pytest.approx(reports[1][key], abs=1e-5)


@pytest.mark.slow
def test_fsdp2_fine_tuning_equals_one_process(setup, single_fit, tmp_path):
    run_script("train.py", fit_args(setup, tmp_path, 8, "-c", FSDP2_CPU), tmp_path)
    assert_same_fit(tmp_path, single_fit, sharded=True)


@pytest.mark.slow
def test_fsdp2_kprune_then_distillation_equals_one_process(setup, tmp_path):
    """KPrune prunes the full model in ``setup`` (before ``configure_model`` shards it); the teacher is a full
    copy in every process."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_script("train.py", fit_args(setup, one, 16, *distill_args(setup)), tmp_path)
    run_script("train.py", fit_args(setup, two, 8, *distill_args(setup), "-c", FSDP2_CPU), tmp_path)
    assert_same_fit(two, one, sharded=True)
    config = json.loads((next(two.rglob("best_model")) / "config.json").read_text())
    assert sum(config["kp_structure"]["heads"]) < 12  # the pruned (compact) model was exported


@pytest.mark.slow
def test_fsdp2_prune_cli_equals_one_process(setup, single_prune, tmp_path):
    """prune.py validates (sharding the model), then KPrune gathers, prunes and the export is gathered again."""
    run_script("prune.py", prune_args(setup, tmp_path, "-c", FSDP2_CPU), tmp_path)
    assert_same_prune(tmp_path, single_prune)


def cofi_args(root: Path, layer_distill_weight: float) -> list[str]:
    """CoFi at 50 % over 18 steps (2 distillation only, 6 of ramp), the best model kept from step 12 on."""
    return ["--model", "DistillationModule", "--model.init_args.model_name_or_path", str(root / "model"),
            "--model.init_args.teacher_name_or_path", str(root / "teacher"), "--model.init_args.alpha_ce", "0",
            "--model.init_args.alpha_kd", "0.1", "--trainer.max_epochs", "6",
            "--trainer.callbacks+=CoFi", "--trainer.callbacks.target_sparsity", "0.5",
            "--trainer.callbacks.prepruning_steps", "2", "--trainer.callbacks.warmup_steps", "6",
            "--trainer.callbacks.reg_learning_rate", "0.5", "--trainer.callbacks.sparsity_epsilon", "0.1",
            "--trainer.callbacks.layer_distill_weight", str(layer_distill_weight),
            "--trainer.callbacks.latency_seconds", "0"]  # fmt: skip


def assert_same_cofi(run: Path, reference: Path, sharded: bool) -> None:
    """Same metrics, weights, gates and λ's (in last.ckpt), kept structure and compact export."""
    assert_same_fit(run, reference, sharded, epochs=6)
    reports = [json.loads((d / "cofi" / "compression_report.json").read_text()) for d in (run, reference)]
    assert reports[0]["structure"] == reports[1]["structure"]  # identical masks
    assert reports[0]["selected"] == reports[1]["selected"] and reports[0]["selected"].startswith("best at step")
    assert reports[0]["sparsity_expected"] == pytest.approx(reports[1]["sparsity_expected"], abs=1e-5)
    assert reports[0]["metric_compressed"] == pytest.approx(reports[1]["metric_compressed"], abs=1e-5)
    assert_same_tensors(*(load_file(d / "cofi" / "model.safetensors") for d in (run, reference)))
    state = torch.load(next(run.rglob("last.ckpt")), weights_only=True)["state_dict"]
    assert len([k for k in state if ".gates." in k]) == 9  # 3 layers x (heads, neurons); sublayers; hidden
    assert any("lambda" in k for k in state)


@pytest.mark.slow
def test_fsdp2_cofi_equals_one_process_and_ddp(setup, tmp_path):
    """Gates and λ's are replicated (their gradients averaged over the ranks), the gate sample of a step is the
    same everywhere, the best compact model is built from the gathered weights on rank 0. Without layer
    distillation FSDP2 equals one process; with it (a mean over each process's tokens and a per-batch layer
    mapping, as under DDP) FSDP2 equals DDP, which also checks the averaged gradients of its transform."""
    runs = {name: tmp_path / name for name in ("one", "fsdp2", "ddp", "fsdp2_layers")}
    for name, batch_size, layers, extra in (
        ("one", 16, 0, []),
        ("fsdp2", 8, 0, ["-c", FSDP2_CPU]),
        ("ddp", 8, 0.9, DDP_CPU),
        ("fsdp2_layers", 8, 0.9, ["-c", FSDP2_CPU]),
    ):
        out = runs[name]
        cofi = [*cofi_args(setup, layers), "--trainer.callbacks.output_dir", str(out / "cofi")]
        run_script("train.py", fit_args(setup, out, batch_size, *cofi, *extra), tmp_path)
    assert_same_cofi(runs["fsdp2"], runs["one"], sharded=True)
    assert_same_cofi(runs["fsdp2_layers"], runs["ddp"], sharded=True)
    ddp_info = json.loads((runs["ddp"] / "rec" / "info.json").read_text())
    assert ddp_info == {"sharded": False, "world_size": 2}


@pytest.mark.slow
def test_fsdp2_kwon_prune_cli_equals_one_process(setup, tmp_path):
    """Kwon et al. through prune.py: the same gathered-model path as K-prune, its Fisher pass over the same
    sample; the mask search and the tuned scales are identical, so are the export and its scores."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_script("prune.py", prune_args(setup, one, "--pruner.method", "kwon"), tmp_path)
    run_script("prune.py", prune_args(setup, two, "--pruner.method", "kwon", "-c", FSDP2_CPU), tmp_path)
    assert_same_prune(two, one)
    report = json.loads((one / "export" / "compression_report.json").read_text())
    assert report["method"] == "kwon"


GMP = ["--trainer.callbacks+=GradualMagnitudePruning", "--trainer.callbacks.final_sparsity", "0.5",
       "--trainer.callbacks.ramp_end_step", "4", "--trainer.callbacks.frequency", "2"]  # fmt: skip


def gmp_masks(run: Path) -> dict[str, torch.Tensor]:
    """The masks GradualMagnitudePruning saved in ``last.ckpt``."""
    callbacks = torch.load(next(run.rglob("last.ckpt")), weights_only=True)["callbacks"]
    (state,) = [v for k, v in callbacks.items() if k.startswith("GradualMagnitudePruning")]
    return state["masks"]


@pytest.mark.slow
def test_fsdp2_gradual_magnitude_pruning_equals_one_process(setup, tmp_path):
    """Masks chosen on the gathered weights (identical to one process's), hard zeros on every shard, full masks in
    the checkpoint, the sparse export gathered on rank 0."""
    one, two = tmp_path / "one", tmp_path / "two"
    for out, batch_size, extra in ((one, 16, []), (two, 8, ["-c", FSDP2_CPU])):
        gmp = [*GMP, "--trainer.callbacks.output_dir", str(out / "sparse")]
        run_script("train.py", fit_args(setup, out, batch_size, *gmp, *extra), tmp_path)
    assert_same_fit(two, one, sharded=True)
    masks = [gmp_masks(d) for d in (two, one)]
    assert masks[0].keys() == masks[1].keys() and len(masks[0]) == 18  # 3 layers x (Q, K, V, out, FFN up, down)
    for name, mask in masks[1].items():
        assert torch.equal(masks[0][name], mask), name
    exports = [load_file(d / "sparse" / "model.safetensors") for d in (two, one)]
    assert_same_tensors(*exports)
    for name, mask in masks[0].items():
        assert not exports[0][f"{name}.weight"][~mask].any(), name  # the zeros stayed hard
    reports = [json.loads((d / "sparse" / "sparsity_report.json").read_text()) for d in (two, one)]
    assert reports[0]["per_weight"] == reports[1]["per_weight"]
    assert reports[0]["sparsity"] == pytest.approx(0.5, abs=0.01)
    compression = [json.loads((d / "sparse" / "compression_report.json").read_text()) for d in (two, one)]
    assert compression[0]["metrics_compressed"] == pytest.approx(compression[1]["metrics_compressed"], abs=1e-5)


QAT = ["--trainer.callbacks+=QuantizationAwareTraining", "--trainer.callbacks.averaging_constant", "0.1"]


@needs_onnx
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_quantization_aware_training_in_two_processes_equals_one_process(setup, tmp_path, strategy):
    """The observers all-reduce each batch's range: identical on both ranks and equal to one process's on the
    same global batch (batches padded to a fixed length: padded positions are observed too). Under FSDP2 the
    fake-quant hooks quantize the unsharded weights and the int8 model is converted from the gathered model on
    rank 0; under DDP rank 0 converts its own replica."""
    from kp_lightning.quantization import load_int8

    one, two = tmp_path / "one", tmp_path / "two"
    two_processes = ["-c", FSDP2_CPU] if strategy == "fsdp2" else DDP_CPU
    for out, batch_size, extra in ((one, 16, []), (two, 8, two_processes)):
        qat = [*QAT, "--trainer.callbacks.output_dir", str(out / "int8"), "--data.init_args.max_length", "32"]
        run_script("train.py", fit_args(setup, out, batch_size, *qat, *extra, data="FixedLengthGlobalBatchGlue"),
                   tmp_path)  # fmt: skip
    assert_same_fit(two, one, sharded=strategy == "fsdp2")  # last.ckpt's state_dict holds the ranges too
    ranks = [torch.load(two / "rec" / f"ranges_rank{r}.pt") for r in (0, 1)]
    reference = torch.load(one / "rec" / "ranges_rank0.pt")
    assert len(reference) > 30 and all(torch.isfinite(v).all() for v in reference.values())
    assert ranks[0].keys() == ranks[1].keys() == reference.keys()
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key  # identical on every rank
    assert_same_tensors(ranks[0], reference)
    reports = [json.loads((d / "int8" / "quantization_report.json").read_text()) for d in (two, one)]
    for key in ("metrics_fake_quant", "metrics_int8"):
        assert reports[0][key].keys() == reports[1][key].keys()
        assert reports[0][key] == pytest.approx(reports[1][key], abs=1e-5), key
    assert reports[0]["steps"] == reports[1]["steps"] == 6
    assert reports[0]["quantized_linears"] == reports[1]["quantized_linears"]
    models = [load_int8(d / "int8") for d in (two, one)]
    inputs = tiny_batch(batch=4, seq=16)
    outputs = [model(**inputs).logits for model in models]
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_nodes(script: str, args: list[str], cwd: Path) -> None:
    """``script`` as 2 nodes x 1 process on this machine: what SLURM or torchrun would start on each node."""
    port = str(free_port())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PL_", "TORCHELASTIC_"))}
    base.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=str(REPO),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", LOCAL_RANK="0")  # fmt: skip
    nodes = ["--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / script), *args, *nodes],
            cwd=cwd,
            env={**base, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"node {rank}:\n{output[-4000:]}"
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]


@pytest.mark.slow
def test_two_simulated_nodes_fit_and_prune_like_one_process(setup, single_fit, single_prune, tmp_path):
    fit, prune = tmp_path / "fit", tmp_path / "prune"
    run_two_nodes("train.py", fit_args(setup, fit, 8), tmp_path)
    assert_same_fit(fit, single_fit, sharded=False)
    run_two_nodes("prune.py", prune_args(setup, prune), tmp_path)
    assert_same_prune(prune, single_prune)


def test_every_method_refuses_fsdp1_only_with_a_way_forward():
    """CoFi, GMP, PatternLock and QAT run under FSDP2 and DDP (tested above); FSDP1 flattens the weights their
    masks refer to, their hooks act on and their fake quantization rounds."""
    module = DistillationModule.__new__(DistillationModule)
    callbacks = [CoFi(target_sparsity=0.6), GradualMagnitudePruning(final_sparsity=0.5, ramp_end_step=10),
                 PatternLock()]  # fmt: skip
    if not MISSING_ONNX:
        callbacks.append(QuantizationAwareTraining())
    for strategy in (ModelParallelStrategy(), DDPStrategy()):
        refuse_fsdp1(SimpleNamespace(strategy=strategy), "CoFi")  # supported: no error
    trainer = SimpleNamespace(strategy=FSDPStrategy())
    for callback in callbacks:
        with pytest.raises(ConfigError, match=r"does not run under FSDPStrategy \(FSDP1\)") as err:
            callback.setup(trainer, module, "fit")
        assert "configs/trainer/fsdp2.yaml" in err.value.fix
