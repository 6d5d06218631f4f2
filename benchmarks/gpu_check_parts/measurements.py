"""Measurements of the training parts: step times and losses, validation metrics, peak GPU memory."""

from __future__ import annotations

import statistics
import time

import lightning.pytorch as pl
import torch
from harness import sync


class StepTimer(pl.Callback):
    """Wall time of every training step (device synchronized) and the padded batch shapes."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.losses: list[float] = []
        self._tick = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(self.device)
        self._tick = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        self.seconds.append(time.perf_counter() - self._tick)
        self.tokens.append(int(batch["input_ids"].numel()))
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))

    def summary(self) -> dict:
        steady = self.seconds[1:] or self.seconds  # the first step compiles kernels and allocates
        median = statistics.median(steady)
        return {
            "steps": len(self.seconds),
            "first_step_s": self.seconds[0],
            "median_step_ms": median * 1e3,
            "padded_tokens_per_step": statistics.median(self.tokens),
            "tokens_per_s": statistics.median(self.tokens) / median,
            "loss_first": self.losses[0],
            "loss_last": self.losses[-1],
            "losses_finite": all(map(lambda v: v == v and abs(v) != float("inf"), self.losses)),
        }


def val_metrics(trainer: pl.Trainer) -> dict:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def gpu_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
