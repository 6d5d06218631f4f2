"""``CoFi``: structured pruning while distilling (Xia et al., 2022), ending in a compact export."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks.cofi_export import export_result, score_teacher
from callbacks.export_info import check_hub_target, push_export
from callbacks.strategy_support import refuse_fsdp1
from kp_lightning.cofi import GRANULARITIES, CoFiGates, CoFiPruner, SparsitySchedule
from kp_lightning.cofi.cofi_run import best_state, check_student, kept_structure_metrics
from kp_lightning.core.adapter import EncoderAdapter, UnsupportedModelError
from kp_lightning.core.compaction import compact
from kp_lightning.core.export import check_output_dir
from kp_lightning.core.sharding import gathered_model
from kp_lightning.core.structure import EncoderStructure
from kp_lightning.core.structured_export import LatencyCheck
from kp_lightning.errors import ConfigError
from kp_lightning.modules.cofi_losses import CoFiSparsityLoss, DynamicLayerDistillation
from kp_lightning.modules.distillation_module import DistillationModule


class CoFi(pl.Callback):
    """Learn which heads, FFN neurons, hidden dims and whole sublayers to drop while distilling from a teacher.

    Use with ``DistillationModule`` (``train.py fit -c configs/cofi/<recipe>.yaml``). In ``setup`` (before the
    optimizer and checkpoint restore, so resuming works) it installs hard-concrete gates on the student, adds
    the Lagrangian term and the layer-distillation term, and gives gates and λ's their own optimizer groups.
    Pruning starts after ``prepruning`` steps of plain distillation; the target sparsity then ramps linearly
    over the warmup. Validations use the deterministic masks; once the expected sparsity is within
    ``sparsity_epsilon`` of the target, the best validated model is kept (compacted). At the end of ``fit`` it
    is written to ``output_dir`` with ``compression_report.json`` and ``structure.png``.

    Args:
        target_sparsity: Fraction of encoder-layer parameters to remove, in (0, 1).
        prepruning_epochs: Epochs of distillation before pruning starts (``prepruning_steps`` overrides).
        warmup_epochs: Epochs over which the target ramps from 0 (``warmup_steps`` overrides).
        prepruning_steps: Optimizer steps before pruning starts.
        warmup_steps: Optimizer steps of the target ramp.
        granularities: Gate groups to learn: attention, head, ffn, neuron, hidden.
        reg_learning_rate: Adam learning rate of the gates and (ascending) of the λ's.
        layer_distill_weight: Weight of the layer-distillation term (0 disables it).
        teacher_layers: 1-based teacher layers to distil (default: 4 evenly spaced).
        layer_mapping: ``ordered`` or ``unordered`` dynamic layer mapping.
        sparsity_epsilon: Keep the best model once ``ŝ >= target - epsilon``.
        freeze_embeddings: Keep embedding tables out of training, as the reference does.
        output_dir: Export directory (default ``<log dir>/cofi_export``).
        overwrite: Replace a non-empty ``output_dir``.
        latency_seconds: Seconds per side of the final dense-vs-compact latency check (0 skips it).
        latency_batch_size: Batch size of the latency check.
        latency_seq_len: Sequence length of the latency check and of the FLOPs in the report.
        seed: Seed of the gate initialisation and of the per-step gate noise.
        push_to_hub: Hub model repo (``namespace/name``) to upload the finished export to (rank 0, after it is
            written). Checked when the callback is built: a bad id or ``HF_HUB_OFFLINE`` is refused before training.
        hub_private: Create the repo private (an existing repo keeps its visibility).
    """

    def __init__(
        self,
        target_sparsity: float,
        prepruning_epochs: float = 1.0,
        warmup_epochs: float = 2.0,
        prepruning_steps: int | None = None,
        warmup_steps: int | None = None,
        granularities: list[str] = list(GRANULARITIES),
        reg_learning_rate: float = 0.01,
        layer_distill_weight: float = 0.9,
        teacher_layers: list[int] | None = None,
        layer_mapping: Literal["ordered", "unordered"] = "ordered",
        sparsity_epsilon: float = 0.01,
        freeze_embeddings: bool = True,
        output_dir: str | None = None,
        overwrite: bool = False,
        latency_seconds: float = 2.0,
        latency_batch_size: int = 32,
        latency_seq_len: int = 128,
        seed: int = 0,
        push_to_hub: str | None = None,
        hub_private: bool = False,
    ):
        if not 0 < target_sparsity < 1:
            raise ConfigError(
                "target_sparsity must be in (0, 1) (the fraction of encoder parameters to remove), "
                f"got {target_sparsity}",
                fix="a fraction such as 0.6 (60 % of the encoder's parameters removed); 0.95 for the paper's 95 %",
            )
        for name, value in (("prepruning_epochs", prepruning_epochs), ("warmup_epochs", warmup_epochs)):
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        for name, value in (("prepruning_steps", prepruning_steps), ("warmup_steps", warmup_steps)):
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if reg_learning_rate <= 0 or layer_distill_weight < 0 or not 0 <= sparsity_epsilon < 1:
            raise ConfigError("reg_learning_rate must be > 0, layer_distill_weight >= 0, sparsity_epsilon in [0, 1)")
        unknown = sorted(set(granularities) - set(GRANULARITIES))
        if unknown or not granularities:
            raise ConfigError(f"granularities must be a non-empty subset of {list(GRANULARITIES)}, got {granularities}")
        if layer_mapping not in ("ordered", "unordered"):
            raise ConfigError(f"layer_mapping must be 'ordered' or 'unordered', got {layer_mapping!r}")
        self.target_sparsity = target_sparsity
        self.prepruning_epochs, self.warmup_epochs = prepruning_epochs, warmup_epochs
        self.prepruning_steps, self.warmup_steps = prepruning_steps, warmup_steps
        self.granularities = list(granularities)
        self.reg_learning_rate = reg_learning_rate
        self.layer_distill_weight = layer_distill_weight
        self.teacher_layers = teacher_layers
        self.layer_mapping = layer_mapping
        self.sparsity_epsilon = sparsity_epsilon
        self.freeze_embeddings = freeze_embeddings
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.latency = LatencyCheck(latency_batch_size, latency_seq_len, latency_seconds)
        self.seed = seed
        self.push_to_hub = check_hub_target(push_to_hub)
        self.hub_private = hub_private
        self.pruner: CoFiPruner | None = None
        self.sparsity_loss: CoFiSparsityLoss | None = None
        self.layer_loss: DynamicLayerDistillation | None = None
        self.best: dict | None = None
        self.report: dict | None = None
        self.train_seconds = 0.0
        self.step_seconds: list[float] = []
        self._fit_tick: float | None = None
        self._step_tick: float | None = None
        self._restored_best: dict | None = None

    # ---- setup -----------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.pruner is not None:
            return
        self._check_inputs(trainer, pl_module)
        _let_ddp_skip_dropped_sublayers(trainer)
        model = pl_module.model
        schedule = SparsitySchedule(self.target_sparsity, 0, 0)  # step counts are resolved in on_fit_start
        gates = CoFiGates(EncoderAdapter(model).shape(), self.granularities, seed=self.seed)
        self.pruner = CoFiPruner(model, schedule, gates, seed=self.seed)
        self.sparsity_loss = CoFiSparsityLoss(self.pruner)
        pl_module.add_loss_term("cofi_sparsity", self.sparsity_loss)
        if self.layer_distill_weight > 0:
            self.layer_loss = DynamicLayerDistillation(
                self.teacher_layers, self.layer_mapping, self.layer_distill_weight
            )
            self.layer_loss.existing_layers = self.pruner.existing_layers  # built by the module's setup (bind)
            pl_module.add_loss_term("cofi_layer_distillation", self.layer_loss)
        lr = self.reg_learning_rate
        pl_module.add_param_group("cofi_gates", gates.learned_parameters(), lr=lr, scheduled=False, clip=False)
        pl_module.add_param_group(
            "cofi_lambdas", self.pruner.multipliers.parameters(), lr=lr, scheduled=False, maximize=True, clip=False
        )
        if self.freeze_embeddings:
            for table in EncoderAdapter(model).embedding_tables:
                table.requires_grad_(False)
        self.pruner.attach(model)

    def _check_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, DistillationModule):
            raise ConfigError(
                "CoFi distils from a teacher: use --model DistillationModule with teacher_name_or_path "
                f"(got {type(pl_module).__name__}); configs/cofi/ has complete recipes."
            )
        refuse_fsdp1(trainer, "CoFi")
        try:
            adapter = EncoderAdapter(pl_module.model)
        except UnsupportedModelError as err:
            raise ConfigError(f"CoFi cannot place gates on this model: {err}") from err
        if adapter.is_compact:
            raise ConfigError(
                "CoFi starts from a dense model; this student is already compacted. Use the dense model it came "
                "from, or fine-tune this one without CoFi (configs/cofi/finetune_compact.yaml)."
            )
        check_student(pl_module)
        out = self._output_dir(trainer)  # collective without output_dir (trainer.log_dir broadcasts)
        if trainer.is_global_zero:
            check_output_dir(out, self.overwrite, hint="set the CoFi option overwrite: true")

    def _output_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "cofi_export")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = int(trainer.estimated_stepping_batches)
        if math.isinf(trainer.num_training_batches):
            trainer.fit_loop.setup_data()  # max_steps runs do not load the training data to estimate the steps
        per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
        start = (
            self.prepruning_steps if self.prepruning_steps is not None else round(self.prepruning_epochs * per_epoch)
        )
        warmup = self.warmup_steps if self.warmup_steps is not None else round(self.warmup_epochs * per_epoch)
        if start + warmup > total:
            raise ConfigError(
                f"CoFi needs {start} pre-pruning + {warmup} warmup steps, but the run has only {total} optimizer "
                f"steps ({per_epoch} per epoch): shorten prepruning/warmup or train longer."
            )
        self.pruner.schedule = SparsitySchedule(self.target_sparsity, start, warmup)
        rank_zero_info(
            f"CoFi: {total} steps; distillation only for {start}, target ramps to {self.target_sparsity:.0%} over "
            f"{warmup}, then {total - start - warmup} steps at the target"
        )
        self._fit_tick = time.perf_counter()

    # ---- training --------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.pruner.schedule.start_step and step > 0 and self.pruner.step != step:
            _reset_optimizer_state(trainer, self.pruner)  # fresh Adam state for gates and λ's when pruning starts
        self.pruner.step = step
        self._step_tick = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._step_tick is not None and self.pruner.pruning:
            self.step_seconds.append(time.perf_counter() - self._step_tick)
        self.pruner.gates.constrain()
        stats = dict(self.sparsity_loss.last_stats)
        if self.pruner.pruning and trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            stats["actual_sparsity"] = self.pruner.actual_sparsity()
        if self.layer_loss is not None and self.layer_loss.last_mapping:
            for t, s in zip(self.layer_loss.teacher_layers, self.layer_loss.last_mapping, strict=True):
                stats[f"mapping_teacher{t}"] = float(s or 0)
        pl_module.log_dict({f"cofi/{k}": float(v) for k, v in stats.items()}, batch_size=batch["input_ids"].shape[0])

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.pruner is not None:
            self.pruner.step = trainer.global_step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruner is None or trainer.sanity_checking or not self.pruner.pruning:
            return
        expected = float(self.pruner.gates.expected_sparsity())
        structure = self.pruner.structure()
        metrics = {"cofi/val_expected_sparsity": expected, "cofi/val_actual_sparsity": self.pruner.actual_sparsity()}
        metrics.update(kept_structure_metrics(structure))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        metric = pl_module.task.main_metric
        if expected < self.target_sparsity - self.sparsity_epsilon or metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[metric])
        better = self.best is None or value > self.best["metric"]
        if trainer.strategy.broadcast(better):  # rank 0 decides: gathering the model (FSDP2) is collective
            small = self._materialize(pl_module)
            self.best = best_state(small, structure, value, metric, trainer.global_step, expected)
            rank_zero_info(f"CoFi: best {metric} {value:.4f} at {self.best['sparsity_actual']:.1%} sparsity")

    def _materialize(self, pl_module: pl.LightningModule):
        """The compact model of the current deterministic masks; under FSDP2 built from the gathered weights on
        rank 0 (``None`` on the other ranks). Collective when the model is sharded."""
        full = gathered_model(pl_module.model)
        return None if full is None else self.pruner.materialize(full)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._fit_tick is not None:
            self.train_seconds += time.perf_counter() - self._fit_tick
            self._fit_tick = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pruner.detach()
        if self.best is None:
            rank_zero_warn(
                f"CoFi never reached {self.target_sparsity:.0%} sparsity (within {self.sparsity_epsilon}) at a "
                "validation: exporting the final model. Train longer, shorten the warmup or validate more often."
            )
        dense_metrics = score_teacher(trainer, pl_module)  # collective under DDP
        out = self._output_dir(trainer)  # on every rank: trainer.log_dir is collective
        dense = gathered_model(pl_module.model)  # FSDP2: the full student on rank 0 (collective); else itself
        if trainer.is_global_zero:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.report = export_result(self, trainer, pl_module, dense, out, dense_metrics)
            rank_zero_info(f"CoFi: wrote the compact model to {out}")
        trainer.strategy.barrier("CoFi export")
        if self.push_to_hub and trainer.is_global_zero:
            push_export("CoFi", out, self.push_to_hub, self.hub_private)

    # ---- checkpointing ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        best = None
        if self.best is not None:
            best = {k: v for k, v in self.best.items() if k != "model"}
            if self.best["model"] is not None:  # None on the ranks > 0 of an FSDP2 run (rank 0 saves)
                best["state"] = {k: v.cpu() for k, v in self.best["model"].state_dict().items()}
        return {"best": best, "train_seconds": self.train_seconds, "step_seconds": list(self.step_seconds)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_seconds = state_dict.get("train_seconds", 0.0)
        self.step_seconds = list(state_dict.get("step_seconds", []))
        self._restored_best = state_dict.get("best")

    def on_train_start(self, trainer, pl_module) -> None:
        restored = self._restored_best
        if restored is not None and self.best is None:
            structure = EncoderStructure.from_dict(restored["structure"])
            full = gathered_model(pl_module.model)  # FSDP2: rank 0 only (collective)
            state = restored.pop("state")
            small = None
            if full is not None:
                small = compact(full, structure).cpu()
                small.load_state_dict(state)
            self.best = {**restored, "model": small}
        self._restored_best = None


def _let_ddp_skip_dropped_sublayers(trainer: pl.Trainer) -> None:
    """A sampled gate of 0 removes a sublayer for that step, so its weights get no gradient: DDP must look for
    unused parameters. Set before ``strategy.setup`` wraps the model."""
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy) or strategy._ddp_kwargs.get("find_unused_parameters"):
        return
    strategy._ddp_kwargs["find_unused_parameters"] = True
    rank_zero_info("CoFi: DDP now looks for unused parameters (sublayers whose sampled gate is 0 skip the step)")


def _reset_optimizer_state(trainer: pl.Trainer, pruner: CoFiPruner) -> None:
    owned = {id(p) for p in pruner.parameters()}
    for optimizer in trainer.optimizers:
        for param in list(optimizer.state):
            if id(param) in owned:
                optimizer.state[param] = {}
