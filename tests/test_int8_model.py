"""The int8 model converted from a fake-quantized one: reference linears, ONNX Runtime kernels = fake quant on every
layout, save/load, refusals without the [onnx] extra, multiple choice and MLM heads."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from callbacks import QuantizationAwareTraining
from kp_lightning.errors import MissingExtraError
from kp_lightning.extras import missing_onnx_modules
from kp_lightning.quantization import (
    FakeQuantizer,
    Int8Linear,
    convert_to_int8,
    default_quantized_linears,
    fake_quantize_weight,
    int8_reference_model,
    is_fake_quantized,
    load_int8,
    save_int8,
    strip_fake_quant,
)
from kp_lightning.quantization.int8_model import Int8OnnxModel, cpu_has_vnni
from tests.helpers import ARCHS, needs_onnx, tiny_batch, tiny_model
from tests.quantization_fixtures import logits, quantized
from tests.text_fixtures import tiny_tokenizer


def test_int8_reference_linear_equals_fake_quant_linear():
    model, quantizer = quantized("bert")
    name = "bert.encoder.layer.1.intermediate.dense"
    linear = model.get_submodule(name)
    with torch.no_grad():
        linear.weight[:4] = 0.0  # pruned neurons stay exactly zero in int8
    qparams = quantizer.activation_qparams()[name]
    for unsigned in (False, True):
        int8 = Int8Linear(linear, qparams["input"], qparams["output"], unsigned_weight=unsigned)
        assert int8.weight_t.dtype == (torch.uint8 if unsigned else torch.int8)
        assert torch.equal(int8.int_weight()[:4], torch.zeros(4, linear.in_features, dtype=torch.int32))
        assert torch.equal(int8.int_weight().float() * int8.weight_scale, fake_quantize_weight(linear.weight))
        x = torch.randn(2, 7, linear.in_features)
        with torch.no_grad():
            assert torch.allclose(int8(x), linear(x), atol=1e-6)


def test_convert_needs_calibrated_observers():
    model = tiny_model("bert", "ForSequenceClassification")
    quantizer = FakeQuantizer(model, default_quantized_linears(model))
    with pytest.raises(RuntimeError, match="not initialized"):
        convert_to_int8(model, quantizer)


_INT8_CACHE: dict[str, tuple] = {}
WEIGHT_LAYOUT = {"roberta": False, "distilbert": True}  # unsigned_weights; None (the CPU chooses) elsewhere


def int8_pair(arch: str):
    """(fake-quant model, quantizer, int8 model), built once per architecture (an ONNX export takes seconds).

    RoBERTa uses int8 weights, DistilBERT uint8 (+128) ones, the others let the CPU choose the weight layout."""
    if arch not in _INT8_CACHE:
        model, quantizer = quantized(arch)
        unsigned = WEIGHT_LAYOUT.get(arch)
        _INT8_CACHE[arch] = model, quantizer, convert_to_int8(model, quantizer, unsigned_weights=unsigned)
    return _INT8_CACHE[arch]


ROBERTA_LAYOUT_COPIES = {"xlm-roberta", "camembert"}  # RoBERTa's layout entry under other names: its run covers them
INT8_ARCHS = ["bert"] + [
    pytest.param(arch, marks=pytest.mark.slow) for arch in ARCHS if arch not in {"bert", *ROBERTA_LAYOUT_COPIES}
]


@needs_onnx
@pytest.mark.parametrize("arch", INT8_ARCHS)
def test_int8_model_matches_fake_quant(arch):
    model, _, int8 = int8_pair(arch)
    batch = tiny_batch(seed=7, batch=4, seq=13)
    if arch == "bert":
        batch["token_type_ids"] = (torch.arange(13) > 6).long().expand(4, 13)
    fake, real = logits(model, batch), logits(int8, batch)
    float_model = copy.deepcopy(model)
    strip_fake_quant(float_model)
    # Same integer grids and qparams; the integer GEMMs are exact (on CPUs without VNNI the int8-weight layout could
    # saturate int16 pair sums, which does not happen for these seeds). What is left is float summation order in the
    # fp32 parts, which could flip a rare rounding tie. Logits are ~1e-2 and quantization moves them by ~1e-4, so 1e-5
    # is far below the quantization effect (observed: ~1e-9).
    assert (real - fake).abs().max() < 1e-5
    assert (logits(float_model, batch) - fake).abs().max() > 10 * (real - fake).abs().max()
    kernels = int8.kernel_counts()
    integer = sum(kernels.get(k, 0) for k in ("MatMulIntegerToFloat", "QLinearMatMul", "QGemm"))
    assert integer >= 3 * 4, kernels  # the encoder linears run in integer kernels (QLinearMatMul without a bias)
    expected_unsigned = WEIGHT_LAYOUT.get(arch, not cpu_has_vnni())
    assert int8.meta["unsigned_weights"] == expected_unsigned
    assert next(int8.parameters()).device.type == "cpu" and int8.config.model_type == model.config.model_type


@needs_onnx
def test_int8_save_load_round_trip(tmp_path):
    int8 = int8_pair("bert")[2]
    save_int8(int8, tmp_path / "int8", tokenizer=tiny_tokenizer())
    assert {"model.onnx", "config.json", "quantization.json", "tokenizer_config.json"} <= {
        p.name for p in (tmp_path / "int8").iterdir()
    }
    loaded = load_int8(tmp_path / "int8")
    batch = tiny_batch(seed=9)
    assert torch.equal(logits(loaded, batch), logits(int8, batch))
    assert torch.equal(logits(copy.deepcopy(loaded), batch), logits(int8, batch))
    with pytest.raises(FileNotFoundError):
        load_int8(tmp_path)


def test_int8_reference_model_replaces_only_listed_linears():
    model, quantizer = quantized("roberta")
    reference = int8_reference_model(model, quantizer)
    replaced = {n for n, m in reference.named_modules() if isinstance(m, Int8Linear)}
    assert replaced == set(quantizer.module_names)
    assert all(is_fake_quantized(model.get_submodule(n)) for n in quantizer.module_names)  # original untouched
    assert torch.allclose(logits(reference), logits(model), atol=1e-6)


@pytest.mark.parametrize("hidden", ["onnx", "onnxruntime", "onnxscript"])
def test_without_the_onnx_extra_qat_and_int8_are_refused_up_front(monkeypatch, hidden):
    """A None in sys.modules makes ``import name`` fail, as if the module were not installed."""
    monkeypatch.setitem(sys.modules, hidden, None)
    assert hidden in missing_onnx_modules()
    with pytest.raises(MissingExtraError, match=hidden) as info:
        QuantizationAwareTraining()  # at construction: before any data, model or training
    assert info.value.fix == "pip install 'kp_lightning[onnx]'" and isinstance(info.value, ImportError)
    model, quantizer = quantized("bert", calibrate=1)
    with pytest.raises(MissingExtraError, match=hidden) as info:
        convert_to_int8(model, quantizer)
    assert "kp_lightning[onnx]" in info.value.fix


def test_the_int8_runtime_without_onnxruntime_is_a_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match="onnxruntime") as info:
        Int8OnnxModel(b"", tiny_model("bert", "ForSequenceClassification").config, {"input_names": []})
    assert info.value.fix == "pip install 'kp_lightning[onnx]'"


@needs_onnx
def test_a_multiple_choice_int8_model_takes_batch_choices_seq():
    model = tiny_model("bert", "ForMultipleChoice")
    quantizer = FakeQuantizer(model, default_quantized_linears(model), attach=True)

    def choices_batch(seed: int, batch: int = 2, choices: int = 3, seq: int = 11) -> dict:
        flat = tiny_batch(seed=seed, batch=batch * choices, seq=seq)
        return {k: v.reshape(batch, choices, seq) for k, v in flat.items()}

    model.train()
    with torch.no_grad():
        for i in range(3):
            model(**choices_batch(10 + i))
    model.eval()
    int8 = convert_to_int8(model, quantizer)
    for choices in (2, 4):  # the choices axis is dynamic too
        batch = choices_batch(7, choices=choices)
        assert (logits(int8, batch) - logits(model, batch)).abs().max() < 1e-5


def test_a_decoder_tied_to_the_embeddings_is_not_quantized():
    model = tiny_model("bert", "ForMaskedLM")
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    names = default_quantized_linears(model)
    assert "cls.predictions.decoder" not in names and "cls.predictions.transform.dense" in names
    assert "bert.encoder.layer.0.attention.self.query" in names


@needs_onnx
def test_qat_of_a_masked_lm_writes_its_int8_model(tmp_path):
    import lightning.pytorch as pl

    from kp_lightning.datamodules import MLMDataModule
    from kp_lightning.modules import TaskModule
    from tests.text_fixtures import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "mlm", "ForMaskedLM")
    (tmp_path / "corpus.txt").write_text("the movie was good and the plot was dull\n\n" * 20)
    corpus = str(tmp_path / "corpus.txt")
    data = MLMDataModule(corpus, corpus, tokenizer=str(model_dir), max_length=32, batch_size=4, cache_dir=None)
    module = TaskModule(str(model_dir), task_spec=data.task_spec, learning_rate=1e-4)
    qat = QuantizationAwareTraining(output_dir=str(tmp_path / "int8"))
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[qat],
                         default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(module, datamodule=data)
    int8 = load_int8(tmp_path / "int8")
    batch = {k: v for k, v in next(iter(data.val_dataloader())).items() if k in ("input_ids", "attention_mask")}
    assert int8(**batch).logits.shape == module.model(**batch).logits.shape
