"""The only module that asks NVML or the OS how much memory is used, and which device models use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

import psutil

from backends.plan import Device

log = logging.getLogger("modelyard.memory")

MIB = 1024 * 1024


class MemoryProbe:
    """Measures a worker's footprint: NVML per process on a GPU, resident memory on a CPU.

    Where NVML cannot see the worker (a container without the host's PID namespace reports host
    pids), the worker's own report stands in; the arbiter takes the larger of the two figures.
    """

    def __init__(self, nvml=None) -> None:
        """`nvml` is the pynvml module (found automatically when installed); tests pass a fake."""
        self._nvml = None
        self._handle = None
        with contextlib.suppress(Exception):
            if nvml is None:
                import pynvml as nvml  # optional: the `gpu` extra

            nvml.nvmlInit()
            self._handle = nvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = nvml

    @property
    def gpu(self) -> bool:
        return self._handle is not None

    def device_total_mb(self) -> float | None:
        if not self.gpu:
            return None
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).total / MIB

    def device_used_mb(self) -> float | None:
        """Memory in use on the whole device (every process, and what the driver holds); None on a CPU."""
        if not self.gpu:
            return None
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / MIB

    def device_name(self) -> str | None:
        if not self.gpu:
            return None
        name = self._nvml.nvmlDeviceGetName(self._handle)
        return name.decode() if isinstance(name, bytes) else str(name)

    def process_mb(self, pid: int) -> float | None:
        """Memory the process holds on the device (GPU) or in RAM (CPU); None if unknown."""
        if self.gpu:
            for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    return proc.usedGpuMemory / MIB
            return None
        try:
            return psutil.Process(pid).memory_info().rss / MIB
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def measure(self, pid: int, reported_mb: float) -> float:
        seen = self.process_mb(pid)
        return max(reported_mb, seen or 0.0)

    async def wait_released(self, pid: int, timeout_s: float) -> bool:
        """After a worker exits, wait until its memory no longer reads as used."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not psutil.pid_exists(pid) and (not self.gpu or self.process_mb(pid) is None):
                return True
            await asyncio.sleep(0.02)
        log.warning("memory of pid %d still reads as used after %.1fs", pid, timeout_s)
        return False


DEFAULT_GPU_BUDGET_MB = 12288  # the reference card: an RTX 4070 Ti


def default_budget_mb(probe: MemoryProbe) -> int:
    """12 GiB of GPU memory when a card is visible (capped by the card), else half the RAM."""
    if probe.gpu:
        total = probe.device_total_mb() or DEFAULT_GPU_BUDGET_MB
        return int(min(DEFAULT_GPU_BUDGET_MB, total - 512))
    return int(ram_total_mb() * 0.5)


def default_ram_budget_mb(probe: MemoryProbe) -> int:
    """The warm tier's share of system RAM: half beside a GPU (models run in device memory), a
    quarter without one (the model budget already takes half)."""
    return int(ram_total_mb() * (0.5 if probe.gpu else 0.25))


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def ram_total_mb() -> float:
    """The RAM this process may use: the machine's, or its container's memory limit when lower
    (psutil reports the host's inside a container)."""
    total = psutil.virtual_memory().total
    for limit in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(limit).read_text().strip()))  # "max" (no limit) raises ValueError
    return total / MIB


def cuda_visible() -> bool:
    """Whether a CUDA device is likely visible to workers, without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl")


def detect_device(probe: MemoryProbe, runtime_mb: float | None) -> Device:
    """The device models load on, and one worker's runtime cost there (CUDA context or process)."""
    kind = "cuda" if probe.gpu or cuda_visible() else "cpu"
    if runtime_mb is None:
        runtime_mb = 300 if kind == "cuda" else 60
    return Device(kind=kind, runtime_mb=runtime_mb)
