"""Token ids in and out: token-array inputs for embeddings and completions (what LangChain and other
OpenAI clients send), and /tokenize and /detokenize, on GGUF and Hugging Face models."""

from __future__ import annotations

import openai
import pytest
from conftest import fake, serve

from tinymodels import DEFAULT_ROOT
from tinymodels import gguf as tiny_gguf
from tinymodels import hf as tiny_hf

TEXT = "the quick brown fox"


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    tiny_gguf.build(DEFAULT_ROOT)
    tiny_hf.build(DEFAULT_ROOT)
    models = [
        {"id": "gguf", "backend": "gguf", "path": str(DEFAULT_ROOT / tiny_gguf.CHAT_FILE), "options": {"n_ctx": 512}},
        {"id": "hf", "backend": "hf", "path": str(DEFAULT_ROOT / tiny_hf.LLM_DIR), "context_length": 512},
        {"id": "embed-gguf", "backend": "gguf", "path": str(DEFAULT_ROOT / tiny_gguf.EMBED_FILE),
         "options": {"embedding": True, "n_ctx": 512}},
        {"id": "embed-hf", "backend": "hf", "path": str(DEFAULT_ROOT / tiny_hf.EMBED_DIR)},
        {"id": "sd", "backend": "diffusers", "path": str(DEFAULT_ROOT / "tiny-sd")},
        fake("chat"),
    ]
    with serve(tmp_path_factory.mktemp("tokens"), models) as served:
        yield served


def tokens_of(s, model: str, text: str = TEXT, **body) -> list[int]:
    return s.http.post("/tokenize", json={"model": model, "prompt": text, **body}).raise_for_status().json()["tokens"]


@pytest.mark.parametrize("model", ["embed-gguf", "embed-hf"])
def test_token_array_embeddings_equal_the_texts_embeddings(s, model):
    client = s.client()
    ids = tokens_of(s, model)
    from_text = client.embeddings.create(model=model, input=TEXT).data[0].embedding
    from_ids = client.embeddings.create(model=model, input=ids).data[0].embedding
    assert max(abs(a - b) for a, b in zip(from_text, from_ids, strict=True)) < 1e-5
    several = client.embeddings.create(model=model, input=[ids, tokens_of(s, model, "a lazy dog")])
    assert len(several.data) == 2 and several.usage.prompt_tokens == len(ids) + len(tokens_of(s, model, "a lazy dog"))


@pytest.mark.parametrize("model", ["embed-gguf", "embed-hf", "gguf", "hf"])
def test_a_token_id_outside_the_vocabulary_is_a_400_naming_it(s, model):
    client = s.client()
    with pytest.raises(openai.BadRequestError) as refused:
        if model.startswith("embed"):
            client.embeddings.create(model=model, input=[[1, 2], [3, 99_999_999]])
        else:
            client.completions.create(model=model, prompt=[5, 99_999_999], max_tokens=2)
    message = refused.value.message
    assert "99999999" in message and ("input[1][1]" in message or "prompt[1]" in message)
    assert refused.value.param in ("input", "prompt")


def test_a_negative_token_id_is_a_400(s):
    response = s.http.post("/v1/embeddings", json={"model": "embed-gguf", "input": [1, -3]})
    assert response.status_code == 400 and response.json()["error"]["param"].startswith("input")


@pytest.mark.parametrize("model", ["gguf", "hf"])
def test_a_completion_from_token_ids_echoes_their_text_and_counts_them(s, model):
    ids = tokens_of(s, model)
    reply = s.client().completions.create(model=model, prompt=ids, max_tokens=3, echo=True, temperature=0)
    assert TEXT in reply.choices[0].text
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == 3
    both = s.client().completions.create(model=model, prompt=[ids, ids], max_tokens=2, temperature=0)
    assert [c.index for c in both.choices] == [0, 1] and both.choices[0].text == both.choices[1].text


@pytest.mark.parametrize("model", ["gguf", "hf"])
def test_suffix_needs_a_text_prompt(s, model):
    with pytest.raises(openai.BadRequestError) as refused:
        s.client().completions.create(model=model, prompt=tokens_of(s, model), suffix="end", max_tokens=2)
    assert refused.value.param == "suffix"


@pytest.mark.parametrize("model", ["gguf", "hf"])
def test_tokenize_then_detokenize_gives_the_text_back(s, model):
    body = s.http.post("/v1/tokenize", json={"model": model, "prompt": TEXT, "add_special_tokens": False,
                                              "return_token_strs": True}).raise_for_status().json()
    assert body["count"] == len(body["tokens"]) == len(body["token_strs"]) and body["max_model_len"] == 512
    assert "".join(body["token_strs"]).strip() == TEXT
    back = s.http.post("/detokenize", json={"model": model, "tokens": body["tokens"]}).raise_for_status().json()
    assert back["prompt"].strip() == TEXT


@pytest.mark.parametrize("model", ["gguf", "hf"])
def test_tokenizing_messages_applies_the_chat_template(s, model):
    messages = [{"role": "user", "content": TEXT}]
    chat = s.http.post("/tokenize", json={"model": model, "messages": messages}).raise_for_status().json()
    reply = s.client().chat.completions.create(model=model, messages=messages, max_tokens=1)
    assert chat["count"] == reply.usage.prompt_tokens > len(tokens_of(s, model))


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"model": "gguf", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}, 400, None),
    ({"model": "gguf"}, 400, None),
    ({"model": "sd", "prompt": "x"}, 400, "unsupported_model_capability"),
    ({"model": "nope", "prompt": "x"}, 404, "model_not_found"),
])
def test_bad_tokenize_requests_are_refused(s, body, status, field):
    response = s.http.post("/tokenize", json=body)
    assert response.status_code == status
    if field:
        assert response.json()["error"]["code"] == field


def test_detokenize_range_checks_the_ids(s):
    response = s.http.post("/detokenize", json={"model": "hf", "tokens": [1, 2, 10**6]})
    assert response.status_code == 400 and "tokens[2]" in response.json()["error"]["message"]
