"""``prune.py``: evaluate a fine-tuned model, prune it without retraining, evaluate again, export.

The model, data, trainer (strategy, devices, logger) and ``pruner`` (a ``KPrune`` callback) come from YAML
or the command line, as in ``train.py``.
"""

from __future__ import annotations

from pathlib import Path

from callbacks.kprune import KPrune
from kp_lightning.cli import KPLightningCLI, build_cli
from kp_lightning.core.export import check_output_dir
from kp_lightning.core.sharding import gathered_model
from kp_lightning.core.structured_export import (
    STRUCTURE_PNG,
    LatencyCheck,
    export_structured,
    latency_speedup,
    structure_fields,
)
from kp_lightning.hub_push import check_push_target, push_to_hub


class PruneCLI(KPLightningCLI):
    """``train.py``'s CLI plus ``pruner`` (a ``KPrune``), ``output_dir``, ``overwrite`` and latency options."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(KPrune, "pruner")
        parser.add_argument("--output_dir", type=str, default="outputs/pruned", help="Export directory.")
        parser.add_argument("--overwrite", type=bool, default=False, help="Replace a non-empty output_dir.")
        parser.add_argument("--latency_batch_size", type=int, default=32, help="Batch size of the latency check.")
        parser.add_argument("--latency_seq_len", type=int, default=128, help="Sequence length of the latency check.")
        parser.add_argument(
            "--latency_seconds", type=float, default=2.0, help="Seconds per latency measurement; 0 skips it."
        )
        parser.add_argument(
            "--push_to_hub", type=str | None, default=None, help="Hub repo id (namespace/name) to upload the export to."
        )
        parser.add_argument("--hub_private", type=bool, default=False, help="Create the hub repo as private.")

    def instantiate_classes(self) -> None:
        """Check the pruner's arguments and the output directory before the model and data are loaded."""
        KPrune(**self.config.pruner.as_dict())
        check_output_dir(Path(self.config.output_dir), self.config.overwrite, hint="pass --overwrite true")
        if self.config.push_to_hub:
            check_push_target(self.config.push_to_hub)
        super().instantiate_classes()


def run_pruning(cli: PruneCLI) -> dict:
    """Dense validation, pruning, pruned validation, export; returns the compression report (rank 0)."""
    config = cli.config
    out_dir = Path(config.output_dir)
    check_output_dir(out_dir, config.overwrite, hint="pass --overwrite true")
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    pruner: KPrune = cli.config_init.pruner
    pruner.check_model(module)  # before the dense validation: an untrained head or unsupported model wastes nothing
    metric = module.task.main_metric
    dense_metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    trainer.callbacks.append(pruner)
    pruned_metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    report = {}
    pruned = gathered_model(module.model)  # FSDP2: the full pruned model on rank 0 (collective); else itself
    if trainer.is_global_zero:
        report = _export(cli, pruner, module, pruned, data, metric, dense_metrics, pruned_metrics, out_dir)
        if config.push_to_hub:
            push_to_hub(out_dir, config.push_to_hub, private=config.hub_private)
    trainer.strategy.barrier()
    return report


def _export(cli, pruner, module, pruned, data, metric, dense_metrics, pruned_metrics, out_dir: Path) -> dict:
    config = cli.config
    device = cli.trainer.strategy.root_device
    result, dense = pruner.result, pruner.dense_model.to(device).eval()
    small = pruned.to(device).eval()
    check = LatencyCheck(config.latency_batch_size, config.latency_seq_len, config.latency_seconds)
    speedup, latency = latency_speedup(dense, small, check)  # on the run's device (CPU, or prune.py's GPU)
    fields = {
        "method": pruner.method,
        "base_model": module.hparams.model_name_or_path,
        "task": module.task.name,
        "flops_reduction_target": pruner.flops_reduction,
        **structure_fields(small, dense, round(result.seq_len), result.flops_batch_size),
        "flops_reduction_actual": result.flops_reduction,
        "flops_seq_len": result.seq_len,
        "metric_name": metric,
        "metric_dense": float(dense_metrics[metric]),
        "metric_compressed": float(pruned_metrics[metric]),
        "metrics_dense": {k: float(v) for k, v in dense_metrics.items()},
        "metrics_compressed": {k: float(v) for k, v in pruned_metrics.items()},
        "prune_seconds": result.seconds["total"],
        "phase_seconds": result.seconds,
        "latency_speedup": speedup,
        "latency": latency,
        "pruner_config": {"method": pruner.method, **pruner.draw_settings(), **vars(pruner.config)},
        "sample_set": result.stats,
        "notes": result.notes,
    }
    title = f"{pruner.method} on {module.task.name}: {result.flops_reduction:.0%} of encoder FLOPs removed"
    report = export_structured(small, dense, out_dir, data.tokenizer, title, config.overwrite, **fields)
    for logger in cli.trainer.loggers:
        logger.log_metrics(
            {
                "prune/metric_dense": fields["metric_dense"],
                "prune/metric_compressed": fields["metric_compressed"],
                "prune/latency_speedup": speedup or 0.0,
                "prune/params_compressed": fields["params_compressed"],
            },
            step=0,
        )
        if hasattr(logger, "log_image"):
            logger.log_image(key="prune/structure", images=[str(out_dir / STRUCTURE_PNG)])
        logger.save()
    return report


def summary(report: dict, out_dir: str) -> str:
    """Human-readable lines for the terminal."""
    speed = report.get("latency_speedup")
    flops = report["reference"]["flops"]
    dense_g, pruned_g = flops["analytic"]["total"] / 1e9, report["compressed"]["flops"]["analytic"]["total"] / 1e9
    return "\n".join(
        [
            f"{report['method']} on {report['task']}: {report['flops_reduction_actual']:.1%} of encoder FLOPs removed "
            f"(target {report['flops_reduction_target']:.0%}{_batch_note(report)}) in {report['prune_seconds']:.1f} s",
            f"{report['metric_name']}: dense {report['metric_dense']:.4f} -> pruned {report['metric_compressed']:.4f}",
            f"FLOPs per {flops['seq_len']}-token sequence (encoder + head): {dense_g:.3f} G -> {pruned_g:.3f} G",
            f"parameters: {report['params_dense']:,} -> {report['params_compressed']:,}",
            f"measured CPU latency speedup: {speed:.2f}x" if speed else "latency not measured",
            f"export: {out_dir}",
        ]
    )


def _batch_note(report: dict) -> str:
    batch = report.get("flops_batch_size", 1)
    return f", FLOPs per sequence at batch {batch}" if batch > 1 else ""


def main(args: list[str] | None = None) -> dict:
    """Entry point of ``prune.py``."""
    cli = build_cli(PruneCLI, args, run=False)
    report = run_pruning(cli)
    if report:
        print(summary(report, cli.config.output_dir))
    return report
