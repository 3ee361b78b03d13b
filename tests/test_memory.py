"""Measuring workers: NVML per process where it sees them, the worker's own account where it cannot."""

from __future__ import annotations

import os
from types import SimpleNamespace

import psutil
from conftest import fake

from server.memory import MIB, MemoryProbe

HELLO = [{"role": "user", "content": "hi"}]


class FakeNvml:
    """Stands in for pynvml: one card whose process table lists the given pids."""

    def __init__(self, used_by_pid: dict[int, int]):
        self.used_by_pid = used_by_pid

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=16 * 1024 * MIB)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.used_by_pid.items()]


def test_nvml_per_process_figure_is_used_when_it_sees_the_worker():
    probe = MemoryProbe(nvml=FakeNvml({os.getpid(): 3000 * MIB}))
    assert probe.gpu and probe.measure(os.getpid(), reported_mb=1000) == 3000


def test_worker_report_stands_in_when_nvml_sees_other_pids():
    # Inside a container without the host PID namespace NVML lists host pids, never ours.
    probe = MemoryProbe(nvml=FakeNvml({999_999: 5000 * MIB}))
    assert probe.process_mb(os.getpid()) is None
    assert probe.measure(os.getpid(), reported_mb=1234) == 1234


def test_cpu_probe_reads_resident_memory():
    probe = MemoryProbe(nvml=object())  # no usable NVML: CPU mode
    assert not probe.gpu
    assert probe.process_mb(os.getpid()) > 10


def test_measured_footprint_raises_later_estimates(served):
    # The fake reports 100 MiB but really allocates 300: the arbiter learns and never estimates lower.
    with served([fake("heavy", memory_mb=300, allocate=True, spec_memory_mb=100)]) as s:
        spec = s.app.state.services.registry.resolve("heavy")
        s.client().chat.completions.create(model="heavy", messages=HELLO, max_tokens=1)
        assert s.resident("heavy")["memory_mb"] >= 300
        assert s.arbiter.estimate_mb(spec) >= 300


def test_fifty_load_unload_cycles_return_memory_to_baseline(served):
    with served([fake("cycle", memory_mb=64, allocate=True, spec_keep_alive=0)]) as s:
        client = s.client()
        server_rss = psutil.Process().memory_info().rss
        for _ in range(50):
            client.chat.completions.create(model="cycle", messages=HELLO, max_tokens=1)
            s.wait_until(lambda: s.resident("cycle") is None, timeout=5)
        assert s.ps()["used_mb"] == 0 and s.arbiter.loads == 50
        grown_mb = (psutil.Process().memory_info().rss - server_rss) / MIB
        assert grown_mb < 64, f"server process grew {grown_mb:.0f} MiB over 50 cycles"


def test_the_ram_the_defaults_share_out_is_the_containers_limit_when_lower(tmp_path, monkeypatch):
    from server import memory

    limit = tmp_path / "memory.max"
    limit.write_text(str(1024 * 1024 * 1024) + "\n")  # a 1 GiB container
    monkeypatch.setattr(memory, "_CGROUP_LIMITS", (str(limit),))
    assert memory.ram_total_mb() == 1024
    limit.write_text("max\n")  # no limit: the machine's
    assert memory.ram_total_mb() > 1024
