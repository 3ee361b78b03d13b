"""One line naming the machine a benchmark ran on (every figure is printed with it)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe(*extra: str) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} cores", f"{platform.system()} {platform.release()}",
             f"Python {platform.python_version()}", *extra]
    return ", ".join(parts)
