"""Scheduler simulator: the real Arbiter, on a virtual clock, at real model sizes, against two baselines.

The Arbiter class the server runs (server/arbiter.py, not a copy) is driven by an asyncio event loop
whose clock is virtual: when every task waits, time jumps to the next timer, so hours of traffic
run in seconds and every run of a seed is identical. Workers are fakes that carry real-world
footprints and load times; the warm tier is a fake that takes the time a park takes. Two baselines
run through the same simulator, the same traces and the same fake workers:

- count-LRU, llama.cpp's router: at most `models-max` (4) models loaded, the least recently used
  unloaded to load another; memory is not checked: it loads even when memory is short, and each load
  that takes the total past the budget is counted as a would-be OOM (on the card it would fail).
- Ollama-like (server/sched.go): one pending queue served in order (a request that needs a load
  blocks the ones behind it), a memory estimate before each load, idle runners unloaded
  shortest keep-alive first (else it waits for the shortest busy one), at most 3 loaded models
  (OLLAMA_MAX_LOADED_MODELS' default per GPU), no warm tier.

Facts the simulation assumes (stated so they can be argued with): every policy's GGUF reloads from
the page cache (0.7 s) when its file is still cached (page cache = RAM less 8 GiB for processes and
less what modelyard's warm tier holds); other engines' loads take their disk time whatever the page
cache holds (their load is dominated by conversion); a worker stops in 0.1 s; parking a torch model
takes as long as its swap-in from RAM (the copy off the device), a GGUF's is instant (its pages are
already cached); requests on one model run in parallel up to its engine's slots (llama.cpp 4,
transformers/diffusers/whisper 1, embeddings 4); modelyard's arbiter leases no more than that (the
rest queue in it), the baselines queue the rest inside the worker.

Two waits per request: `wait` is arrival to the start of its service (what a user feels), and
`model wait` is arrival until its model was on the device ready to serve it, the part a scheduler
decides (the rest is the model's own backlog, which no policy can shorten). The aging bound is on
the second.

    .venv/bin/python bench/bench_scheduler.py [--seed 7] [--hours 3] [--traces a,b,c]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import selectors
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.fake.spec import FakeOptions, FakeSpec  # noqa: E402
from backends.plan import MIB, Device, LoadPlan  # noqa: E402
from bench.machine import describe  # noqa: E402
from server.arbiter import Arbiter, NoEvents  # noqa: E402
from server.warm import WarmCopy  # noqa: E402

GB = 1000**3 / MIB  # MiB in a (decimal) gigabyte, as model sizes are quoted
BUDGET_MB = 12 * 1024
RAM_MB = 32 * 1024
WARM_MB = RAM_MB // 2  # modelyard's default warm tier beside a GPU: half the RAM
PROCESS_RAM_MB = 8 * 1024  # what the OS, the server and the workers take of the RAM
MAX_WAIT_S = 30.0  # MODELYARD_MAX_WAIT_S's default
KEEP_ALIVE_S = 300.0
STOP_S = 0.1


@dataclass(frozen=True)
class Model:
    name: str
    gb: float
    cold_s: float  # from disk
    ram_s: float  # from RAM (the warm tier; for GGUF, the page cache)
    engine: str  # gguf | hf | diffusers | whisper
    slots: int  # requests served at once
    pinned: bool = False

    @property
    def mb(self) -> float:
        return self.gb * GB

    @property
    def park_s(self) -> float:
        return 0.05 if self.engine == "gguf" else self.ram_s


CATALOG = {m.name: m for m in (
    Model("llama-8b", 4.9, 3.0, 0.7, "gguf", 4),
    Model("mistral-7b", 4.5, 12.0, 1.5, "hf", 1),
    Model("sdxl", 6.9, 5.0, 1.2, "diffusers", 1),
    Model("whisper", 3.1, 2.0, 0.5, "whisper", 1),
    Model("nomic", 0.3, 0.5, 0.1, "gguf", 4),
    Model("fim", 0.5, 0.8, 0.2, "gguf", 4, pinned=True),
)}


# ---- virtual time ----------------------------------------------------------------------------------


class _Selector(selectors.DefaultSelector):
    """Never sleeps: where the loop would wait for its next timer, time jumps there instead."""

    loop: VirtualLoop

    def select(self, timeout: float | None = None):
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("the simulation stalled: every task waits and no timer is set")
        self.loop.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        selector = _Selector()
        selector.loop = self
        super().__init__(selector)

    def time(self) -> float:
        return self.now


# ---- traces ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    at: float
    model: str
    service_s: float


def _stream(rng: random.Random, hours: float, gap_s: float, model: str, service: tuple[float, float]) -> list[Request]:
    out, t = [], rng.expovariate(1 / gap_s)
    while t < hours * 3600:
        out.append(Request(t, model, rng.uniform(*service)))
        t += rng.expovariate(1 / gap_s)
    return out


def _bursts(rng: random.Random, hours: float, every_s: float, size: tuple[int, int], spacing_s: float,
            pick: Callable[[], str], service: dict[str, tuple[float, float]]) -> list[Request]:
    out, t = [], rng.expovariate(1 / every_s)
    while t < hours * 3600:
        at = t
        for _ in range(rng.randint(*size)):
            model = pick()
            out.append(Request(at, model, rng.uniform(*service[model])))
            at += rng.expovariate(1 / spacing_s)
        t += rng.expovariate(1 / every_s)
    return out


CHAT = {"llama-8b": (2.0, 12.0), "mistral-7b": (4.0, 16.0)}


def trace_editor(rng: random.Random, hours: float) -> list[Request]:
    """(a) An editor session: FIM every few seconds, chat bursts to two assistants, embedding batches."""
    return (_stream(rng, hours, 4.0, "fim", (0.15, 0.4))
            + _bursts(rng, hours, 90, (2, 6), 12, lambda: rng.choices(list(CHAT), (3, 1))[0], CHAT)
            + _bursts(rng, hours, 60, (5, 25), 0.3, lambda: "nomic", {"nomic": (0.05, 0.2)}))


def trace_images(rng: random.Random, hours: float) -> list[Request]:
    """(b) Chat with occasional image generation."""
    return (_stream(rng, hours, 8.0, "llama-8b", CHAT["llama-8b"])
            + _stream(rng, hours, 30.0, "mistral-7b", CHAT["mistral-7b"])
            + _stream(rng, hours, 20.0, "fim", (0.15, 0.4))
            + _bursts(rng, hours, 240, (1, 4), 3, lambda: "sdxl", {"sdxl": (5.0, 8.0)}))


def trace_meetings(rng: random.Random, hours: float) -> list[Request]:
    """(c) Meeting transcription bursts beside chat."""
    return (_stream(rng, hours, 9.0, "llama-8b", CHAT["llama-8b"])
            + _stream(rng, hours, 30.0, "mistral-7b", CHAT["mistral-7b"])
            + _stream(rng, hours, 12.0, "fim", (0.15, 0.4))
            + _bursts(rng, hours, 900, (20, 60), 0.5, lambda: "whisper", {"whisper": (2.0, 4.0)})
            + _bursts(rng, hours, 300, (3, 10), 0.3, lambda: "nomic", {"nomic": (0.05, 0.2)}))


TRACES = {"a": ("editor session", trace_editor), "b": ("chat with images", trace_images),
          "c": ("meetings beside chat", trace_meetings)}


# ---- what every policy shares ------------------------------------------------------------------------


class PageCache:
    """The OS page cache for model files, least recently used first out."""

    def __init__(self, capacity: Callable[[], float]):
        self.capacity = capacity
        self._files: OrderedDict[str, float] = OrderedDict()

    def read(self, model: Model) -> bool:
        """Read the model's files; whether they were cached already."""
        hit = model.name in self._files
        self._files[model.name] = model.mb
        self._files.move_to_end(model.name)
        while sum(self._files.values()) > self.capacity() and len(self._files) > 1:
            self._files.popitem(last=False)
        return hit


@dataclass
class Stats:
    waits: list[float] = field(default_factory=list)
    model_waits: list[float] = field(default_factory=list)
    swaps: int = 0  # loads after a model's first (its cold start, which every policy pays)
    swap_s: float = 0.0  # their load time, and the time parks took (modelyard)
    overruns: int = 0
    peak_mb: float = 0.0
    models: set[str] = field(default_factory=set)

    def load(self, model: str, seconds: float) -> None:
        if model in self.models:
            self.swaps += 1
            self.swap_s += seconds
        self.models.add(model)


def load_time(model: Model, cache: PageCache, from_ram: bool) -> float:
    if from_ram:
        return model.ram_s
    hit = cache.read(model)
    return model.ram_s if hit and model.engine == "gguf" else model.cold_s


# ---- modelyard: the real Arbiter with fake workers -------------------------------------------------------


class SimWorker:
    _pids = iter(range(1000, 10**9))

    def __init__(self, model: Model):
        self.model = model
        self.pid = next(self._pids)
        self.reported_mb = model.mb

    def on_exit(self, callback) -> None: ...

    async def stop(self) -> None:
        await asyncio.sleep(STOP_S)

    async def park(self, dest: Path) -> int:
        await asyncio.sleep(self.model.park_s)
        return int(self.model.mb * MIB)


class SimFactory:
    def __init__(self, cache: PageCache, stats: Stats):
        self.cache, self.stats = cache, stats

    async def start(self, plan: LoadPlan) -> SimWorker:
        model = CATALOG[plan.model_id]
        seconds = load_time(model, self.cache, plan.source == "ram")
        await asyncio.sleep(seconds)
        self.stats.load(model.name, seconds)
        return SimWorker(model)


class SimProbe:
    def measure(self, pid: int, reported_mb: float) -> float:
        return reported_mb

    async def wait_released(self, pid: int, timeout_s: float) -> bool:
        return True


class SimWarm:
    """The warm tier's bookkeeping, with the time a park takes (GGUF pins its cached pages)."""

    def __init__(self, stats: Stats):
        self.stats = stats
        self.held_mb = 0.0

    def fingerprint(self, spec) -> tuple:
        return ()

    def fresh(self, copy, spec) -> bool:
        return True

    async def park(self, model_id: str, plan: LoadPlan, worker: SimWorker, fingerprint: tuple) -> WarmCopy:
        began = asyncio.get_running_loop().time()
        written = await worker.park(Path("/sim") / model_id)
        self.stats.swap_s += asyncio.get_running_loop().time() - began
        self.held_mb += written / MIB
        form = "page_cache" if CATALOG[model_id].engine == "gguf" else "tmpfs"
        return WarmCopy(model_id, plan.from_warm(Path("/sim") / model_id), written, form, fingerprint)

    def drop(self, copy: WarmCopy) -> None:
        self.held_mb -= copy.bytes / MIB

    def close(self) -> None: ...


class Peaks(NoEvents):
    def __init__(self, stats: Stats):
        self.stats = stats

    def waited_for(self, model: str, reason: str, seconds: float, swap_s: float) -> None:
        self.stats.model_waits.append(swap_s)

    def memory(self, used_mb: float, budget_mb: float, per_model_mb: dict[str, float]) -> None:
        self.stats.peak_mb = max(self.stats.peak_mb, used_mb)
        if used_mb > budget_mb + 1e-6:
            self.stats.overruns += 1


class Modelyard:
    name = "modelyard"
    keep_alive_s = KEEP_ALIVE_S

    def __init__(self, stats: Stats):
        warm = SimWarm(stats)
        self.cache = PageCache(lambda: RAM_MB - PROCESS_RAM_MB - warm.held_mb)
        self.arbiter = Arbiter(BUDGET_MB, SimFactory(self.cache, stats), SimProbe(), device=Device("cuda", 0),
                               max_queue=100_000, queue_timeout_s=86_400, load_timeout_s=3600,
                               max_wait_s=MAX_WAIT_S, ram_budget_mb=WARM_MB, warm=warm, events=Peaks(stats))
        self.specs = {name: FakeSpec(id=name, backend="fake", pinned=m.pinned,
                                     keep_alive=-1 if m.pinned else self.keep_alive_s,
                                     options=FakeOptions(memory_mb=math.ceil(m.mb), slots=m.slots))
                      for name, m in CATALOG.items()}

    async def acquire(self, model: str) -> Callable[[], None]:
        """The lease's release; the arbiter reports its model wait (Peaks.waited_for)."""
        return (await self.arbiter.acquire(self.specs[model])).release

    async def close(self) -> None:
        await self.arbiter.close()


class ModelyardKeptAlive(Modelyard):
    """keep_alive -1 (never unload when idle), as the router keeps models: only room evicts."""

    name = "modelyard, keep_alive -1"
    keep_alive_s = -1


# ---- count-LRU: llama.cpp's router ----------------------------------------------------------------------


@dataclass(eq=False)
class Instance:
    model: Model
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    refcount: int = 0
    last_used: float = 0.0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    unloading: bool = False


class CountLRU:
    """llama.cpp's router (tools/server/server-models.cpp): loading a model past --models-max first
    unloads the least recently used one, waiting for its process to stop; memory is not checked."""

    name = "count-LRU (llama.cpp router)"

    def __init__(self, stats: Stats, models_max: int = 4):
        self.stats, self.models_max = stats, models_max
        self.cache = PageCache(lambda: RAM_MB - PROCESS_RAM_MB)
        self.loaded: dict[str, Instance] = {}
        self.lock = asyncio.Lock()

    async def acquire(self, name: str) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        while True:
            inst = self.loaded.get(name)
            if inst is not None and not inst.unloading:
                await inst.ready.wait()
                if inst.unloading:
                    continue
                inst.refcount += 1
                inst.idle.clear()
                inst.last_used = loop.time()
                return lambda: self._release(inst)
            async with self.lock:
                if name in self.loaded:
                    continue
                inst = Instance(CATALOG[name])
                if len(self.loaded) >= self.models_max:
                    victim = min(self.loaded.values(), key=lambda i: i.last_used)
                    await self._unload(victim)
                self.loaded[name] = inst
                used = sum(i.model.mb for i in self.loaded.values())
                self.stats.peak_mb = max(self.stats.peak_mb, used)
                if used > BUDGET_MB:
                    self.stats.overruns += 1  # the load would run the card out of memory
                seconds = load_time(inst.model, self.cache, False)
                await asyncio.sleep(seconds)
                self.stats.load(name, seconds)
                inst.last_used = loop.time()
                inst.ready.set()

    def _release(self, inst: Instance) -> None:
        inst.refcount -= 1
        inst.last_used = asyncio.get_running_loop().time()
        if inst.refcount == 0:
            inst.idle.set()

    async def _unload(self, inst: Instance) -> None:
        inst.unloading = True
        if inst.refcount:  # the child finishes what it serves (its stop timeout), then exits
            await inst.idle.wait()
        await asyncio.sleep(STOP_S)
        del self.loaded[inst.model.name]

    async def close(self) -> None: ...


# ---- Ollama-like: server/sched.go -----------------------------------------------------------------------


@dataclass(eq=False)
class Runner:
    model: Model
    session_s: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    refcount: int = 0
    expiring: bool = False
    timer: asyncio.TimerHandle | None = None


class OllamaLike:
    """Ollama's scheduler: requests are taken from one pending queue in order; a loaded model's
    request is served at once; otherwise the model is loaded if its estimate fits beside the
    others (and fewer than 3 are loaded), else a runner is unloaded (an idle one with the shortest
    keep-alive, else the busy one with the shortest) and the queue waits for it; no warm tier."""

    name = "Ollama-like"

    def __init__(self, stats: Stats, max_runners: int = 3):
        self.stats, self.max_runners = stats, max_runners
        self.cache = PageCache(lambda: RAM_MB - PROCESS_RAM_MB)
        self.loaded: dict[str, Runner] = {}
        self.pending: asyncio.Queue = asyncio.Queue()
        self.unloaded = asyncio.Event()
        self.scheduler = asyncio.get_running_loop().create_task(self._schedule())

    async def acquire(self, name: str) -> Callable[[], None]:
        future = asyncio.get_running_loop().create_future()
        await self.pending.put((name, future))
        runner = await future
        await runner.ready.wait()
        return lambda: self._release(runner)

    async def _schedule(self) -> None:
        while True:
            name, future = await self.pending.get()
            while True:
                runner = self.loaded.get(name)
                if runner is not None and not runner.expiring:
                    await runner.ready.wait()  # its lock is held while it loads
                    self._use(runner)
                    future.set_result(runner)
                    break
                model = CATALOG[name]
                used = sum(r.model.mb for r in self.loaded.values())
                if len(self.loaded) < self.max_runners and used + model.mb <= BUDGET_MB and runner is None:
                    runner = Runner(model, math.inf if model.pinned else KEEP_ALIVE_S)
                    self.loaded[name] = runner
                    self.stats.peak_mb = max(self.stats.peak_mb, used + model.mb)
                    self._use(runner)
                    future.set_result(runner)
                    await self._load(runner)  # the pending queue waits while the GPU's memory settles
                    break
                victim = self._victim() if runner is None else runner
                self.unloaded.clear()
                self._expire(victim)
                await self.unloaded.wait()

    async def _load(self, runner: Runner) -> None:
        seconds = load_time(runner.model, self.cache, False)
        await asyncio.sleep(seconds)
        self.stats.load(runner.model.name, seconds)
        runner.ready.set()

    def _victim(self) -> Runner:
        runners = sorted(self.loaded.values(), key=lambda r: r.session_s)
        return next((r for r in runners if r.refcount == 0), runners[0])

    def _use(self, runner: Runner) -> None:
        runner.refcount += 1
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None

    def _release(self, runner: Runner) -> None:
        runner.refcount -= 1
        if runner.refcount == 0:
            if runner.expiring:
                self._expire(runner)
            elif runner.session_s != math.inf:
                runner.timer = asyncio.get_running_loop().call_later(runner.session_s, self._expire, runner)

    def _expire(self, runner: Runner) -> None:
        runner.expiring = True
        if runner.refcount == 0 and self.loaded.get(runner.model.name) is runner:
            asyncio.get_running_loop().create_task(self._unload(runner))

    async def _unload(self, runner: Runner) -> None:
        del self.loaded[runner.model.name]
        await asyncio.sleep(STOP_S)
        self.unloaded.set()

    async def close(self) -> None:
        self.scheduler.cancel()


# ---- running a trace ----------------------------------------------------------------------------------------


async def simulate(policy_class, trace: list[Request]) -> Stats:
    stats = Stats()
    policy = policy_class(stats)
    slots = {name: asyncio.Semaphore(m.slots) for name, m in CATALOG.items()}
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(request: Request) -> None:
        await asyncio.sleep(request.at - (loop.time() - start))
        arrived = loop.time()
        release = await policy.acquire(request.model)
        if not isinstance(policy, Modelyard):  # the arbiter reports modelyard's (its own backlog excluded)
            stats.model_waits.append(loop.time() - arrived)
        try:
            async with slots[request.model]:
                stats.waits.append(loop.time() - arrived)
                await asyncio.sleep(request.service_s)
        finally:
            release()

    pinned = [name for name, m in CATALOG.items() if m.pinned]
    for name in pinned:  # loaded at start-up by every policy
        (await policy.acquire(name))()
    stats.waits.clear()
    stats.model_waits.clear()
    await asyncio.gather(*(one(r) for r in trace))
    await policy.close()
    return stats


def run(policy_class, trace: list[Request]) -> Stats:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(simulate(policy_class, trace))
    finally:
        loop.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


def row(name: str, stats: Stats) -> dict[str, Any]:
    return {"policy": name, "swaps": stats.swaps, "swap_s": stats.swap_s, "p50": percentile(stats.waits, 50),
            "p95": percentile(stats.waits, 95), "p99": percentile(stats.waits, 99), "max": max(stats.waits),
            "model_max": max(stats.model_waits, default=0.0), "overruns": stats.overruns,
            "peak_gb": stats.peak_mb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--traces", default="a,b,c")
    args = parser.parse_args()
    print(f"machine: {describe()}")
    print(f"seed {args.seed}; budget {BUDGET_MB / 1024:.0f} GiB, RAM {RAM_MB / 1024:.0f} GiB (warm tier "
          f"{WARM_MB / 1024:.0f} GiB), MODELYARD_MAX_WAIT_S {MAX_WAIT_S:.0f} s, keep-alive {KEEP_ALIVE_S:.0f} s")
    print("models: " + ", ".join(f"{m.name} {m.gb} GB ({m.cold_s} s disk, {m.ram_s} s RAM)" for m in CATALOG.values()))
    policies = (Modelyard, ModelyardKeptAlive, CountLRU, OllamaLike)
    for key in args.traces.split(","):
        title, make = TRACES[key]
        trace = sorted(make(random.Random(f"{args.seed}-{key}"), args.hours), key=lambda r: r.at)
        began = time.perf_counter()
        rows = [row(p.name, run(p, trace)) for p in policies]
        counts = {m: sum(1 for r in trace if r.model == m) for m in CATALOG}
        print(f"\n({key}) {title}: {len(trace)} requests over {args.hours:g} h "
              f"({', '.join(f'{m} {n}' for m, n in counts.items() if n)}); simulated in {time.perf_counter() - began:.1f} s")
        print(f"{'policy':30} {'swaps':>6} {'swap-s':>8} {'p50 wait':>9} {'p95':>7} {'p99':>7} {'max':>7} "
              f"{'model wait max':>15} {'overruns':>9} {'peak GiB':>9}")
        for r in rows:
            print(f"{r['policy']:30} {r['swaps']:6d} {r['swap_s']:8.1f} {r['p50']:9.2f} {r['p95']:7.2f} {r['p99']:7.2f} "
                  f"{r['max']:7.1f} {r['model_max']:15.1f} {r['overruns']:9d} {r['peak_gb']:9.1f}")
        ours, kept, *baselines = rows
        for mine in (ours, kept):
            for other in baselines:
                change = f"{mine['swap_s'] / other['swap_s'] - 1:+.0%}" if other["swap_s"] else "n/a (0 s)"
                print(f"  {mine['policy']} vs {other['policy']}: swap-seconds {change}, p95 wait "
                      f"{mine['p95']:.2f} s vs {other['p95']:.2f} s"
                      + (f" (it overran the budget {other['overruns']} times)" if other["overruns"] else ""))
        print(f"  longest wait of a request for its model to be on the device: {ours['model_max']:.1f} s "
              f"(aging bound {MAX_WAIT_S:.0f} s); modelyard overruns: {ours['overruns']}")


if __name__ == "__main__":
    main()
