"""Continuous batching of Hugging Face causal LMs (backends/hf/batch.py), end to end.

Concurrent requests to one HF model share forwards (rows of one left-padded cache); a request's
output must not depend on who it shared them with: greedy text, seeded samples, logprobs, stop
strings and grammars are the same as when it runs alone. Through the real app, a real worker
process and the `openai` package.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import serve
from hf_support import FORMATS, DirectWorker, build_demo_models, hf_entry

from backends.contract import PARAMS, Method

# Prompts of different lengths, so rows join with padding in front of the shorter ones.
PROMPTS = ["The quick brown fox", "hello", "Once upon a time in a land far, far away there lived",
           "def add(a, b):"]


@pytest.fixture(scope="module", params=list(FORMATS))
def app(request, tmp_path_factory):
    root: Path = build_demo_models()
    fmt = request.param
    with serve(tmp_path_factory.mktemp(fmt), [hf_entry(root, fmt, n_parallel=4)], budget_mb=4096) as s:
        s.model = f"hf-{fmt}"
        yield s


def complete(app, prompt: str, **kwargs):
    kwargs.setdefault("max_tokens", 24)
    return app.client().completions.create(model=app.model, prompt=prompt, **kwargs)


def together(app, calls):
    """Run every call at once and return their results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def peak_rows(app) -> int:
    return app.resident(app.model, stats=True)["worker"]["peak_rows"]


def test_concurrent_greedy_requests_give_the_same_text_as_each_alone(app):
    alone = [complete(app, p, temperature=0).choices[0].text for p in PROMPTS]
    assert peak_rows(app) == 1
    for _ in range(2):  # the second round joins rows in another order
        batched = together(app, [lambda p=p: complete(app, p, temperature=0).choices[0].text for p in PROMPTS])
        assert batched == alone
    assert peak_rows(app) >= 2  # they did share forwards


def test_concurrent_seeded_samples_and_logprobs_match_each_alone(app):
    def call(prompt, seed):
        reply = complete(app, prompt, seed=seed, temperature=0.9, logprobs=3, max_tokens=16)
        lp = reply.choices[0].logprobs
        return reply.choices[0].text, lp.tokens, lp.text_offset, [round(x, 4) for x in lp.token_logprobs]

    cases = [(p, seed) for seed, p in enumerate(PROMPTS, start=5)]
    alone = [call(p, seed) for p, seed in cases]
    batched = together(app, [lambda c=c: call(*c) for c in cases])
    assert batched == alone


def test_a_stop_string_ends_one_row_while_the_others_go_on(app):
    long = complete(app, PROMPTS[2], temperature=0, max_tokens=40).choices[0].text
    assert len(long) >= 16, "the random model ended too early for this test; pick another prompt"
    stop = long[8:11]
    alone = [complete(app, p, temperature=0, max_tokens=40).choices[0] for p in PROMPTS]
    stopped = complete(app, PROMPTS[2], temperature=0, max_tokens=40, stop=[stop])
    calls = [lambda p=p: complete(app, p, temperature=0, max_tokens=40).choices[0] for p in PROMPTS]
    calls[2] = lambda: complete(app, PROMPTS[2], temperature=0, max_tokens=40, stop=[stop]).choices[0]
    batched = together(app, calls)
    assert batched[2].text == stopped.choices[0].text == long[: long.find(stop)]
    assert batched[2].finish_reason == "stop"
    assert [b.text for i, b in enumerate(batched) if i != 2] == [a.text for i, a in enumerate(alone) if i != 2]


def test_a_json_schema_row_stays_valid_beside_free_rows(app):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}

    def constrained():
        return app.client().chat.completions.create(
            model=app.model, messages=[{"role": "user", "content": "a digit"}], response_format=fmt,
            max_tokens=40, seed=3).choices[0].message.content

    alone = constrained()
    results = together(app, [constrained] + [lambda p=p: complete(app, p, temperature=0).choices[0].text
                                            for p in PROMPTS[:3]])
    assert results[0] == alone
    assert 0 <= json.loads(results[0])["n"] <= 9


def test_cancelling_one_stream_leaves_the_other_rows_intact(app):
    alone = [complete(app, p, temperature=0, max_tokens=60).choices[0].text for p in PROMPTS[:2]]

    def abandoned():
        stream = complete(app, PROMPTS[2], temperature=0, max_tokens=200, stream=True)
        for _ in zip(range(3), stream, strict=False):
            pass
        stream.close()

    results = together(app, [lambda p=p: complete(app, p, temperature=0, max_tokens=60).choices[0].text
                             for p in PROMPTS[:2]] + [abandoned])
    assert results[:2] == alone
    app.wait_until(lambda: app.resident(app.model, stats=True)["worker"]["active"] == 0, timeout=20)


@pytest.fixture(scope="module")
def direct():
    worker = DirectWorker(hf_entry(build_demo_models(), "fp16", n_parallel=4))
    yield worker
    worker.close()


def test_a_reader_that_stops_is_set_aside_while_the_others_go_on_then_resumes_with_the_same_text(direct):
    """The server's backpressure (flow messages once 64 chunks wait unread) reaches a batched row: it
    leaves the batch with its KV, the other rows go on, and it comes back where it left."""
    limit = 300
    alone, _, final = direct.text("complete", prompt=PROMPTS[0], temperature=0, max_tokens=limit)
    assert final["finish_reason"] == "length", "the random model ended early; pick another prompt"
    other = direct.text("complete", prompt=PROMPTS[1], temperature=0, max_tokens=40)[0]

    async def generated() -> int:
        return (await direct.worker.stats())["tokens_generated"]

    async def go():
        before = await generated()
        call = await direct.worker.call(PARAMS[Method.COMPLETE](prompt=PROMPTS[0], temperature=0, max_tokens=limit))
        samples = [before]
        while len(samples) < 60:  # nobody reads: the row must stop well before its limit
            await asyncio.sleep(0.25)
            samples.append(await generated())
            if call.paused and samples[-1] == samples[-2]:
                break
        assert call.paused and samples[-1] == samples[-2], f"the row never paused: {samples}"
        assert samples[-1] - before < limit // 2
        # Set aside, it does not hold the others up.
        chunks, _ = await (await direct.worker.call(
            PARAMS[Method.COMPLETE](prompt=PROMPTS[1], temperature=0, max_tokens=40))).result()
        assert "".join(c["text"] for c in chunks) == other
        chunks, final = await call.result()  # read: it rejoins and finishes
        return "".join(c["text"] for c in chunks), final

    text, final = direct.run(go())
    assert text == alone  # nothing lost or repeated
    assert final["usage"]["completion_tokens"] == limit
