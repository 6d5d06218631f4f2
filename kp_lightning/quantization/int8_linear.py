"""Frozen int8 linears: the torch reference of the int8 model and the operators its ONNX export is made of.

:class:`Int8Linear` stores the int8 weight grid the fake quantization used and the frozen activation qparams, and
computes ``y = Q(Q(x) @ W_q) `` in float with two custom operators (``kp_lightning::quantize_dequantize_uint8`` and
``kp_lightning::dequantize_weight``). Their ONNX translations are ``QuantizeLinear -> DequantizeLinear`` pairs and a
``DequantizeLinear`` on the int8 initializer, which ONNX Runtime fuses into integer kernels
(``MatMulIntegerToFloat``, ``QGemm``, ``QLinearMatMul``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .fake_quant import (
    ACT_QMAX,
    ACT_QMIN,
    WEIGHT_QMAX,
    WEIGHT_QMIN,
    FakeQuantizer,
    fake_quantize_weight,
    strip_fake_quant,
    weight_qparams,
)

UNSIGNED_WEIGHT_ZERO_POINT = 128  # int8 grid stored as uint8 (``q + 128``) to get ORT's non-saturating U8U8 GEMM


@torch.library.custom_op("kp_lightning::quantize_dequantize_uint8", mutates_args=())
def quantize_dequantize_uint8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``x`` rounded to the uint8 grid ``(q - zero_point) * scale``, q in [0, 255]."""
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, ACT_QMIN, ACT_QMAX)


@quantize_dequantize_uint8.register_fake
def _(x, scale, zero_point):
    return torch.empty_like(x)


@torch.library.custom_op("kp_lightning::dequantize_weight", mutates_args=())
def dequantize_weight(weight: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Float value ``(weight - zero_point) * scale`` of an int8 (zero point 0) or uint8 (zero point 128) tensor."""
    return (weight.to(torch.int32) - zero_point).float() * scale


@dequantize_weight.register_fake
def _(weight, scale, zero_point):
    return torch.empty(weight.shape, dtype=torch.float32, device=weight.device)


class Int8Linear(nn.Module):
    """A frozen fake-quantized ``nn.Linear``: int8 weight grid, static uint8 input (and output) quantization.

    Attributes:
        weight_t: The integer weight, transposed (``[in_features, out_features]``), int8 or uint8 (+128).
        bias: Float bias or ``None``.
        weight_scale: Scale of the symmetric weight grid.
        input_qparams: ``(scale, zero_point)`` of the uint8 input.
        output_qparams: ``(scale, zero_point)`` of the requantized output, ``None`` for a float output.
    """

    def __init__(self, linear: nn.Linear, input_qparams, output_qparams=None, unsigned_weight: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float().cpu()
        scale = weight_qparams(weight)[0]
        grid = torch.round(fake_quantize_weight(weight) / scale).clamp(WEIGHT_QMIN, WEIGHT_QMAX)  # exact integers
        self.weight_zero_point = UNSIGNED_WEIGHT_ZERO_POINT if unsigned_weight else 0
        dtype = torch.uint8 if unsigned_weight else torch.int8
        self.register_buffer("weight_t", (grid + self.weight_zero_point).to(dtype).t().contiguous())
        bias = None if linear.bias is None else linear.bias.detach().float().cpu().clone()
        self.register_buffer("bias", bias)
        self.weight_scale = float(scale)
        self.input_qparams = (float(input_qparams[0]), int(input_qparams[1]))
        self.output_qparams = None if output_qparams is None else (float(output_qparams[0]), int(output_qparams[1]))

    def int_weight(self) -> torch.Tensor:
        """The weight grid as integers in [-128, 127], ``[out_features, in_features]``."""
        return (self.weight_t.to(torch.int32) - self.weight_zero_point).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = quantize_dequantize_uint8(x.float(), *self.input_qparams)
        y = torch.matmul(x, dequantize_weight(self.weight_t, self.weight_scale, self.weight_zero_point))
        if self.bias is not None:
            y = y + self.bias
        if self.output_qparams is not None:
            y = quantize_dequantize_uint8(y, *self.output_qparams)
        return y.to(dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"weight_scale={self.weight_scale:.3g}, input={self.input_qparams}, output={self.output_qparams}"
        )


def int8_reference_model(model: nn.Module, quantizer: FakeQuantizer, unsigned_weights: bool = False) -> nn.Module:
    """An eval-mode CPU copy of ``model`` whose quantized linears are :class:`Int8Linear` (float emulation).

    Raises:
        RuntimeError: an activation observer has never been updated (run training or calibration first).
    """
    qparams = quantizer.activation_qparams()
    missing = [n for n, q in qparams.items() if q["input"] is None or (q["output_quantized"] and q["output"] is None)]
    if missing:
        raise RuntimeError(f"activation ranges are not initialized for {missing[:3]}...: train or calibrate first")
    int8 = copy.deepcopy(model).cpu().eval()
    strip_fake_quant(int8)
    for name, q in qparams.items():
        parent, _, child = name.rpartition(".")
        linear = int8.get_submodule(name)
        setattr(int8.get_submodule(parent), child, Int8Linear(linear, q["input"], q["output"], unsigned_weights))
    return int8


# -- ONNX translations (onnxscript is only needed for the export) ---------------------------------------------------
def _constant(value, dtype):
    from onnxscript import ir
    from onnxscript import opset18 as op

    return op.Constant(value=ir.tensor(np.array(value, dtype=dtype)))


def _quantize_dequantize_uint8_onnx(x, scale: float, zero_point: int):
    from onnxscript import opset18 as op

    s, zp = _constant(scale, np.float32), _constant(zero_point, np.uint8)
    return op.DequantizeLinear(op.QuantizeLinear(x, s, zp), s, zp)


def _dequantize_weight_onnx(weight, scale: float, zero_point: int):
    from onnxscript import opset18 as op

    dtype = np.uint8 if zero_point == UNSIGNED_WEIGHT_ZERO_POINT else np.int8
    return op.DequantizeLinear(weight, _constant(scale, np.float32), _constant(zero_point, dtype))


def onnx_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export`` of a model with :class:`Int8Linear` modules."""
    return {
        torch.ops.kp_lightning.quantize_dequantize_uint8.default: _quantize_dequantize_uint8_onnx,
        torch.ops.kp_lightning.dequantize_weight.default: _dequantize_weight_onnx,
    }
