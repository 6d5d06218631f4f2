"""Save the best model seen during training in Hugging Face format, ready for ``from_pretrained``."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn

from callbacks.export_info import check_hub_target, push_export
from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.export import REPORT_FILE, export_compact
from kp_lightning.core.model_card import write_model_card
from kp_lightning.core.report import compression_report
from kp_lightning.core.sharding import gathered_model, is_sharded
from kp_lightning.embedding.st_export import write_embedding_files
from kp_lightning.errors import ConfigError


class SaveBestPretrained(pl.Callback):
    """After each validation, if ``monitor`` improved, write the model (and tokenizer) to ``dirpath``.

    The directory is replaced atomically, so it always holds one complete model. Stock models are written
    with ``save_pretrained``; compact kp_lightning models with the compact export (config, code). Both get a
    ``compression_report.json`` (base model, task, the monitored metric as ``metric_name`` /
    ``metric_compressed``, parameter counts) and a ``README.md`` model card, so the directory is a complete,
    Hub-ready export (a sentence-embedding model's is also a sentence-transformers folder). ``best_metric.json``
    records the monitored value, epoch and step.

    Args:
        dirpath: Output directory (default ``<trainer.log_dir>/best_model``).
        monitor: Logged metric to track (default: the task's main metric, e.g. ``val/accuracy``).
        mode: ``"max"`` or ``"min"``.
        push_to_hub: Hub model repo (``namespace/name``) to upload the best model to at the end of ``fit`` (rank
            0). Checked when the callback is built: a bad id or ``HF_HUB_OFFLINE`` is refused before training.
        hub_private: Create the repo private (an existing repo keeps its visibility).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str | None = None,
        mode: str = "max",
        push_to_hub: str | None = None,
        hub_private: bool = False,
    ):
        if mode not in ("max", "min"):
            raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.push_to_hub = check_hub_target(push_to_hub)
        self.hub_private = hub_private
        self.best: float | None = None
        self.best_path: str | None = None

    def _monitor(self, pl_module) -> str:
        return self.monitor or pl_module.task.main_metric

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        name = self._monitor(pl_module)
        if name not in trainer.callback_metrics:
            raise KeyError(
                f"SaveBestPretrained monitors {name!r}, which was not logged; logged: "
                f"{sorted(trainer.callback_metrics)}."
            )
        value = float(trainer.callback_metrics[name])
        improved = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if not improved:
            return
        self.best = value
        # Collective calls under FSDP (gather full weights); cheap elsewhere. Every rank must take part.
        model = pl_module.model
        if is_sharded(model):  # FSDP2 (ModelParallelStrategy): an unsharded copy on rank 0, None elsewhere
            model = gathered_model(model)
            model_state = model.state_dict() if model is not None else None
        else:
            state = trainer.strategy.lightning_module_state_dict()
            prefix = "model."
            model_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        target = Path(self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "best_model")  # collective
        if trainer.is_global_zero:
            record = {"monitor": name, "value": value, "epoch": trainer.current_epoch, "step": trainer.global_step}
            self.best_path = str(self._write(trainer, pl_module, model, target, model_state, record))
        trainer.strategy.barrier("SaveBestPretrained")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.push_to_hub or not trainer.is_global_zero:
            return
        if self.best_path is None or not Path(self.best_path).is_dir():
            rank_zero_warn(f"SaveBestPretrained: no best model was written, so nothing is pushed to {self.push_to_hub}")
            return
        push_export("SaveBestPretrained", self.best_path, self.push_to_hub, self.hub_private)

    def _report_fields(self, pl_module, record: dict) -> dict:
        task = getattr(pl_module, "task", None)
        hparams = getattr(pl_module, "hparams", {})
        return {
            "base_model": hparams.get("model_name_or_path") if hasattr(hparams, "get") else None,
            "task": getattr(task, "name", None),
            "task_kind": getattr(task, "kind", None),
            "metric_name": record["monitor"],
            "metric_compressed": record["value"],
            "selected": f"best {record['monitor']} ({self.mode}) at epoch {record['epoch']}, step {record['step']}",
            "notes": ["metric_compressed: the monitored validation value of this checkpoint (best_metric.json)."],
        }

    def _write(self, trainer, pl_module, model, target: Path, state: dict[str, torch.Tensor], record: dict) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        fields = self._report_fields(pl_module, record)
        try:
            if EncoderAdapter(model).is_compact:
                export_compact(model, staging / "model", tokenizer=tokenizer, overwrite=True, **fields)
                for item in (staging / "model").iterdir():
                    item.rename(staging / item.name)
                (staging / "model").rmdir()
            else:
                model.save_pretrained(staging, state_dict=state)
                if tokenizer is not None:
                    tokenizer.save_pretrained(staging)
                write_embedding_files(staging, model)  # an embedding model: a sentence-transformers folder too
                if isinstance(trainer.strategy, FSDPStrategy):  # sharded weights: no model summary
                    report = {"export": "dense", **fields}
                else:
                    report = compression_report(model, export="dense", **fields)
                (staging / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str))
                write_model_card(staging, report, "dense")
            (staging / "best_metric.json").write_text(json.dumps(record, indent=2))
            if target.exists():
                old = target.with_name(target.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
                staging.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def state_dict(self) -> dict:
        return {"best": self.best, "best_path": self.best_path}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")
        self.best_path = state_dict.get("best_path")
