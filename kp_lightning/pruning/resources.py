"""Peak memory of a pruning run: bytes held in caches, device peak (CUDA) or process peak RSS (CPU)."""

from __future__ import annotations

import resource
import sys

import torch


def tensor_bytes(*containers) -> int:
    """Bytes of all tensors found in (nested) dicts, lists and tuples."""
    total = 0
    stack = list(containers)
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total


class MemoryTracker:
    """Tracks the largest cache a run held and the peak memory of the device it ran on."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.caches: dict[str, int] = {}
        self.peak_cache = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def add_cache(self, name: str, *containers) -> None:
        self.caches[name] = tensor_bytes(*containers)
        self.peak_cache = max(self.peak_cache, sum(self.caches.values()))

    def sample(self) -> None:
        self.peak_cache = max(self.peak_cache, sum(self.caches.values()))

    def report(self) -> dict:
        out = {"peak_cache_bytes": self.peak_cache}
        if self.device.type == "cuda":
            out["peak_device_bytes"] = torch.cuda.max_memory_allocated(self.device)
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out["peak_process_rss_bytes"] = rss if sys.platform == "darwin" else rss * 1024
        return out
