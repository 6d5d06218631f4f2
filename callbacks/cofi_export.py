"""The end of a CoFi run: score the teacher, time dense vs compact, write the export and its report."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from torch import nn

from kp_lightning.cofi.model_size import structure_sparsity
from kp_lightning.core.compaction import original_structure
from kp_lightning.core.structured_export import export_structured, latency_speedup, structure_fields
from kp_lightning.data.evaluation import evaluate_model
from kp_lightning.modules.model_loading import accepted_inputs


def score_teacher(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
    """The teacher's validation metrics (every rank scores its shard; the metrics sync across ranks)."""
    loaders = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
    if loaders is None:
        return {}
    loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
    teacher, prefix = pl_module.teacher, pl_module.task.main_metric.rsplit("/", 1)[0] + "/"
    return evaluate_model(teacher, loader, pl_module.task, accepted_inputs(teacher), prefix)


def export_result(
    cofi,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    dense: nn.Module,
    out_dir: Path,
    dense_metrics: dict[str, float],
) -> dict:
    """Export the best kept model (or the final one) with ``compression_report.json``; returns the report.

    ``dense`` is the (unsharded) student with its gates' masks detached: the latency baseline, and the model to
    materialize when no validation reached the target."""
    dense = dense.eval()
    metric = pl_module.task.main_metric
    if cofi.best is not None:
        small, value, selected = cofi.best["model"], cofi.best["metric"], f"best at step {cofi.best['step']}"
        expected = cofi.best["sparsity_expected"]
    else:
        small = cofi.pruner.materialize(dense).eval()
        value = trainer.callback_metrics.get(metric)
        value = float(value) if value is not None else None
        selected = "final model (target never reached at a validation)"
        expected = float(cofi.pruner.gates.expected_sparsity())
    small = small.to(dense.device)
    speedup, latency = latency_speedup(dense, small, cofi.latency)
    sparsity = structure_sparsity(original_structure(small))
    fields = {
        "method": "cofi",
        "base_model": pl_module.hparams.model_name_or_path,
        "teacher": pl_module.hparams.teacher_name_or_path,
        "task": pl_module.task.name,
        "sparsity_target": cofi.target_sparsity,
        "sparsity_actual": sparsity,
        "sparsity_expected": expected,
        "flops_reduction_target": None,
        **structure_fields(small, dense, cofi.latency.seq_len),
        "metric_name": metric,
        "metric_dense": dense_metrics.get(metric),
        "metric_compressed": value,
        "metrics_dense": dense_metrics,
        "selected": selected,
        "prune_seconds": cofi.train_seconds,
        "train_seconds": cofi.train_seconds,
        "step_seconds": sum(cofi.step_seconds) / len(cofi.step_seconds) if cofi.step_seconds else None,
        "global_steps": trainer.global_step,
        "latency_speedup": speedup,
        "latency": latency,
        "pruner_config": cofi_config(cofi),
        "notes": [
            "metric_dense is the teacher's score; metric_compressed is the selected masked model's validation score "
            "(the compact model reproduces it).",
            "sparsity counts encoder-layer parameters (weights, biases, LayerNorms), embeddings and heads excluded.",
        ],
    }
    title = f"CoFi on {pl_module.task.name}: {sparsity:.1%} of encoder parameters removed"
    report = export_structured(small, dense, out_dir, getattr(trainer.datamodule, "tokenizer", None), title,
                               cofi.overwrite, **fields)  # fmt: skip
    for logger in trainer.loggers:
        logger.log_metrics(
            {
                "cofi/final_sparsity_actual": sparsity,
                "cofi/final_metric_compressed": value if value is not None else float("nan"),
                "cofi/final_latency_speedup": speedup or 0.0,
            },
            step=trainer.global_step,
        )
        if hasattr(logger, "log_image"):
            logger.log_image(key="cofi/structure", images=[str(out_dir / "structure.png")])
        logger.save()
    return report


def cofi_config(cofi) -> dict:
    """The callback's settings as plain data (for the report)."""
    schedule = cofi.pruner.schedule
    return {
        "target_sparsity": cofi.target_sparsity,
        "prepruning_steps": schedule.start_step,
        "warmup_steps": schedule.warmup_steps,
        "granularities": cofi.granularities,
        "reg_learning_rate": cofi.reg_learning_rate,
        "layer_distill_weight": cofi.layer_distill_weight,
        "teacher_layers": cofi.layer_loss.teacher_layers if cofi.layer_loss else None,
        "layer_mapping": cofi.layer_mapping,
        "sparsity_epsilon": cofi.sparsity_epsilon,
        "freeze_embeddings": cofi.freeze_embeddings,
        "seed": cofi.seed,
    }
