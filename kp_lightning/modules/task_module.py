"""LightningModule that fine-tunes and evaluates one encoder on one task."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn

from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.sharding import (
    average_replicated_gradients,
    clip_mixed_grad_norm_,
    replicated_parameters,
    shard_encoder,
)
from kp_lightning.data.task_kinds import task_kind
from kp_lightning.data.task_metrics import TaskMetrics
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.embedding.pooling import add_sentence_embedding
from kp_lightning.errors import ConfigError
from kp_lightning.modules.extensions import ExtensionRegistry, LossTerm, ParamGroup, StepContext
from kp_lightning.modules.model_loading import accepted_inputs, load_task_model
from kp_lightning.modules.optimization import build_param_groups, linear_warmup_decay


class TaskModule(pl.LightningModule):
    """Fine-tune or evaluate ``AutoModelFor{SequenceClassification,QuestionAnswering,MaskedLM,TokenClassification,
    MultipleChoice}`` (the task kind's entry in :mod:`kp_lightning.data.task_kinds`).

    Args:
        model_name_or_path: Hub name, local directory or compressed export (``kp_lightning`` compact models load too).
        task_spec: Task description; ``train.py`` links it from the data module's ``task_spec``.
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup_ratio: Fraction of the optimizer steps used for linear warmup (ignored if ``warmup_steps`` is set).
        warmup_steps: Number of warmup steps.
        adam_epsilon: AdamW epsilon.
        lr_schedule: ``"linear"`` (warmup then linear decay to 0) or ``"constant"`` (warmup then constant).
        ignore_mismatched_head: Start from a new head when the checkpoint's head has another size.
        pooling: Embedding tasks: pooling mode (``mean``, ``cls``, ``max``, ``mean_sqrt_len``) replacing the
            model's own (a sentence-transformers folder's, else ``mean``).
        normalize: Embedding tasks: L2-normalize the sentence embedding (default: the model's own setting).
        loss_terms: Extra loss terms (``LossTerm`` objects), e.g. configured in YAML.
    """

    def __init__(
        self,
        model_name_or_path: str,
        task_spec: TaskSpec | None = None,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        warmup_steps: int | None = None,
        adam_epsilon: float = 1e-8,
        lr_schedule: str = "linear",
        ignore_mismatched_head: bool = False,
        pooling: str | None = None,
        normalize: bool | None = None,
        loss_terms: dict[str, LossTerm] | None = None,
    ):
        super().__init__()
        if task_spec is None:
            raise ConfigError(
                "No task given: train.py links it from the data module; in Python pass task_spec=datamodule.task_spec."
            )
        task = TaskSpec(**task_spec) if isinstance(task_spec, dict) else task_spec
        if learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {learning_rate}.")
        if lr_schedule not in ("linear", "constant"):
            raise ConfigError(f"lr_schedule must be 'linear' or 'constant', got {lr_schedule!r}.")
        if not 0 <= warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}.")
        self.save_hyperparameters(ignore=["loss_terms"])
        self.hparams["task_spec"] = task.to_dict()  # plain data, so checkpoints load with weights_only=True
        self.task = task
        self.model = load_task_model(model_name_or_path, task, ignore_mismatched_head, pooling, normalize).train()
        self.input_keys = accepted_inputs(self.model)
        self.extensions = ExtensionRegistry()
        self._data_parallel_group = None  # set when configure_model shards the model (FSDP2)
        for name, term in (loss_terms or {}).items():
            self.extensions.add_loss_term(name, term)
        self.val_metrics = nn.ModuleList(TaskMetrics(task) for _ in task.eval_splits)
        self.test_metrics = nn.ModuleList(TaskMetrics(task) for _ in task.eval_splits)
        self.val_loss = nn.ModuleList(torchmetrics.MeanMetric() for _ in task.eval_splits)
        self.test_loss = nn.ModuleList(torchmetrics.MeanMetric() for _ in task.eval_splits)

    # ---- extension points for callbacks --------------------------------------------------------------
    def add_loss_term(self, name: str, term: LossTerm) -> None:
        """Add ``term`` (weighted) to the training loss; call before the optimizer is configured."""
        self.extensions.add_loss_term(name, term)

    def add_param_group(
        self,
        name: str,
        params,
        lr: float,
        weight_decay: float = 0.0,
        scheduled: bool = True,
        maximize: bool = False,
        clip: bool = True,
    ) -> None:
        """Give ``params`` their own optimizer group (own lr, optionally unscheduled, maximized or unclipped)."""
        self.extensions.add_param_group(ParamGroup(name, list(params), lr, weight_decay, scheduled, maximize, clip))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip as configured, leaving out groups registered with ``clip=False`` (e.g. CoFi gates and λ's).
        Under FSDP2 the norm is taken over sharded and replicated gradients together."""
        sharded = self._data_parallel_group is not None
        plain = all(g.get("clip_gradients", True) for g in optimizer.param_groups)
        if gradient_clip_val is None or (plain and not sharded):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for g in optimizer.param_groups if g.get("clip_gradients", True) for p in g["params"]]
        if sharded and gradient_clip_algorithm != "value":
            clip_mixed_grad_norm_(params, gradient_clip_val, self._data_parallel_group)
        elif gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    @property
    def adapter(self) -> EncoderAdapter:
        """Structural view of the encoder for pruning callbacks."""
        return EncoderAdapter(self.model)

    def setup(self, stage: str) -> None:
        for term in self.extensions.loss_terms.values():
            term.bind(self)

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (FSDP2): ``fully_shard`` each encoder layer and the whole model over
        the data-parallel mesh, once (the hook runs for every ``fit``/``validate``/``test`` call, after the
        callbacks' ``setup``, so a pruning callback has already replaced the model). Elsewhere: nothing."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None:
            return
        if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
            raise ConfigError(
                f"tensor parallelism (tensor_parallel_size={mesh['tensor_parallel'].size()}) is not supported; "
                "kp_lightning shards encoders with FSDP2 only",
                fix="set trainer.strategy.init_args.tensor_parallel_size: 1 and data_parallel_size to the number "
                "of processes (configs/trainer/fsdp2.yaml)",
            )
        dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        shard_encoder(self.model, dp_mesh)
        self._data_parallel_group = dp_mesh.get_group()

    def on_before_optimizer_step(self, optimizer) -> None:
        """Under FSDP2: average the gradients of the parameters outside the sharded model (CoFi gates and λ's,
        the layer-distillation transform) over the ranks, as DDP does for every parameter."""
        if self._data_parallel_group is not None:
            average_replicated_gradients(replicated_parameters(self), self._data_parallel_group)

    def on_fit_start(self) -> None:
        self.model.train()  # from_pretrained and earlier evaluation leave the model in eval mode

    # ---- steps ----------------------------------------------------------------------------------------
    def forward(self, batch: dict, output_hidden_states: bool = False):
        inputs = {key: batch[key] for key in self.input_keys if key in batch}
        outputs = self.model(**inputs, output_hidden_states=output_hidden_states)
        if task_kind(self.task.kind).pooled:
            add_sentence_embedding(self.model, outputs, inputs.get("attention_mask"))
        return outputs

    def task_loss(self, outputs, batch: dict) -> torch.Tensor:
        if getattr(outputs, "loss", None) is None:
            raise ConfigError(f"The {self.task.name} training batch has no labels, so there is no task loss.")
        return outputs.loss

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named loss parts of one training step; ``loss`` is their sum."""
        outputs = self(batch, output_hidden_states=self.extensions.needs_hidden_states)
        parts = {"task": self.task_loss(outputs, batch)}
        parts.update(self.extensions.losses(StepContext(self, batch, outputs)))
        return parts

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        parts = self.training_losses(batch)
        loss = torch.stack(list(parts.values())).sum()
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if len(parts) > 1:
            self.log_dict({f"train/loss_{k}": v.detach() for k, v in parts.items()}, batch_size=size)
        return loss

    def _eval_step(self, batch: dict, dataloader_idx: int, metrics: nn.ModuleList, losses: nn.ModuleList):
        outputs = self(batch)
        metrics[dataloader_idx].update(outputs, batch)
        if getattr(outputs, "loss", None) is not None:
            losses[dataloader_idx].update(outputs.loss.detach(), weight=batch["input_ids"].shape[0])

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, self.val_metrics, self.val_loss)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, self.test_metrics, self.test_loss)

    def _log_eval(self, stage: str, metrics: nn.ModuleList, losses: nn.ModuleList) -> dict[str, float]:
        values = {}
        for split, split_metrics, split_loss in zip(self.task.eval_splits, metrics, losses, strict=True):
            prefix = f"{stage}/" if len(self.task.eval_splits) == 1 else f"{stage}/{split}/"
            for name, value in split_metrics.compute().items():
                values[prefix + name] = torch.as_tensor(value, dtype=torch.float32, device=self.device)
            if task_kind(self.task.kind).eval_loss:
                values[prefix + "loss"] = split_loss.compute().float()
            split_metrics.reset()
            split_loss.reset()
        self.log_dict(values, prog_bar=True, sync_dist=True)
        return values

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val", self.val_metrics, self.val_loss)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_metrics, self.test_loss)

    # ---- optimization ---------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        groups = build_param_groups(self, hp.weight_decay, self.extensions.param_groups)
        optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, eps=hp.adam_epsilon)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = hp.warmup_steps if hp.warmup_steps is not None else int(hp.warmup_ratio * total)
        self.lr_schedule_steps = (warmup, total)  # read by callbacks that reshape the schedule (LR rewinding)
        scheduler = linear_warmup_decay(optimizer, warmup, total, decay=hp.lr_schedule == "linear")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
