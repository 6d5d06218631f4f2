"""Latency of a model over a grid of batch size × sequence length, with ``torch.utils.benchmark``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils import benchmark

from .adapter import example_input_shape


def environment(model: nn.Module) -> dict:
    """Device, dtype and thread count a measurement ran with."""
    param = next(model.parameters())
    return {
        "device": str(param.device),
        "device_name": torch.cuda.get_device_name(param.device) if param.device.type == "cuda" else "cpu",
        "dtype": str(param.dtype).removeprefix("torch."),
        "num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    batch_sizes: Sequence[int] = (1, 32),
    seq_lens: Sequence[int] = (128,),
    vocab_size: int | None = None,
    min_run_time: float = 1.0,
) -> dict:
    """Median forward latency for each (batch size, sequence length).

    Args:
        model: Any model taking ``input_ids`` and ``attention_mask`` (a multiple-choice model gets one choice
            per example: ``batch_size`` sequences).
        batch_sizes: Batch sizes of the grid.
        seq_lens: Sequence lengths of the grid.
        vocab_size: Token ids are drawn below this (default: the config's ``vocab_size``).
        min_run_time: Seconds ``blocked_autorange`` measures each point for.

    Returns:
        ``{"environment": {...}, "results": [{"batch_size", "seq_len", "median_ms", "iqr_ms", "runs"}]}``.
    """
    device = next(model.parameters()).device
    vocab = vocab_size or model.config.vocab_size
    was_training = model.training
    model.eval()
    results = []
    for batch in batch_sizes:
        for seq in seq_lens:
            ids = torch.randint(0, vocab, example_input_shape(model, batch, seq), device=device)
            mask = torch.ones_like(ids)
            model(input_ids=ids, attention_mask=mask)  # warm-up
            timer = benchmark.Timer(
                stmt="model(input_ids=ids, attention_mask=mask)",
                globals={"model": model, "ids": ids, "mask": mask},
                num_threads=torch.get_num_threads(),
            )
            m = timer.blocked_autorange(min_run_time=min_run_time)
            results.append(
                {
                    "batch_size": batch,
                    "seq_len": seq,
                    "median_ms": m.median * 1e3,
                    "iqr_ms": m.iqr * 1e3,
                    "runs": len(m.times),
                }
            )
    model.train(was_training)
    return {"environment": environment(model), "results": results}
