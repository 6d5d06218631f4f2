"""``QuantizationAwareTraining``: 8-bit fake quantization while training, then a real int8 model."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from callbacks.composition import check_composition, check_model_unchanged
from callbacks.export_info import check_hub_target, first_val_loader, push_export, run_fields, score, teacher_score
from callbacks.strategy_support import refuse_fsdp1
from kp_lightning.core.export import REPORT_FILE, check_output_dir, staging_dir
from kp_lightning.core.report import compression_report, model_summary, parameter_fields
from kp_lightning.core.sharding import gathered_model, is_sharded
from kp_lightning.errors import ConfigError
from kp_lightning.extras import require_onnx
from kp_lightning.modules.task_module import TaskModule
from kp_lightning.quantization import (
    DEFAULT_NO_OUTPUT_QUANT,
    FakeQuantizer,
    convert_to_int8,
    default_quantized_linears,
    save_int8,
    strip_fake_quant,
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

    Under DDP and FSDP2 (``ModelParallelStrategy``) the observers all-reduce every training batch's range, so the
    ranges are the same on every rank and equal one process's on the same global batch; under FSDP2 the hooks see
    the unsharded weights in the forward and the export converts the full model gathered on rank 0. FSDP1
    (``FSDPStrategy``) is refused.

    At the end of ``fit`` the model is converted to a real int8 model (an ONNX file with int8 weights and the
    learned scales, run by ONNX Runtime's integer kernels on CPU; ``load_int8`` reloads it) and written to
    ``output_dir`` with ``quantization_report.json`` (the int8 model's validation metrics next to the
    fake-quantized ones, their largest output difference, sizes), ``compression_report.json`` (what
    ``kp-lightning compare`` reads: ``metric_compressed`` is the int8 model's score, or the fake-quantized one's
    when the int8 model was not measured, as ``metric_compressed_source`` says; ``metric_dense`` the teacher's when
    the module distils, else the trained float weights' without fake quantization), a ``README.md`` model card
    and, under ``sparse_int8/``, the bitmask + int8 copy of the weights. The int8 export needs the ``[onnx]``
    extra (onnx, onnxruntime, onnxscript): without it the callback is refused when it is built.

    Args:
        exclude: Substrings of Linear layer names to leave in float.
        no_output_quant: Substrings of Linear layer names whose output is not requantized (default: every
            layout's residual inputs and value projections, and the task heads).
        averaging_constant: Moving-average constant of the activation ranges.
        freeze_ranges_step: Optimizer step after which the ranges stop moving (``null``: never).
        output_dir: Where the int8 model goes (default ``<log dir>/int8_model``).
        overwrite: Replace a non-empty ``output_dir``.
        storage_others: How ``sparse_int8/`` stores the tensors that are not Linear weights (embeddings,
            LayerNorms, biases): ``float16`` (default), ``float32``, or ``int8`` (per-row, smallest, lossy).
        push_to_hub: Hub model repo (``namespace/name``) to upload the finished int8 export to (rank 0, after it is
            written). Checked when the callback is built: a bad id or ``HF_HUB_OFFLINE`` is refused before training.
        hub_private: Create the repo private (an existing repo keeps its visibility).
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
        push_to_hub: str | None = None,
        hub_private: bool = False,
    ):
        require_onnx("QuantizationAwareTraining (it ends with an ONNX Runtime int8 model)")
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
        self.push_to_hub = check_hub_target(push_to_hub)
        self.hub_private = hub_private
        self.names: list[str] = []
        self.quantizer: FakeQuantizer | None = None
        self.report: dict | None = None  # quantization_report.json
        self.compression_report: dict | None = None  # compression_report.json
        self._reference: dict | None = None  # model_summary of the model before QAT (rank 0)
        self.train_seconds = 0.0
        self._tick: float | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.quantizer is not None:
            return
        if not isinstance(pl_module, TaskModule):
            raise ConfigError(f"QuantizationAwareTraining works with kp_lightning's TaskModule, got {type(pl_module)}")
        refuse_fsdp1(trainer, "QuantizationAwareTraining")
        check_composition(self, trainer, "fake-quantized")
        check_storable(pl_module.model)  # the sparse int8 copy is written at the end: refuse an unstorable model now
        names = self.names = default_quantized_linears(pl_module.model, self.exclude)
        if not names:
            raise ConfigError(f"no Linear layer is left to quantize with exclude={self.exclude}")
        out = self._output_dir(trainer)  # collective without output_dir (trainer.log_dir broadcasts)
        if trainer.is_global_zero:
            check_output_dir(out, self.overwrite, hint="set the callback option overwrite: true")
            self._reference = model_summary(pl_module.model)  # before fake quantization is attached
        self.quantizer = FakeQuantizer(pl_module.model, names, self.no_output_quant, self.averaging_constant)
        # A submodule of the LightningModule: its ranges move with the model and are checkpointed. In a distributed
        # run (DDP, FSDP2) every observation all-reduces the batch's range, so the ranges are identical on every
        # rank (DDP's buffer broadcast then changes nothing). Under FSDP2 the module shards the model after this
        # setup; the hooks stay on the same Linear modules and see their unsharded weights in the forward.
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
        # ranges from real tokens only (padding would widen them); batches without one mask are observed whole
        self.quantizer.token_mask = batch.get("attention_mask") if isinstance(batch, dict) else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.quantizer.token_mask = None

    def on_train_end(self, trainer, pl_module) -> None:
        if self._tick is not None:
            self.train_seconds += time.perf_counter() - self._tick
            self._tick = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = self._output_dir(trainer)  # on every rank: trainer.log_dir is collective
        model, quantizer = pl_module.model, self.quantizer
        if is_sharded(model):  # FSDP2: the full model on rank 0 (collective), fake-quantized with the same ranges
            model = gathered_model(model)
            quantizer = quantizer.rebind(model) if model is not None else None
        if trainer.is_global_zero:
            self.report = self._export(trainer, pl_module, model, quantizer, first_val_loader(trainer), out)
            rank_zero_info(f"QuantizationAwareTraining: int8 model written to {out}")
        trainer.strategy.barrier("QuantizationAwareTraining export")
        if self.push_to_hub and trainer.is_global_zero:
            push_export("QuantizationAwareTraining", out, self.push_to_hub, self.hub_private)

    @torch.no_grad()
    def _export(
        self, trainer: pl.Trainer, pl_module: TaskModule, model, quantizer: FakeQuantizer, loader, out: Path
    ) -> dict:
        """Rank 0: the int8 export of ``model`` (the module's model, or its gathered copy under FSDP2) observed
        by ``quantizer``."""
        was_training = model.training
        model.eval()
        fake_model = copy.deepcopy(model).cpu()  # keeps the fake-quant forwards: the reference for the int8 model
        int8 = convert_to_int8(fake_model, quantizer)
        float_model = copy.deepcopy(fake_model)
        strip_fake_quant(float_model)  # the trained float weights, for the report's summary (and metric_dense)
        report = {
            "method": "QuantizationAwareTraining",
            "quantized_linears": len(quantizer.module_names),
            "train_seconds": round(self.train_seconds, 2),
            "steps": trainer.global_step,
        }
        if loader is not None:
            report["metrics_fake_quant"] = score(fake_model, pl_module, loader)
            report["metrics_int8"] = score(int8, pl_module, loader)
            batch = next(iter(loader))
            keys = pl_module.input_keys
            inputs = {k: v for k, v in batch.items() if k in keys and k != "labels" and isinstance(v, torch.Tensor)}
            diff = (_first_output(int8(**inputs)) - _first_output(fake_model(**inputs))).abs().max()
            report["max_abs_output_difference"] = float(diff)
        fields = self._compression_fields(pl_module, loader, report, float_model)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        scales = {f"{n}.weight": float(weight_qparams(fake_model.get_submodule(n).weight)[0]) for n in self.names}
        with staging_dir(out, overwrite=True) as staging:
            report["sparse_int8_storage"] = save_sparse(
                fake_model, staging / SPARSE_INT8_SUBDIR, values="int8", others=self.storage_others,
                weight_scales=scales, min_sparsity=0.0, tokenizer=tokenizer,
            )  # fmt: skip
            fields["sparse_int8_storage"] = report["sparse_int8_storage"]
            save_int8(int8, staging, tokenizer=tokenizer, report=fields)  # with compression_report.json, README.md
            (staging / QUANT_REPORT).write_text(json.dumps(report, indent=2))
            self.compression_report = json.loads((staging / REPORT_FILE).read_text())
        model.train(was_training)
        return report

    def _compression_fields(self, pl_module: TaskModule, loader, report: dict, float_model) -> dict:
        """``compression_report.json``'s fields (before ``save_int8`` adds the file's own)."""
        fields = run_fields(pl_module)
        metric = fields["metric_name"]
        fake, real = report.get("metrics_fake_quant") or {}, report.get("metrics_int8") or {}
        if metric in real:
            compressed, source = real[metric], "int8"
        elif metric in fake:
            compressed, source = fake[metric], "fake_quant"
        else:
            compressed, source = None, None
        dense, dense_source = teacher_score(pl_module, loader), "teacher"
        if dense is None and loader is not None:
            dense, dense_source = score(float_model, pl_module, loader), "float_model"
        summary = compression_report(float_model, reference_summary=self._reference, export="int8")
        return {
            **summary,
            **parameter_fields(summary),
            **fields,
            "method": "QuantizationAwareTraining",
            "metric_dense": (dense or {}).get(metric),
            "metric_dense_source": dense_source if dense else None,
            "metric_compressed": compressed,
            "metric_compressed_source": source,
            "metrics_dense": dense,
            **{
                k: report[k] for k in ("metrics_fake_quant", "metrics_int8", "max_abs_output_difference") if k in report
            },
            "quantized_linears": report["quantized_linears"],
            "steps": report["steps"],
            "train_seconds": report["train_seconds"],
            "latency_speedup": None,
            "notes": [
                "metric_compressed: the int8 ONNX Runtime model's validation score (metric_compressed_source: int8), "
                "or the fake-quantized model's when the int8 one was not measured (fake_quant).",
                "metric_dense: the teacher's score when the module distils (metric_dense_source: teacher), else the "
                "trained float weights without fake quantization (float_model).",
                "parameters count the float model the int8 one was converted from; latency is not measured.",
            ],
        }


def _first_output(outputs) -> torch.Tensor:
    for key in ("logits", "start_logits", "last_hidden_state"):
        value = getattr(outputs, key, None)
        if value is not None:
            return value
    raise KeyError("the model returned no logits")
