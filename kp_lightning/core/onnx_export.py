"""ONNX export of a (compact) encoder, checked against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kp_lightning.extras import require_onnx

from .adapter import example_input_shape
from .attention_implementation import eager_attention


class _TensorOutputs(nn.Module):
    """Wraps a transformers model so it returns a tuple of tensors (ONNX wants plain outputs)."""

    def __init__(self, model: nn.Module, output_names: list[str]):
        super().__init__()
        self.model = model
        self.output_names = output_names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return tuple(out[name] for name in self.output_names)


def output_names_of(model: nn.Module, seq_len: int = 8) -> list[str]:
    """Tensor outputs of a model's forward, in order (``logits``, ``start_logits``, ...)."""
    shape = example_input_shape(model, 1, seq_len)
    ids = torch.zeros(shape, dtype=torch.long, device=next(model.parameters()).device)
    with torch.no_grad():
        out = model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids))
    return [k for k, v in out.items() if isinstance(v, torch.Tensor)]


def example_ids_and_axes(model: nn.Module, batch_size: int, seq_len: int) -> tuple[torch.Tensor, dict]:
    """Random ``input_ids`` to trace ``model`` with, and their dynamic axes: batch and sequence, plus choices
    (``(batch, choices, seq)``) for a multiple-choice model."""
    ids = torch.randint(0, model.config.vocab_size, example_input_shape(model, batch_size, seq_len, num_choices=2))
    axes = {0: torch.export.Dim("batch", min=1, max=1024)}
    if ids.dim() == 3:
        axes[1] = torch.export.Dim("choices", min=1, max=64)
    axes[ids.dim() - 1] = torch.export.Dim("seq", min=2, max=model.config.max_position_embeddings - 2)
    return ids, axes


def export_onnx(model: nn.Module, path: str | Path, seq_len: int = 16, batch_size: int = 2) -> Path:
    """Export ``model`` to ONNX with dynamic batch and sequence axes (and choices, for a multiple-choice model:
    ``input_ids`` of shape ``(batch, choices, seq)``). The graph is traced with eager attention (the fastest
    graph for ONNX Runtime); the model keeps its own attention implementation.

    Args:
        model: Any supported encoder (stock or compact).
        path: Target ``.onnx`` file.
        seq_len: Sequence length of the example input used for tracing.
        batch_size: Batch size of the example input.

    Returns:
        The written path.
    """
    require_onnx("export_onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    names = output_names_of(model)
    wrapper = _TensorOutputs(model, names).eval()
    ids, axes = example_ids_and_axes(model, batch_size, seq_len)
    mask = torch.ones_like(ids)
    dims = {"input_ids": axes, "attention_mask": axes}
    with torch.no_grad(), eager_attention(model):
        program = torch.onnx.export(
            wrapper,
            (ids, mask),
            input_names=["input_ids", "attention_mask"],
            output_names=names,
            dynamic_shapes=dims,
            dynamo=True,
        )
    program.save(str(path))
    return path


def run_onnx(path: str | Path, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list:
    """Outputs of an exported model under onnxruntime (CPU)."""
    require_onnx("run_onnx")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    return session.run(None, feeds)
