"""A smoke run of the scheduler simulator (bench/bench_scheduler.py): the real Arbiter on a virtual
clock, a few minutes of each trace, every policy. The full run and its table belong to the benchmark."""

from __future__ import annotations

import random

import pytest

from bench import bench_scheduler as sim


@pytest.mark.parametrize("key", list(sim.TRACES))
def test_a_short_simulation_keeps_modelyard_in_budget_and_within_the_aging_bound(key):
    trace = sorted(sim.TRACES[key][1](random.Random(f"smoke-{key}"), 0.25), key=lambda r: r.at)
    ours = sim.run(sim.Modelyard, trace)
    assert len(ours.waits) == len(trace)  # every request served
    assert ours.overruns == 0 and ours.peak_mb <= sim.BUDGET_MB
    assert max(ours.model_waits, default=0.0) <= sim.MAX_WAIT_S
    for baseline in (sim.CountLRU, sim.OllamaLike):
        assert len(sim.run(baseline, trace).waits) == len(trace)


def test_virtual_time_jumps_to_the_next_timer():
    async def sleeps() -> float:
        import asyncio

        await asyncio.sleep(3600)
        return asyncio.get_running_loop().time()

    loop = sim.VirtualLoop()
    try:
        assert loop.run_until_complete(sleeps()) == 3600
    finally:
        loop.close()
