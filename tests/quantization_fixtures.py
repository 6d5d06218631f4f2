"""Tiny fake-quantized classifiers shared by the QAT and int8 tests."""

from __future__ import annotations

import torch

from kp_lightning.quantization import FakeQuantizer, default_quantized_linears
from tests.helpers import tiny_batch, tiny_model


def quantized(arch: str = "bert", calibrate: int = 3, seed: int = 0):
    """A tiny classifier with fake quantization attached and ``calibrate`` training batches observed."""
    model = tiny_model(arch, "ForSequenceClassification", seed=seed)
    quantizer = FakeQuantizer(model, default_quantized_linears(model), attach=True)
    model.train()
    with torch.no_grad():
        for i in range(calibrate):
            model(**tiny_batch(seed=10 + i))
    return model.eval(), quantizer


def logits(model, batch=None) -> torch.Tensor:
    with torch.no_grad():
        return model(**(batch or tiny_batch())).logits
