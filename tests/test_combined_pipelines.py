"""Methods compose: each step trains the previous step's output, compact K-prune / CoFi models included.

Chains (tiny models, a few optimizer steps each):

1. K-prune (prune.py) -> QAT -> int8 (BERT), and KPrune + QAT in one run (DistilBERT);
2. K-prune -> distillation from the dense teacher -> QAT -> int8;
3. CoFi -> QAT -> int8;
4. K-prune -> gradual magnitude pruning, dense-with-zeros and sparse outputs.

A combination that cannot work is refused before the first training step.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import transformers
from torch import nn

from callbacks import CoFi, GradualMagnitudePruning, KPrune, QuantizationAwareTraining, SaveBestPretrained
from kp_lightning.compact_model.modeling_kp import RemovedProjection, ZeroLinear, remove_fused_qkv
from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.datamodules import GlueDataModule
from kp_lightning.errors import ConfigError, KPError
from kp_lightning.modules import DistillationModule, TaskModule
from kp_lightning.modules.model_loading import accepted_inputs, load_task_model
from kp_lightning.prune_cli import main as prune_main
from kp_lightning.quantization import fake_quantize_weight, int8_reference_model, load_int8, strip_fake_quant
from kp_lightning.sparsity import encoder_linear_names
from kp_lightning.sparsity.storage import load_sparse
from tests.helpers import needs_onnx
from tests.test_export import run_fresh_python
from tests.text_fixtures import save_tiny_model, write_sst2

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
INT8_TOLERANCE = 1e-5  # as tests/test_int8_model.py: same integer grids and qparams, fp32 summation order only


class StepCounter(pl.Callback):
    def __init__(self):
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps += 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("combined")
    dense = save_tiny_model(root / "dense", "ForSequenceClassification")
    glue = write_sst2(root / "glue", n_train=32, n_dev=16)
    return root, dense, glue


def kprune_export(model: Path, glue: Path, out: Path, flops_reduction: float) -> Path:
    """What ``prune.py`` writes for ``model`` (K-prune, no retraining)."""
    prune_main(["--model", "TaskModule", "--model.init_args.model_name_or_path", str(model),
                "--data", "GlueDataModule", "--data.init_args.task", "sst2", "--data.init_args.data_dir", str(glue),
                "--data.init_args.cache_dir", "null", "--data.init_args.batch_size", "8",
                "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
                "--trainer.logger", "false", "--pruner.num_tokens", "200", "--pruner.batch_size", "8",
                "--pruner.progress", "false", "--latency_seconds", "0", "--latency_seq_len", "32",
                "--pruner.flops_reduction", str(flops_reduction), "--output_dir", str(out)])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def kpruned(setup) -> Path:
    """A K-pruned compact BERT that removes whole sublayers (70% of the FLOPs go)."""
    root, dense, glue = setup
    out = kprune_export(dense, glue, root / "kprune", 0.7)
    structure = json.loads((out / "config.json").read_text())["kp_structure"]
    assert 0 in structure["heads"] and 0 in structure["intermediate"], structure  # removed sublayers exercised
    return out


def glue_data(glue: Path, tokenizer: Path) -> GlueDataModule:
    return GlueDataModule("sst2", data_dir=str(glue), tokenizer=str(tokenizer), batch_size=8, cache_dir=None)


def fit(module, data, root: Path, callbacks: list, **kwargs) -> pl.Trainer:
    options = {"accelerator": "cpu", "max_steps": 4, "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
               "default_root_dir": str(root), **kwargs}  # fmt: skip
    trainer = pl.Trainer(callbacks=callbacks, **options)
    trainer.fit(module, datamodule=data)
    return trainer


def batch_for(model, seed: int = 3, batch: int = 3, seq: int = 12) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 70, (batch, seq), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    inputs["attention_mask"][1, -3:] = 0
    if "token_type_ids" in accepted_inputs(model):
        inputs["token_type_ids"] = (torch.arange(seq) > seq // 2).long().expand(batch, seq)
    return inputs


def check_qat_export(module: TaskModule, qat: QuantizationAwareTraining, out: Path, arch_prefix: str) -> None:
    """The int8 model (ONNX Runtime) reproduces the fake-quantized compact model; both exports reload."""
    model = module.model.eval()
    assert type(model).__name__ == f"KP{arch_prefix}ForSequenceClassification"
    # Removed sublayers have no Linear to quantize; everything quantized is a real nn.Linear.
    assert all(type(model.get_submodule(n)) is nn.Linear for n in qat.quantizer.module_names)
    removed = [n for n, m in model.named_modules() if isinstance(m, (RemovedProjection, ZeroLinear))]
    assert not set(removed) & set(qat.quantizer.module_names)
    # Q/K/V really run fake-quantized (the fused Q/K/V fast path steps aside): their input ranges were observed.
    names = {id(m): n for n, m in model.named_modules()}
    kept = [view for view in EncoderAdapter(model).layers if view.has_attention]
    assert kept, "the compact model kept no attention"
    for view in kept:
        for proj in view.head_projections:
            assert qat.quantizer.quantizer(names[id(proj)]).input.initialized, names[id(proj)]
    inputs = batch_for(model, batch=8)
    with torch.no_grad():
        fake = model(**inputs).logits
        unfused = copy.deepcopy(model)
        assert remove_fused_qkv(unfused) == len(kept)  # the compact model has the fast path installed ...
        torch.testing.assert_close(unfused(**inputs).logits, fake, atol=0, rtol=0)  # ... and it was not taken
        strip_fake_quant(unfused)
        float_logits = unfused(**inputs).logits
        reference = int8_reference_model(model, qat.quantizer)(**inputs).logits  # what the ONNX export traces
    assert (reference - fake).abs().max() < INT8_TOLERANCE
    int8 = load_int8(out)
    rows = (int8(**inputs).logits - fake).abs().amax(dim=-1)
    # ONNX Runtime's integer kernels and fused LayerNorm/GELU round in another order than the float emulation, so
    # in a trained model an activation lying on a rounding tie occasionally lands one quantization step away (a
    # ~1e-4 change of these logits; stock models do the same). Most rows must match to the int8 tests' tolerance,
    # every row (and the report's validation batch) to the bound of tests/test_pofa_training.py's QAT check.
    assert (rows < INT8_TOLERANCE).float().mean() >= 0.75, rows
    assert rows.max() < 0.05
    assert (float_logits - fake).abs().max() > 10 * rows.median()  # quantization did something
    assert int8.kernel_counts().get("MatMulIntegerToFloat", 0) >= 3
    report = json.loads((out / "quantization_report.json").read_text())
    assert report["max_abs_output_difference"] < 0.05
    assert report["quantized_linears"] == len(qat.quantizer.module_names)
    # The sparse int8 copy rebuilds the compact class with the fake-quantized weights.
    restored = load_sparse(out / "sparse_int8")
    assert type(restored) is type(model)
    for name in qat.quantizer.module_names:
        expected = fake_quantize_weight(model.get_submodule(name).weight)
        torch.testing.assert_close(restored.get_submodule(name).weight, expected, atol=1e-7, rtol=0, msg=name)
    assert {"modeling_kp.py", "configuration_kp.py", "layouts.py", "fused_attention.py"} <= {
        p.name for p in out.iterdir()
    }


def stock_int8_check(out: Path, inputs: dict, expected: torch.Tensor, tmp_path: Path) -> None:
    """Without kp_lightning: the config reads with trust_remote_code, onnxruntime runs model.onnx."""
    np.savez(tmp_path / "inputs.npz", **{k: v.numpy() for k, v in inputs.items()})
    stdout = run_fresh_python(
        f"""
        import sys, numpy as np, onnxruntime, transformers
        config = transformers.AutoConfig.from_pretrained({str(out)!r}, trust_remote_code=True)
        session = onnxruntime.InferenceSession({str(out / "model.onnx")!r}, providers=["CPUExecutionProvider"])
        inputs = dict(np.load("inputs.npz"))
        feeds = {{i.name: inputs[i.name].astype(np.int64) for i in session.get_inputs()}}
        np.save("logits.npy", session.run(None, feeds)[0])
        print("loaded", config.model_type, type(config).__name__, "kp_lightning" in sys.modules)
        """,
        tmp_path,
    )
    assert "loaded kp_bert KPBertConfig False" in stdout, stdout
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "logits.npy")), expected, atol=1e-6, rtol=0)


@needs_onnx
def test_kprune_export_then_qat_gives_an_int8_model_equal_to_the_fake_quantized_one(setup, kpruned, tmp_path):
    root, dense, glue = setup
    data = glue_data(glue, kpruned)
    module = TaskModule(str(kpruned), task_spec=data.task_spec, learning_rate=1e-3, warmup_ratio=0.0)
    qat = QuantizationAwareTraining(output_dir=str(tmp_path / "int8"))
    fit(module, data, tmp_path, [qat])
    check_qat_export(module, qat, tmp_path / "int8", "Bert")
    inputs = batch_for(module.model)
    stock_int8_check(tmp_path / "int8", inputs, load_int8(tmp_path / "int8")(**inputs).logits, tmp_path)
    with pytest.raises(KPError, match="int8 ONNX model"):  # the end of the chain: not trainable, and says so
        load_task_model(str(tmp_path / "int8"), data.task_spec)


@needs_onnx
def test_kprune_and_qat_in_one_run_on_distilbert(setup, tmp_path):
    root, _, glue = setup
    model = save_tiny_model(tmp_path / "distilbert", "ForSequenceClassification", arch="distilbert")
    data = glue_data(glue, model)
    module = TaskModule(str(model), task_spec=data.task_spec, learning_rate=1e-3, warmup_ratio=0.0)
    pruner = KPrune(0.6, num_tokens=200, batch_size=8, progress=False)
    qat = QuantizationAwareTraining(output_dir=str(tmp_path / "int8"))
    fit(module, data, tmp_path, [pruner, qat])  # KPrune first: QAT sets up on the pruned compact model
    assert qat.quantizer.model is module.model and pruner.structure is not None
    check_qat_export(module, qat, tmp_path / "int8", "DistilBert")
    assert load_int8(tmp_path / "int8").input_names == ["input_ids", "attention_mask"]


@needs_onnx
def test_kprune_then_distillation_then_qat(setup, kpruned, tmp_path):
    root, dense, glue = setup
    data = glue_data(glue, kpruned)
    student = DistillationModule(str(kpruned), str(dense), task_spec=data.task_spec, learning_rate=1e-3,
                                 warmup_ratio=0.0)  # fmt: skip
    assert EncoderAdapter(student.model).is_compact and not EncoderAdapter(student.teacher).is_compact
    fit(student, data, tmp_path / "distill", [SaveBestPretrained(dirpath=str(tmp_path / "distilled"))], max_steps=-1,
        max_epochs=1)  # fmt: skip
    distilled = tmp_path / "distilled"
    before = transformers.AutoModelForSequenceClassification.from_pretrained(kpruned, trust_remote_code=True)
    after = transformers.AutoModelForSequenceClassification.from_pretrained(distilled, trust_remote_code=True)
    assert type(after).__name__ == "KPBertForSequenceClassification"
    assert after.config.kp_structure == before.config.kp_structure
    assert not torch.equal(after.classifier.weight, before.classifier.weight)  # it trained

    data = glue_data(glue, distilled)
    module = DistillationModule(str(distilled), str(dense), task_spec=data.task_spec, alpha_ce=0.0, alpha_kd=1.0,
                                learning_rate=1e-4, warmup_ratio=0.0)  # fmt: skip
    torch.testing.assert_close(module.model.classifier.weight, after.classifier.weight, atol=0, rtol=0)
    qat = QuantizationAwareTraining(output_dir=str(tmp_path / "int8"))
    fit(module, data, tmp_path / "qat", [qat])
    check_qat_export(module, qat, tmp_path / "int8", "Bert")


@needs_onnx
def test_cofi_then_qat(setup, tmp_path):
    root, dense, glue = setup
    student = save_tiny_model(tmp_path / "student", "ForSequenceClassification", **NO_DROPOUT)
    data = glue_data(glue, student)
    module = DistillationModule(str(student), str(dense), task_spec=data.task_spec, alpha_ce=0.0, alpha_kd=0.1,
                                learning_rate=1e-3)  # fmt: skip
    cofi = CoFi(0.5, prepruning_steps=1, warmup_steps=4, reg_learning_rate=0.2, sparsity_epsilon=0.05,
                latency_seconds=0, latency_seq_len=32, output_dir=str(tmp_path / "cofi"))  # fmt: skip
    fit(module, data, tmp_path / "cofi_run", [cofi], max_steps=-1, max_epochs=2, gradient_clip_val=1.0)
    config = transformers.AutoConfig.from_pretrained(tmp_path / "cofi", trust_remote_code=True)
    assert config.model_type == "kp_bert" and "auto_map" in json.loads((tmp_path / "cofi" / "config.json").read_text())

    data = glue_data(glue, tmp_path / "cofi")
    module = TaskModule(str(tmp_path / "cofi"), task_spec=data.task_spec, learning_rate=1e-3, warmup_ratio=0.0)
    qat = QuantizationAwareTraining(output_dir=str(tmp_path / "int8"))
    fit(module, data, tmp_path / "qat", [qat])
    check_qat_export(module, qat, tmp_path / "int8", "Bert")


def test_gradual_magnitude_pruning_of_a_kpruned_model_writes_reloadable_sparse_outputs(setup, kpruned, tmp_path):
    root, dense, glue = setup
    data = glue_data(glue, kpruned)
    module = TaskModule(str(kpruned), task_spec=data.task_spec, learning_rate=1e-3, warmup_ratio=0.0)
    gmp = GradualMagnitudePruning(0.5, ramp_end_step=4, frequency=2, output_dir=str(tmp_path / "gmp"))
    fit(module, data, tmp_path, [gmp], max_steps=6)
    out = tmp_path / "gmp"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    assert type(model).__name__ == "KPBertForSequenceClassification"
    assert model.config.kp_structure == json.loads((kpruned / "config.json").read_text())["kp_structure"]
    names = encoder_linear_names(model)
    assert names == list(gmp.masked.weights) and names
    for name in names:
        assert float((model.get_submodule(name).weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02), name
    inputs = batch_for(model)
    with torch.no_grad():
        expected = model(**inputs).logits
        torch.testing.assert_close(load_sparse(out / "sparse")(**inputs).logits, expected, atol=0, rtol=0)
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.5, abs=0.02)
    # The next step takes the output directory; the sparse copy alone is refused with the directory to use.
    assert torch.equal(load_task_model(str(out), data.task_spec).classifier.weight, model.classifier.weight)
    with pytest.raises(KPError, match="sparse storage copy"):
        load_task_model(str(out / "sparse"), data.task_spec)
    # Both directories load without kp_lightning.
    torch.save({"inputs": inputs, "expected": expected}, tmp_path / "io.pt")
    stdout = run_fresh_python(
        f"""
        import sys, torch, transformers
        io = torch.load("io.pt")
        model = transformers.AutoModelForSequenceClassification.from_pretrained({str(out)!r}, trust_remote_code=True)
        diff = (model.eval()(**io["inputs"]).logits - io["expected"]).abs().max().item()
        config = transformers.AutoConfig.from_pretrained({str(out / "sparse")!r}, trust_remote_code=True)
        print("result", diff, type(model).__name__, config.model_type, "kp_lightning" in sys.modules)
        """,
        tmp_path,
    )
    assert "result 0.0 KPBertForSequenceClassification kp_bert False" in stdout, stdout


@pytest.mark.parametrize(
    "combination",
    [
        pytest.param("qat_before_kprune", marks=needs_onnx),  # QuantizationAwareTraining is refused without [onnx]
        "cofi_with_gmp",
        pytest.param("cofi_with_qat", marks=needs_onnx),
    ],
)
def test_a_combination_that_cannot_work_is_refused_before_the_first_step(setup, tmp_path, combination):
    root, dense, glue = setup
    data = glue_data(glue, dense)
    outputs = [tmp_path / "int8", tmp_path / "gmp", tmp_path / "cofi"]
    counter = StepCounter()
    pruner = KPrune(0.5, num_tokens=200, batch_size=8, progress=False)
    cofi = CoFi(0.5, prepruning_steps=0, warmup_steps=2, latency_seconds=0, output_dir=str(outputs[2]))
    if combination == "cofi_with_gmp":
        other = GradualMagnitudePruning(0.5, ramp_end_step=2, frequency=1, output_dir=str(outputs[1]))
    else:
        other = QuantizationAwareTraining(output_dir=str(outputs[0]))
    if combination == "qat_before_kprune":
        module = TaskModule(str(dense), task_spec=data.task_spec)
        callbacks, message = [counter, other, pruner], "list KPrune before QuantizationAwareTraining"
    else:
        module = DistillationModule(str(dense), str(dense), task_spec=data.task_spec)
        callbacks, message = [counter, cofi, other], f"{type(other).__name__} and CoFi cannot share one fit run"
    with pytest.raises(ConfigError) as info:
        fit(module, data, tmp_path / "run", callbacks)
    assert message in str(info.value) and info.value.fix
    assert counter.steps == 0 and pruner.result is None  # not even K-prune's sample pass ran
    assert not any(path.exists() for path in outputs)
