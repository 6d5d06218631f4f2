"""What the exporting callbacks share: the run's task fields and metrics for ``compression_report.json``, and the
optional push of a finished export to the Hugging Face Hub."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from kp_lightning import hub_push
from kp_lightning.data.evaluation import evaluate_model
from kp_lightning.modules.model_loading import accepted_inputs
from kp_lightning.quantization import is_fake_quantized, strip_fake_quant


def check_hub_target(repo_id: str | None) -> str | None:
    """``repo_id`` after :func:`kp_lightning.hub_push.check_push_target` (a callback's constructor calls it, so a
    bad id or offline mode is refused before any work); ``None`` when no push is asked for."""
    return None if repo_id is None else hub_push.check_push_target(repo_id)


def push_export(who: str, export_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a complete export (rank 0, after it is written); returns the repo URL.

    A failed upload re-raises with a note: the export stays complete on disk and can be pushed again.
    """
    rank_zero_info(f"{who}: pushing {export_dir} to the Hub as {repo_id}")
    try:
        url = hub_push.push_to_hub(export_dir, repo_id, private=private)
    except Exception as err:
        err.add_note(
            f"{who}: the export in {export_dir} is complete; push it again with "
            f"kp_lightning.hub_push.push_to_hub({str(export_dir)!r}, {repo_id!r})"
        )
        raise
    rank_zero_info(f"{who}: pushed {export_dir} to {url}")
    return url


def first_val_loader(trainer: pl.Trainer):
    """The datamodule's (first) validation dataloader over the whole split, or ``None``.

    In a distributed run the datamodule's loader reads this rank's share only; the exports score on rank 0 alone,
    so they get the same data without the distributed sampler (what one process scores).
    """
    datamodule = trainer.datamodule
    loader = datamodule.val_dataloader() if datamodule is not None else None
    if isinstance(loader, list | tuple):
        loader = loader[0] if loader else None
    if loader is not None and isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader = DataLoader(
            loader.dataset, batch_size=loader.batch_size, shuffle=False, collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
        )  # fmt: skip
    return loader


def metric_prefix(pl_module: pl.LightningModule) -> str:
    """The prefix of the task's main metric (``val/``, ``val/matched/`` for MNLI's first split)."""
    return pl_module.task.main_metric.rsplit("/", 1)[0] + "/"


def run_fields(pl_module: pl.LightningModule) -> dict:
    """The report keys every export of a training run has: base model, task, task kind and main metric name."""
    task = pl_module.task
    return {
        "base_model": getattr(pl_module.hparams, "model_name_or_path", None),
        "task": task.name,
        "task_kind": task.kind,
        "metric_name": task.main_metric,
    }


def without_fake_quant(model: nn.Module) -> nn.Module:
    """``model`` itself, or a copy without fake quantization when a ``QuantizationAwareTraining`` is attached
    (the float weights are what a sparse or dense export holds)."""
    if not any(is_fake_quantized(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    strip_fake_quant(model)
    return model


def score(model: nn.Module, pl_module: pl.LightningModule, loader, input_keys=None) -> dict[str, float]:
    """Validation metrics of ``model`` on ``loader``, named like the module logs them (``{}`` without a loader).

    Local to the calling process (the exports score on rank 0 while the other ranks wait): no metric sync, which
    would wait for ranks that never call it.
    """
    if loader is None:
        return {}
    keys = tuple(input_keys if input_keys is not None else pl_module.input_keys)
    return evaluate_model(model, loader, pl_module.task, keys, metric_prefix(pl_module), sync=False)


def teacher_score(pl_module: pl.LightningModule, loader) -> dict[str, float] | None:
    """The teacher's validation metrics when the module distils (``DistillationModule``), else ``None``."""
    teacher = getattr(pl_module, "teacher", None)
    if teacher is None or loader is None:
        return None
    return score(teacher, pl_module, loader, accepted_inputs(teacher))
