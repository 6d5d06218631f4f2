"""CPU time of a block and the cores other processes use, to time latency on a quiet machine."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path


class Clock:
    """Wall and CPU seconds of a block (this process and finished children), with the load average."""

    def __enter__(self):
        self.wall, self.cpu, self.child = time.perf_counter(), time.process_time(), _child_cpu()
        self.load_start = os.getloadavg()[0]
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self.wall
        self.cpu_s = time.process_time() - self.cpu + _child_cpu() - self.child
        self.load_end = os.getloadavg()[0]

    def record(self) -> dict:
        return {
            "job_wall_seconds": self.wall_s,
            "job_cpu_seconds": self.cpu_s,
            "loadavg_1min_start_end": [self.load_start, self.load_end],
        }


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _busy_seconds() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


class OthersCpu:
    """Cores used by other processes over a block (whole-machine busy time minus this process's CPU time)."""

    def __enter__(self):
        self.busy, self.own, self.wall = _busy_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.wall
        self.cores = max(0.0, (_busy_seconds() - self.busy) - (time.process_time() - self.own)) / max(wall, 1e-6)


def wait_quiet(threshold: float, max_wait: float) -> dict:
    """Wait (up to ``max_wait`` s) until other processes use under ``threshold`` cores over 5 s."""
    start = time.perf_counter()
    while True:
        with OthersCpu() as others:
            time.sleep(5)
        if others.cores < threshold or time.perf_counter() - start > max_wait:
            return {"waited_s": time.perf_counter() - start, "others_cores_before": others.cores}
