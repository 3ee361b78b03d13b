"""`modelyard events`: /admin/events followed in a terminal, a line per lifecycle record and per
change of what is on the device (or every message as a JSON line)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


def messages(lines: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) from a server-sent event stream's lines."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def describe_record(r: dict[str, Any]) -> str:
    at = time.strftime("%H:%M:%S", time.localtime(r["at"]))
    kind = r["kind"]
    if kind == "loading":
        what = f"loading at {r['rung']}"
    elif kind == "swapped_in":
        what = f"ready, from {r['source']} in {r['seconds']:.2f}s"
    elif kind == "load_failed":
        what = f"load {r['result']} after {r['seconds']:.2f}s"
    elif kind == "evicted":
        what = f"{'parked in RAM' if r['parked'] else 'unloaded'} ({r['reason']})"
    elif kind == "switched":
        return f"{at}  admission switched models ({r['reason']})"
    else:
        what = kind
    return f"{at}  {r['model']}: {what}"


def describe_snapshot(s: dict[str, Any]) -> str:
    """What is on the device and in the warm tier, in one line (no timers: it changes only with them)."""
    on_device = ", ".join(f"{r['model']} {r['state']} {r['memory_mb']:.0f}" for r in s["residents"]) or "nothing"
    line = f"device {s['used_mb']:.0f}/{s['budget_mb']:.0f} MiB: {on_device}"
    if s["parked"]:
        line += "; parked: " + ", ".join(f"{p['model']} {p['memory_mb']:.0f}" for p in s["parked"])
    waiting = {m: n for m, n in s.get("queues", {}).items() if n}
    if waiting:
        line += "; waiting: " + ", ".join(f"{m} x{n}" for m, n in waiting.items())
    return line


def follow(lines: Iterable[str], out: TextIO, as_json: bool = False) -> None:
    last = None
    for event, data in messages(lines):
        if as_json:
            print(json.dumps({"event": event, "data": data}), file=out, flush=True)
        elif event == "hello":
            for record in data["history"]:
                print(describe_record(record), file=out, flush=True)
        elif event == "record":
            print(describe_record(data), file=out, flush=True)
        elif event == "snapshot" and (line := describe_snapshot(data)) != last:
            print(f"          {line}", file=out, flush=True)
            last = line
