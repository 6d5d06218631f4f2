"""Quantization-aware training (fake quant of ``nn.Linear``) and int8 CPU inference."""

from .fake_quant import (
    DEFAULT_NO_OUTPUT_QUANT,
    ActivationObserver,
    FakeQuantizer,
    LinearQuantizer,
    default_quantized_linears,
    fake_quantize_weight,
    is_fake_quantized,
    strip_fake_quant,
    weight_qparams,
)
from .int8_linear import Int8Linear, int8_reference_model
from .int8_model import Int8OnnxModel, convert_to_int8, export_int8_onnx, load_int8, save_int8

__all__ = [
    "DEFAULT_NO_OUTPUT_QUANT",
    "ActivationObserver",
    "FakeQuantizer",
    "Int8Linear",
    "Int8OnnxModel",
    "LinearQuantizer",
    "convert_to_int8",
    "default_quantized_linears",
    "export_int8_onnx",
    "fake_quantize_weight",
    "int8_reference_model",
    "is_fake_quantized",
    "load_int8",
    "save_int8",
    "strip_fake_quant",
    "weight_qparams",
]
