"""Shared machinery of the callbacks that train with sparse Linear weights (GMP and pattern lock)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from callbacks.composition import check_composition, check_model_unchanged
from callbacks.export_info import (
    check_hub_target,
    first_val_loader,
    push_export,
    run_fields,
    score,
    teacher_score,
    without_fake_quant,
)
from callbacks.strategy_support import refuse_fsdp1
from kp_lightning.core.export import check_output_dir
from kp_lightning.core.report import model_summary
from kp_lightning.core.sharding import gathered_model, is_sharded
from kp_lightning.errors import ConfigError
from kp_lightning.modules.task_module import TaskModule
from kp_lightning.sparsity import MaskedWeights, SparsityPattern, select_linear_names
from kp_lightning.sparsity.sparse_export import write_sparse_model
from kp_lightning.sparsity.storage import check_storable


class SparseWeightsCallback(pl.Callback):
    """Keeps pruned Linear weights at exactly zero through training and writes the sparse model at the end.

    Subclasses decide how the masks are made (``_prepare``/``on_train_batch_start``). Zeros stay hard: the
    gradients of pruned weights are zeroed before every optimizer step and the weights re-zeroed after it.
    Compact models (K-prune or CoFi exports) work like stock ones: their kept Linear layers are sparsified and
    both outputs carry the compact code (``trust_remote_code=True`` loads them without kp_lightning).

    Under FSDP2 (``ModelParallelStrategy``, the module shards the model after this ``setup``) the masks stay full
    and identical on every rank: they are chosen on the gathered weights, so they equal one process's, act on each
    rank's local shard, and are saved full in checkpoints; the export gathers the full model on rank 0.

    Args:
        include: Regexes of the Linear layers to sparsify (default: the encoder layers' Q, K, V, attention
            output and FFN Linear layers; embeddings, LayerNorms, pooler and heads are left dense).
        exclude: Regexes of Linear layers to leave dense.
        pattern: ``unstructured``, ``block:RxC`` (blocks along the input dimension, e.g. ``block:1x4``) or ``N:M``.
        allocation: ``uniform`` (same sparsity per weight) or ``global`` (one threshold; unstructured only).
        output_dir: Where the final sparse model goes (default ``<log dir>/sparse_model``).
        overwrite: Replace a non-empty ``output_dir``.
        storage_values: Value type of the compressed copy in ``<output_dir>/sparse``: ``float32`` (exact),
            ``float16``, or ``null`` to skip it.
        push_to_hub: Hub model repo (``namespace/name``) to upload the finished export to (rank 0, after it is
            written). Checked when the callback is built: a bad id or ``HF_HUB_OFFLINE`` is refused before training.
        hub_private: Create the repo private (an existing repo keeps its visibility).

    At the end of ``fit`` the output directory gets the model (``save_pretrained``), ``sparsity_report.json``,
    ``compression_report.json`` (what ``kp-lightning compare`` reads: the exported model's validation metric, the
    teacher's as ``metric_dense`` when the module distils, non-zero parameter counts before and after, storage
    sizes) and a ``README.md`` model card for the Hub.
    """

    log_prefix = "sparsity"

    def __init__(
        self,
        include: list[str] | None = None,
        exclude: list[str] = [],
        pattern: str = "unstructured",
        allocation: str = "uniform",
        output_dir: str | None = None,
        overwrite: bool = False,
        storage_values: str | None = "float32",
        push_to_hub: str | None = None,
        hub_private: bool = False,
    ):
        self.pattern = SparsityPattern.parse(pattern)
        if allocation not in ("uniform", "global"):
            raise ConfigError(f"allocation must be 'uniform' or 'global', got {allocation!r}")
        if allocation == "global" and self.pattern.kind != "unstructured":
            raise ConfigError("allocation 'global' works with the unstructured pattern only; use 'uniform'")
        if storage_values not in (None, "float32", "float16"):
            raise ConfigError(f"storage_values must be float32, float16 or null, got {storage_values!r}")
        self.include = include
        self.exclude = list(exclude)
        self.allocation = allocation
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.storage_values = storage_values
        self.push_to_hub = check_hub_target(push_to_hub)
        self.hub_private = hub_private
        self.masked: MaskedWeights | None = None
        self._model = None  # the model the masks were made for (set in setup)
        self.train_seconds = 0.0
        self._restored: dict | None = None
        self._tick: float | None = None
        self._reference: dict | None = None  # model_summary of the model before pruning (rank 0)

    # ---- setup -----------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.masked is not None:
            return
        name = type(self).__name__
        if not isinstance(pl_module, TaskModule):
            raise ConfigError(f"{name} works with kp_lightning's TaskModule/DistillationModule, got {type(pl_module)}")
        refuse_fsdp1(trainer, name)
        check_composition(self, trainer, "masked")
        model = pl_module.model
        if self.storage_values is not None:
            check_storable(model)  # the sparse copy is written at the end: refuse an unstorable model now
        names = select_linear_names(model, self.include, self.exclude)
        self.masked = MaskedWeights(model, names, self.pattern, self.allocation)
        self._model = model
        out = self._output_dir(trainer)  # collective without output_dir (trainer.log_dir broadcasts)
        if trainer.is_global_zero:
            check_output_dir(out, self.overwrite, hint=f"set the {name} option overwrite: true")
            self._reference = model_summary(model)  # before any mask (a resumed run sets up on the fresh model too)
        self._prepare(trainer, pl_module)
        if self._restored is not None:
            self._load(self._restored)
        rank_zero_info(f"{name}: {len(names)} Linear weights, pattern {self.pattern_spec}, {self.allocation}")

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Subclass hook, called in ``setup`` before checkpoint restore."""

    @property
    def pattern_spec(self) -> str:
        p = self.pattern
        return {"unstructured": "unstructured", "block": f"block:{p.rows}x{p.cols}"}.get(p.kind, f"{p.n}:{p.m}")

    def _output_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "sparse_model")

    # ---- training --------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_model_unchanged(self, self._model, pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        self._tick = time.perf_counter()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.masked.mask_gradients()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.masked.apply()
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            pl_module.log_dict(self._step_metrics(), batch_size=batch["input_ids"].shape[0])

    def _step_metrics(self) -> dict[str, float]:
        return {f"{self.log_prefix}/sparsity": self.masked.global_sparsity()}

    def log_per_layer(self, trainer: pl.Trainer) -> None:
        """Every weight's sparsity, straight to the loggers (called when masks change)."""
        metrics = {f"{self.log_prefix}/layer/{k}": v for k, v in self.masked.sparsity().items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._tick is not None:
            self.train_seconds += time.perf_counter() - self._tick
            self._tick = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.masked.apply()
        self.log_per_layer(trainer)
        out = self._output_dir(trainer)  # on every rank: trainer.log_dir is collective
        model, masked = pl_module.model, self.masked
        if is_sharded(model):  # FSDP2: the full model on rank 0 (collective), with the same (full) masks
            model = gathered_model(model)
            masked = masked.rebind(model) if model is not None else None
        if trainer.is_global_zero:
            tokenizer = getattr(trainer.datamodule, "tokenizer", None)
            report = write_sparse_model(
                model, out, masked, tokenizer, self._report(trainer), self.storage_values,
                report_fields=self._compression_fields(trainer, pl_module, model), reference_summary=self._reference,
            )  # fmt: skip
            rank_zero_info(f"{type(self).__name__}: {report['sparsity']:.1%} sparse model written to {out}")
        trainer.strategy.barrier(type(self).__name__)
        if self.push_to_hub and trainer.is_global_zero:
            push_export(type(self).__name__, out, self.push_to_hub, self.hub_private)

    def _compression_fields(self, trainer: pl.Trainer, pl_module: TaskModule, model=None) -> dict:
        """``compression_report.json``'s run fields: the exported model's (``model``, default the module's) and
        the teacher's validation metrics."""
        fields = run_fields(pl_module)
        loader = first_val_loader(trainer)
        model = pl_module.model if model is None else model
        compressed = score(without_fake_quant(model), pl_module, loader)
        dense = teacher_score(pl_module, loader)
        metric = fields["metric_name"]
        return {
            **fields,
            "metric_dense": dense.get(metric) if dense else None,
            "metric_dense_source": "teacher" if dense else None,
            "metric_compressed": compressed.get(metric),
            "metrics_dense": dense,
            "metrics_compressed": compressed,
            "latency_speedup": None,
            "notes": [
                "metric_compressed: the exported sparse model on the validation data at the end of fit; "
                "metric_dense: the teacher's score when the module distils, else null (not measured).",
                "no latency_speedup: the zeros are stored in dense tensors and run with dense kernels.",
            ],
        }

    def _report(self, trainer: pl.Trainer) -> dict:
        return {
            "method": type(self).__name__,
            "pattern": self.pattern_spec,
            "allocation": self.allocation,
            "steps": trainer.global_step,
            "train_seconds": round(self.train_seconds, 2),
        }

    # ---- checkpointing ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"masks": self.masked.state_dict() if self.masked else {}, "train_seconds": self.train_seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.masked is None:
            self._restored = state_dict
        else:
            self._load(state_dict)

    def _load(self, state: dict) -> None:
        self.train_seconds = state.get("train_seconds", 0.0)
        if state.get("masks"):
            self.masked.load_state_dict(state["masks"])
        self._restored = None
