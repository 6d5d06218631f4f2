"""Save the best model seen during training in Hugging Face format, ready for ``from_pretrained``."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch

from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.export import export_compact
from kp_lightning.errors import ConfigError


class SaveBestPretrained(pl.Callback):
    """After each validation, if ``monitor`` improved, write the model (and tokenizer) to ``dirpath``.

    The directory is replaced atomically, so it always holds one complete model. Stock models are written
    with ``save_pretrained``; compact kp_lightning models with the compact export (config, code, report).
    ``best_metric.json`` records the monitored value, epoch and step.

    Args:
        dirpath: Output directory (default ``<trainer.log_dir>/best_model``).
        monitor: Logged metric to track (default: the task's main metric, e.g. ``val/accuracy``).
        mode: ``"max"`` or ``"min"``.
    """

    def __init__(self, dirpath: str | None = None, monitor: str | None = None, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
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
        # A collective call under FSDP (gathers full weights); cheap elsewhere. Every rank must take part.
        state = trainer.strategy.lightning_module_state_dict()
        target = Path(self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "best_model")  # collective
        if trainer.is_global_zero:
            prefix = "model."
            model_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            record = {"monitor": name, "value": value, "epoch": trainer.current_epoch, "step": trainer.global_step}
            self.best_path = str(self._write(trainer, pl_module, target, model_state, record))
        trainer.strategy.barrier("SaveBestPretrained")

    def _write(self, trainer, pl_module, target: Path, state: dict[str, torch.Tensor], record: dict) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            model = pl_module.model
            if EncoderAdapter(model).is_compact:
                export_compact(model, staging / "model", tokenizer=tokenizer, overwrite=True)
                for item in (staging / "model").iterdir():
                    item.rename(staging / item.name)
                (staging / "model").rmdir()
            else:
                model.save_pretrained(staging, state_dict=state)
                if tokenizer is not None:
                    tokenizer.save_pretrained(staging)
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
