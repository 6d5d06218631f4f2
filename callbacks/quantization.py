"""``QuantizationAwareTraining``: 8-bit fake quantization while training, then a real int8 model."""

from __future__ import annotations

import copy
import importlib.util
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info

from callbacks.composition import check_composition, check_model_unchanged
from kp_lightning.core.export import check_output_dir, staging_dir
from kp_lightning.data.evaluation import evaluate_model
from kp_lightning.errors import ConfigError
from kp_lightning.modules.task_module import TaskModule
from kp_lightning.quantization import (
    DEFAULT_NO_OUTPUT_QUANT,
    FakeQuantizer,
    convert_to_int8,
    default_quantized_linears,
    save_int8,
)
from kp_lightning.quantization.fake_quant import weight_qparams
from kp_lightning.sparsity.storage import check_storable, save_sparse

QUANT_REPORT = "quantization_report.json"
SPARSE_INT8_SUBDIR = "sparse_int8"


class QuantizationAwareTraining(pl.Callback):
    """Q8BERT-style QAT (pofa.md §5): every ``nn.Linear`` (encoder, pooler, head) is fake-quantized with 8-bit
    symmetric per-tensor weights and 8-bit asymmetric inputs whose ranges follow a moving average; outputs are
    requantized except where they feed a residual, the value projection and the heads. Embeddings and LayerNorms
    stay float; gradients pass straight through. Ranges only move in training mode, so validation uses frozen
    ones. Installed in ``setup`` (before checkpoint restore: the ranges are part of the checkpoint).

    The model may be stock or compact (a K-prune or CoFi export, ``KPBertFor...``): a compact model's removed
    sublayers have no Linear layer to quantize, its Q/K/V run the stock (unfused) attention under fake quantization,
    and its int8 directory carries the compact code. A model that could not be exported, CoFi in the same run, or
    a KPrune listed after this callback are refused in ``setup``, before any training.

    At the end of ``fit`` the model is converted to a real int8 model (an ONNX file with int8 weights and the
    learned scales, run by ONNX Runtime's integer kernels on CPU; ``load_int8`` reloads it) and written to
    ``output_dir`` with ``quantization_report.json`` (the int8 model's validation metrics next to the
    fake-quantized ones, their largest output difference, sizes) and, under ``sparse_int8/``, the bitmask + int8
    copy of the weights.

    Args:
        exclude: Substrings of Linear layer names to leave in float.
        no_output_quant: Substrings of Linear layer names whose output is not requantized (default: residual
            inputs, value projections and task heads of BERT, RoBERTa and DistilBERT).
        averaging_constant: Moving-average constant of the activation ranges.
        freeze_ranges_step: Optimizer step after which the ranges stop moving (``null``: never).
        output_dir: Where the int8 model goes (default ``<log dir>/int8_model``).
        overwrite: Replace a non-empty ``output_dir``.
        storage_others: How ``sparse_int8/`` stores the tensors that are not Linear weights (embeddings,
            LayerNorms, biases): ``float16`` (default), ``float32``, or ``int8`` (per-row, smallest, lossy).
    """

    def __init__(
        self,
        exclude: list[str] = [],
        no_output_quant: list[str] | None = None,
        averaging_constant: float = 0.01,
        freeze_ranges_step: int | None = None,
        output_dir: str | None = None,
        overwrite: bool = False,
        storage_others: str = "float16",
    ):
        if storage_others not in ("float32", "float16", "int8"):
            raise ConfigError(f"storage_others must be float32, float16 or int8, got {storage_others!r}")
        if not 0 < averaging_constant <= 1:
            raise ConfigError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.exclude = list(exclude)
        self.no_output_quant = tuple(DEFAULT_NO_OUTPUT_QUANT if no_output_quant is None else no_output_quant)
        self.averaging_constant = averaging_constant
        self.freeze_ranges_step = freeze_ranges_step
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.storage_others = storage_others
        self.names: list[str] = []
        self.quantizer: FakeQuantizer | None = None
        self.report: dict | None = None
        self.train_seconds = 0.0
        self._tick: float | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.quantizer is not None:
            return
        if not isinstance(pl_module, TaskModule):
            raise ConfigError(f"QuantizationAwareTraining works with kp_lightning's TaskModule, got {type(pl_module)}")
        if isinstance(trainer.strategy, FSDPStrategy):
            raise ConfigError("QuantizationAwareTraining runs on one device or under DDP, not FSDP.")
        missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"QuantizationAwareTraining ends with an ONNX Runtime int8 model but {', '.join(missing)} is not "
                "installed: pip install 'kp_lightning[onnx]'"
            )
        check_composition(self, trainer, "fake-quantized")
        check_storable(pl_module.model)  # the sparse int8 copy is written at the end: refuse an unstorable model now
        names = self.names = default_quantized_linears(pl_module.model, self.exclude)
        if not names:
            raise ConfigError(f"no Linear layer is left to quantize with exclude={self.exclude}")
        if trainer.is_global_zero:
            check_output_dir(self._output_dir(trainer), self.overwrite, hint="set the callback option overwrite: true")
        self.quantizer = FakeQuantizer(pl_module.model, names, self.no_output_quant, self.averaging_constant)
        # A submodule of the LightningModule: its ranges move with the model, are checkpointed, and DDP broadcasts
        # rank 0's ranges with the other buffers.
        pl_module.add_module("fake_quant", self.quantizer)
        self.quantizer.attach()
        rank_zero_info(f"QuantizationAwareTraining: {len(names)} Linear layers fake-quantized to 8 bits")

    def _output_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "int8_model")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_model_unchanged(self, self.quantizer.model, pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        self._tick = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.freeze_ranges_step is not None:
            self.quantizer.observers_enabled = trainer.global_step < self.freeze_ranges_step

    def on_train_end(self, trainer, pl_module) -> None:
        if self._tick is not None:
            self.train_seconds += time.perf_counter() - self._tick
            self._tick = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        loader = datamodule.val_dataloader() if datamodule is not None else None
        if isinstance(loader, list):
            loader = loader[0]
        if trainer.is_global_zero:
            self.report = self._export(trainer, pl_module, loader)
            rank_zero_info(f"QuantizationAwareTraining: int8 model written to {self._output_dir(trainer)}")
        trainer.strategy.barrier("QuantizationAwareTraining export")

    @torch.no_grad()
    def _export(self, trainer: pl.Trainer, pl_module: TaskModule, loader) -> dict:
        model = pl_module.model
        was_training = model.training
        model.eval()
        fake_model = copy.deepcopy(model).cpu()  # keeps the fake-quant forwards: the reference for the int8 model
        int8 = convert_to_int8(fake_model, self.quantizer)
        report = {
            "method": "QuantizationAwareTraining",
            "quantized_linears": len(self.quantizer.module_names),
            "train_seconds": round(self.train_seconds, 2),
            "steps": trainer.global_step,
        }
        if loader is not None:
            keys = pl_module.input_keys
            report["metrics_fake_quant"] = evaluate_model(fake_model, loader, pl_module.task, keys)
            report["metrics_int8"] = evaluate_model(int8, loader, pl_module.task, keys)
            batch = next(iter(loader))
            inputs = {k: v for k, v in batch.items() if k in keys and k != "labels" and isinstance(v, torch.Tensor)}
            diff = (_first_output(int8(**inputs)) - _first_output(fake_model(**inputs))).abs().max()
            report["max_abs_output_difference"] = float(diff)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        out = self._output_dir(trainer)
        scales = {f"{n}.weight": float(weight_qparams(fake_model.get_submodule(n).weight)[0]) for n in self.names}
        with staging_dir(out, overwrite=True) as staging:
            save_int8(int8, staging, tokenizer=tokenizer)
            report["sparse_int8_storage"] = save_sparse(
                fake_model, staging / SPARSE_INT8_SUBDIR, values="int8", others=self.storage_others,
                weight_scales=scales, min_sparsity=0.0, tokenizer=tokenizer,
            )  # fmt: skip
            (staging / QUANT_REPORT).write_text(json.dumps(report, indent=2))
        model.train(was_training)
        return report


def _first_output(outputs) -> torch.Tensor:
    for key in ("logits", "start_logits", "last_hidden_state"):
        value = getattr(outputs, key, None)
        if value is not None:
            return value
    raise KeyError("the model returned no logits")
