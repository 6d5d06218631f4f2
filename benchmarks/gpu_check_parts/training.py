"""The training parts: fine-tune and CoFi steps in bf16, and fine-tune steps under FSDP2 on one device."""

from __future__ import annotations

import json
import statistics
import warnings

import lightning.pytorch as pl
import torch

from .measurements import StepTimer, gpu_memory, val_metrics
from .settings import Check


def part_finetune_bf16(check: Check) -> dict:
    from kp_lightning.modules import TaskModule

    pl.seed_everything(0, verbose=False)
    data = check.data()
    module = TaskModule(str(check.model_dir), task_spec=data.task_spec, learning_rate=5e-5, warmup_ratio=0.0)
    timer = StepTimer(check.device)
    trainer = check.trainer(precision="bf16-mixed", callbacks=[timer])
    trainer.fit(module, datamodule=data)
    return {"precision": "bf16-mixed", "batch_size": check.batch_size, **timer.summary(),
            "val": val_metrics(trainer), **gpu_memory(check.device)}  # fmt: skip


def part_cofi_bf16(check: Check) -> dict:
    from callbacks import CoFi
    from kp_lightning.modules import DistillationModule

    pl.seed_everything(0, verbose=False)
    data = check.data()
    module = DistillationModule(
        str(check.model_dir), str(check.model_dir), task_spec=data.task_spec, alpha_ce=0.0, alpha_kd=0.1,
        learning_rate=5e-5, warmup_ratio=0.0, weight_decay=0.0,
    )  # fmt: skip
    out = check.work / "cofi_export"
    cofi = CoFi(
        target_sparsity=0.6, prepruning_steps=0, warmup_steps=max(1, check.steps // 2), reg_learning_rate=0.05,
        sparsity_epsilon=0.01, latency_seconds=0, latency_seq_len=check.max_length, output_dir=str(out),
    )  # fmt: skip
    timer = StepTimer(check.device)
    trainer = check.trainer(precision="bf16-mixed", callbacks=[cofi, timer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "never reached the target": a check runs few steps
        trainer.fit(module, datamodule=data)
    report_file = out / "compression_report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    return {
        "precision": "bf16-mixed",
        "batch_size": check.batch_size,
        **timer.summary(),
        "expected_sparsity_end": float(cofi.pruner.gates.expected_sparsity()),
        "lagrangian_step_ms_median": statistics.median(cofi.step_seconds) * 1e3 if cofi.step_seconds else None,
        "export_written": (out / "config.json").is_file(),
        "export_structure": (report.get("structure") or {}).get("kept"),
        **gpu_memory(check.device),
    }


def part_fsdp2_1device(check: Check) -> dict:
    from lightning.pytorch.strategies import ModelParallelStrategy

    from kp_lightning.core.sharding import is_sharded
    from kp_lightning.modules import TaskModule

    pl.seed_everything(0, verbose=False)
    data = check.data()
    module = TaskModule(str(check.model_dir), task_spec=data.task_spec, learning_rate=5e-5, warmup_ratio=0.0)
    timer = StepTimer(check.device)
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1, save_distributed_checkpoint=False)
    precision = "bf16-mixed"
    trainer = check.trainer(precision=precision, strategy=strategy, callbacks=[timer])
    try:
        trainer.fit(module, datamodule=data)
        sharded = is_sharded(module.model)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return {"strategy": "ModelParallelStrategy(data_parallel_size=1)", "precision": precision, "sharded": sharded,
            **timer.summary(), "val": val_metrics(trainer), **gpu_memory(check.device)}  # fmt: skip
