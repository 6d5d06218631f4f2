"""benchmarks/gpu_check.py: the CPU dry run records every part with a status; the real check on a CUDA device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.test_cli import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
PARTS = {"finetune_bf16", "cofi_bf16", "kprune", "compact_latency", "semi_structured_2to4", "int8", "fsdp2_1device"}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
       "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}  # fmt: skip


def run_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def load_parts(path) -> dict:
    result = json.loads(path.read_text())
    assert set(result["parts"]) == PARTS
    for name, part in result["parts"].items():
        assert part["status"] in ("ok", "skipped", "failed"), name
        assert isinstance(part["seconds"], float), name
        assert (part["reason"] is None) == (part["status"] == "ok"), name
    return result


def test_a_dry_run_of_some_parts_records_every_part(tmp_path):
    out = tmp_path / "x.json"
    proc = run_check("--cpu-dry-run", "--out", str(out), "--parts", "compact_latency", "semi_structured_2to4")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    parts = load_parts(out)["parts"]
    assert parts["compact_latency"]["status"] == "ok"
    assert 0.4 < parts["compact_latency"]["flops_removed_encoder"] < 0.7
    sparse = parts["semi_structured_2to4"]
    assert sparse["status"] == "skipped" and "CUDA" in sparse["reason"]
    assert all(row["density"] == 0.5 and row["dense_ms"] > 0 for row in sparse["rows"])  # the CPU part ran
    assert parts["kprune"] == {"status": "skipped", "reason": "not selected (--parts)", "seconds": 0.0}


def test_a_dry_run_never_replaces_the_gpu_results():
    proc = run_check("--cpu-dry-run", "--out", str(SCRIPT.parent / "results" / "gpu_check.json"), "--parts", "int8")
    assert proc.returncode == 2 and "does not write" in proc.stderr


@pytest.mark.slow
def test_the_cpu_dry_run_runs_every_cpu_part(tmp_path):
    out = tmp_path / "x.json"
    proc = run_check("--cpu-dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = load_parts(out)
    assert result["mode"] == "cpu-dry-run"
    statuses = {name: part["status"] for name, part in result["parts"].items()}
    expected_int8 = "ok" if all(_findable(m) for m in ("onnx", "onnxruntime", "onnxscript")) else "skipped"
    assert statuses == {**dict.fromkeys(PARTS, "ok"), "semi_structured_2to4": "skipped", "int8": expected_int8}
    parts = result["parts"]
    for name in ("finetune_bf16", "cofi_bf16", "fsdp2_1device"):
        assert parts[name]["steps"] == 4 and parts[name]["losses_finite"], name
    assert parts["fsdp2_1device"]["sharded"] is True
    assert parts["cofi_bf16"]["export_written"] is True
    assert parts["kprune"]["flops_removed"] == pytest.approx(0.6, abs=0.02)


def _findable(name: str) -> bool:
    from tests.helpers import _findable as findable

    return findable(name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_gpu_check_passes_on_a_cuda_device(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = run_check("--out", str(out), timeout=900)
    result = load_parts(out)
    failed = {name: part["reason"] for name, part in result["parts"].items() if part["status"] == "failed"}
    assert proc.returncode == 0 and not failed, failed
    parts = result["parts"]
    assert parts["kprune"]["result_device"].startswith("cuda")
    assert parts["semi_structured_2to4"]["status"] == "ok"
    assert result["seconds"] < 8 * 60
