"""Hardening findings that need a real llama.cpp worker: response schemas that crashed it (finding 1),
and prompts that are slow to tokenize (finding 3). The tiny GGUF's vocabulary falls back to bytes
for most text: the quadratic case of llama.cpp's SentencePiece tokenizer."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import psutil
import pytest
from conftest import serve

from tinymodels import DEFAULT_ROOT
from tinymodels import gguf as tiny

HELLO = [{"role": "user", "content": "hello there"}]
NO_END = {"2": -100, "4": -100}  # </s> and <|im_end|> banned: a reply runs to max_tokens


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    tiny.build(DEFAULT_ROOT)
    tmp = tmp_path_factory.mktemp("gguf-hardening")
    chat_file = str(DEFAULT_ROOT / tiny.CHAT_FILE)
    models = [
        {"id": "llama", "backend": "gguf", "path": chat_file, "options": {"n_ctx": 1024}},
        {"id": "long", "backend": "gguf", "path": chat_file, "options": {"n_ctx": 131072, "n_parallel": 1}},
        {"id": "embed", "backend": "gguf", "path": str(DEFAULT_ROOT / tiny.EMBED_FILE), "options": {"embedding": True}},
    ]
    with serve(tmp, models, model_dirs=[str(tmp), str(DEFAULT_ROOT)], max_request_tokens=1_000_000) as served:
        yield served


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}


# ---- finding 1 -------------------------------------------------------------------------------------


def test_schema_repetition_that_crashed_the_worker_is_refused_or_served_never_a_crash(s):
    client = s.client()
    client.chat.completions.create(model="llama", messages=HELLO, max_tokens=1)
    pid = s.resident("llama")["pid"]
    results: dict = {}

    def neighbour() -> None:  # an unrelated stream on the same model, running throughout
        stream = client.chat.completions.create(model="llama", messages=HELLO, max_tokens=300, stream=True,
                                                logit_bias=NO_END)
        chunks = list(stream)
        results["finish"] = chunks[-1].choices[0].finish_reason
        results["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    thread = threading.Thread(target=neighbour)
    thread.start()
    for huge in ({"type": "string", "maxLength": 10**7}, {"type": "string", "pattern": "^(a|b){1,10000000}$"},
                 {"type": "object", "properties": {"s": {"type": "array", "maxItems": 10**9}}}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="llama", messages=HELLO, max_tokens=5,
                                           response_format=schema_format(huge))
        assert caught.value.body["param"].startswith("response_format.json_schema.schema")
        assert "100000" in caught.value.body["message"]
    for schema in ({"type": "string", "maxLength": 5000}, {"type": "string", "maxLength": 20000},
                   {"type": "string", "pattern": "^(a|b){1,100000}$"}, {"type": "string", "minLength": 3, "maxLength": 5}):
        reply = client.chat.completions.create(model="llama", messages=HELLO, max_tokens=60, seed=3,
                                               response_format=schema_format(schema))
        content = reply.choices[0].message.content
        assert content.startswith('"')
        if reply.choices[0].finish_reason == "stop":
            value = json.loads(content)
            assert len(value) <= schema["maxLength"] if "maxLength" in schema else set(value) <= {"a", "b"}
    thread.join(60)
    assert results["finish"] == "length" and results["text"]
    assert s.resident("llama")["pid"] == pid  # the same worker served all of it


def test_tool_schema_past_the_limits_is_400_naming_the_tool_path(s):
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"tags": {"type": "array", "items": {"enum": list(range(2000))}}}}}}
    with pytest.raises(openai.BadRequestError) as caught:
        s.client().chat.completions.create(model="llama", messages=HELLO, tools=[tool], tool_choice="required")
    assert caught.value.body["param"] == "tools.0.function.parameters.properties.tags.items.enum"


# ---- finding 3 -------------------------------------------------------------------------------------


def test_4mb_single_word_prompt_is_refused_at_once(s):
    client = s.client(timeout=30)
    for call in (lambda: client.chat.completions.create(model="llama", messages=[{"role": "user",
                                                                                  "content": "a" * 4_000_000}]),
                 lambda: client.completions.create(model="llama", prompt="é" * 2_000_000)):
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.code == "context_length_exceeded"


def worker_cpu_s(s, model: str) -> float:
    times = psutil.Process(s.resident(model)["pid"]).cpu_times()
    return times.user + times.system


@pytest.mark.parametrize("prompt", ["é" * 900_000, "a " * 60_000], ids=["long-word", "long-prefill"])
def test_client_that_leaves_a_long_prompt_stops_the_work_within_a_second(s, prompt):
    """A word too long to fit, then a prompt that fits but takes seconds to read: either way the
    worker is idle soon after the client leaves."""
    s.client().completions.create(model="long", prompt="warm", max_tokens=1)
    body = {"model": "long", "prompt": prompt, "max_tokens": 5}
    try:
        httpx.post(s.base_url + "/v1/completions", json=body, timeout=1.5)
    except httpx.TimeoutException:
        pass  # the client leaves
    time.sleep(1.0)
    before = worker_cpu_s(s, "long")
    time.sleep(2.0)
    assert worker_cpu_s(s, "long") - before < 0.5, "the worker kept working for a client that left"
    assert s.resident("long")["refcount"] == 0


def test_long_embedding_input_holds_up_no_other_embedding(s):
    client = s.client(timeout=60)
    client.embeddings.create(model="embed", input="warm")
    outcome: dict = {}

    def long_input(text: str, key: str) -> None:
        try:
            client.embeddings.create(model="embed", input=text)
            outcome[key] = "served"
        except openai.BadRequestError as exc:
            outcome[key] = exc.code

    threads = [threading.Thread(target=long_input, args=("é" * 200_000, "400 KB")),
               threading.Thread(target=long_input, args=("é" * 500_000, "1 MB"))]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    short = s.client(timeout=5).embeddings.create(model="embed", input="two words")
    assert len(short.data[0].embedding) > 0
    for thread in threads:
        thread.join(60)
    assert outcome == {"400 KB": "context_length_exceeded", "1 MB": "context_length_exceeded"}


# ---- finding 4, inside the llama.cpp worker ----------------------------------------------------------


def test_llama_scheduler_stops_decoding_a_sequence_its_reader_stopped_reading():
    """The worker's part of stream backpressure: once the call thread stops pulling chunks (the
    server asked it to pause), the batch scheduler stops decoding that sequence."""
    from backends.contract import Cancel, CompletionParams
    from backends.gguf.adapter import GgufAdapter
    from backends.gguf.spec import GgufSpec
    from backends.plan import Device

    tiny.build(DEFAULT_ROOT)
    spec = GgufSpec(id="llama", backend="gguf", path=DEFAULT_ROOT / tiny.CHAT_FILE, options={"n_ctx": 4096})
    adapter = GgufAdapter(spec.resolve(Device()))
    try:
        chunks = adapter.complete(CompletionParams(prompt="go", max_tokens=4000, logit_bias=NO_END), Cancel())
        for _ in range(5):
            next(chunks)

        def generated() -> int:
            return adapter.stats()["tokens_generated"]

        deadline = time.monotonic() + 10
        before = generated()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = generated()
            if now == before:
                break
            before = now
        assert generated() == before and before < 100, "the scheduler kept decoding for nobody"
        for _ in range(200):  # reading again resumes it
            next(chunks)
        assert generated() >= 200
        chunks.close()
    finally:
        adapter.close()


# ---- finding 3, the tokenizer alone ------------------------------------------------------------------


@pytest.fixture(scope="module")
def confusable(tmp_path_factory):
    """A SentencePiece vocabulary where merges overlap everywhere (every 2-4 letter string over a
    small alphabet, spaces included, half of them in, random scores): windows that cut a merge
    wrongly would show."""
    import itertools
    import random

    import llama_cpp

    rng = random.Random(1)
    pieces = {"".join(c): -rng.random() * 10 for n in (2, 3, 4) for c in itertools.product("ab\u2581c", repeat=n)
              if rng.random() < 0.5}
    path = tmp_path_factory.mktemp("vocab") / "confusable.gguf"
    tiny.write_llama(path, pieces=pieces)
    llama = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    yield llama
    llama.close()


def test_windowed_tokenization_gives_exactly_the_tokens_of_one_call(confusable):
    import random

    import llama_cpp

    from backends.contract import Cancel
    from backends.gguf.tokenizer import PromptTokenizer

    rng = random.Random(7)
    alphabets = [list("abc "), ["a", "b", "c", " ", "  ", "é", "😀", "\n", "<|im_start|>", "<|im_end|>", "aaaa", "\u2581"],
                 ["a", "aa", " ", "b"]]
    for window, overlap in ((64, 32), (40, 16), (200, 64)):
        tokenizer = PromptTokenizer(llama_cpp, confusable, window=window, overlap=overlap)
        for _ in range(300):
            alphabet = rng.choice(alphabets)
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(200, 600)))
            expected = confusable.tokenize(text.encode(), add_bos=True, special=True)
            assert tokenizer.tokenize(text, add_special=True, cancel=Cancel()) == expected, text


def test_tokenizing_stops_when_cancelled_or_past_the_limit(confusable):
    import llama_cpp

    from backends.contract import Cancel, ErrorCode, InvalidInput
    from backends.gguf.tokenizer import PromptTokenizer

    tokenizer = PromptTokenizer(llama_cpp, confusable)
    word = "é" * 1_000_000  # one call: minutes of quadratic work on this byte-fallback vocabulary
    assert len(tokenizer.tokenize(word, add_special=True, cancel=Cancel(), limit=5000)) < 40_000
    cancel = Cancel()
    cancel.set()
    with pytest.raises(InvalidInput) as caught:
        tokenizer.tokenize(word, add_special=True, cancel=cancel)
    assert caught.value.code == ErrorCode.CANCELLED
