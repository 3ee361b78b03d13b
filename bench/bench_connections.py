"""Connection benchmark: /health while one client holds thousands of idle connections.

The server runs as a subprocess limited to 1,024 open files (a common default). One client opens
--idle connections that never send a byte, then /health is asked --probes times, each on a fresh
connection. Printed side by side: `modelyard serve` (the connection guard) and the same app under
plain `uvicorn.run` (what `modelyard serve` was before): /health latency median and max, failures,
and the server's open files and resident memory while the idle connections are held.

    .venv/bin/python bench/bench_connections.py [--idle 5000] [--probes 20] [--open-files 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402

PLAIN = ("import uvicorn\nfrom server.app import create_app\nfrom server.settings import Settings\n"
         "s = Settings()\nuvicorn.run(create_app(s), host=s.host, port=s.port, log_level='warning', access_log=False)\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(kind: str, registry: Path, open_files: int):
    port = free_port()
    env = {**os.environ, "MODELYARD_MODELS": str(registry), "MODELYARD_PORT": str(port),
           "MODELYARD_LOG_LEVEL": "warning", "MODELYARD_BUDGET_MB": "4096"}
    command = [sys.executable, "-m", "server", "serve"] if kind == "guarded" else [sys.executable, "-c", PLAIN]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    process = subprocess.Popen(command, cwd=ROOT, env=env, preexec_fn=limit, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.1)
        yield base, port, process.pid
    finally:
        process.kill()
        process.wait()


def probe(base: str, count: int) -> tuple[list[float], int]:
    latencies, failures = [], 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            with httpx.Client(timeout=5) as client:  # a fresh connection each time
                ok = client.get(base + "/health").status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - started)
        else:
            failures += 1
    return latencies, failures


def run(kind: str, registry: Path, idle: int, probes: int, open_files: int) -> str:
    with server(kind, registry, open_files) as (base, port, pid):
        held = []
        for _ in range(idle):
            conn = socket.socket()
            conn.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                conn.connect(("127.0.0.1", port))
            held.append(conn)
        time.sleep(2.0)
        proc = psutil.Process(pid)
        files, rss = proc.num_fds(), proc.memory_info().rss / 2**20
        latencies, failures = probe(base, probes)
        for conn in held:
            conn.close()
    if latencies:
        timing = f"median {statistics.median(latencies) * 1000:7.1f} ms, max {max(latencies) * 1000:7.1f} ms"
    else:
        timing = "no answer" + " " * 27
    return f"{kind:8} /health {timing}, {failures:2}/{probes} failed; server: {files} open files, {rss:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--open-files", type=int, default=1024)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.idle + 1000)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "models.yaml"
        registry.write_text(yaml.safe_dump({"models": [{"id": "a", "backend": "fake"}]}))
        print(f"{args.idle} idle connections held, server limited to {args.open_files} open files; {describe()}")
        for kind in ("plain", "guarded"):
            print(run(kind, registry, args.idle, args.probes, args.open_files), flush=True)


if __name__ == "__main__":
    main()
