"""The ONNX Runtime engine through the real app, workers and openai client: embeddings (float and int8
graphs) and rerank from the same weights as the Hugging Face tiny models, under the same arbiter."""

from __future__ import annotations

import math

import openai
import pytest
from conftest import fake, serve

from tinymodels import DEFAULT_ROOT
from tinymodels import hf as tiny_hf
from tinymodels import onnx as tiny_onnx

TEXTS = ["hello world", "a much longer input that forces padding", "hello world"]
DOCUMENTS = ["the quick brown fox", "memory budgets and careful arbiters", "a lazy dog"]


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    tiny_onnx.build(DEFAULT_ROOT)
    models = [
        {"id": "embed-onnx", "backend": "onnx", "path": str(DEFAULT_ROOT / tiny_onnx.EMBED_DIR)},
        {"id": "embed-onnx-int8", "backend": "onnx", "path": str(DEFAULT_ROOT / tiny_onnx.EMBED_DIR),
         "options": {"file": "model_quantized.onnx", "threads": 1}},
        {"id": "embed-hf", "backend": "hf", "path": str(DEFAULT_ROOT / tiny_hf.EMBED_DIR)},
        {"id": "rerank-onnx", "backend": "onnx", "path": str(DEFAULT_ROOT / tiny_onnx.RERANK_DIR)},
        {"id": "rerank-hf", "backend": "hf", "path": str(DEFAULT_ROOT / tiny_hf.RERANK_DIR)},
        fake("chat"),
    ]
    with serve(tmp_path_factory.mktemp("onnx"), models) as served:
        yield served


def vectors(s, model: str, texts=TEXTS) -> list[list[float]]:
    return [d.embedding for d in s.client().embeddings.create(model=model, input=texts).data]


def test_onnx_embeddings_equal_the_hugging_face_models(s):
    onnx, hf = vectors(s, "embed-onnx"), vectors(s, "embed-hf")
    assert max(abs(a - b) for x, y in zip(onnx, hf, strict=True) for a, b in zip(x, y, strict=True)) < 1e-5
    assert all(abs(math.fsum(v * v for v in x) - 1.0) < 1e-5 for x in onnx)
    assert onnx[0] == onnx[2] and onnx[0] != onnx[1]  # padding in a batch changes nothing


def test_an_int8_graph_stays_close_to_the_float_one(s):
    exact, quantized = vectors(s, "embed-onnx"), vectors(s, "embed-onnx-int8")
    cosine = [math.fsum(a * b for a, b in zip(x, y, strict=True)) for x, y in zip(exact, quantized, strict=True)]
    assert all(c > 0.99 for c in cosine)
    assert s.resident("embed-onnx-int8", stats=True)["worker"]["graph"] == "model_quantized.onnx"


def test_token_ids_and_base64_work_as_for_any_embedding_model(s):
    tokens = s.http.post("/tokenize", json={"model": "embed-onnx", "prompt": "hello world"}).json()["tokens"]
    from_ids = s.client().embeddings.create(model="embed-onnx", input=[tokens]).data[0].embedding
    assert max(abs(a - b) for a, b in zip(from_ids, vectors(s, "embed-onnx")[0], strict=True)) < 1e-6
    as_base64 = s.http.post("/v1/embeddings", json={"model": "embed-onnx", "input": "hello world",
                                                    "encoding_format": "base64"}).json()
    assert isinstance(as_base64["data"][0]["embedding"], str)


def test_onnx_rerank_scores_like_the_hugging_face_cross_encoder(s):
    def scores(model: str) -> list[float]:
        body = {"model": model, "query": "which animal is quick", "documents": DOCUMENTS}
        results = s.http.post("/v1/rerank", json=body).raise_for_status().json()["results"]
        return [r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])]

    assert max(abs(a - b) for a, b in zip(scores("rerank-onnx"), scores("rerank-hf"), strict=True)) < 1e-5


def test_the_capabilities_follow_the_export(s):
    listed = {m["id"]: m for m in s.http.get("/v1/models").json()["data"]}
    assert listed["embed-onnx"]["capabilities"] == ["embedding"]
    assert listed["rerank-onnx"]["capabilities"] == ["rerank"]
    with pytest.raises(openai.BadRequestError) as refused:
        s.client().embeddings.create(model="rerank-onnx", input="x")
    assert refused.value.code == "unsupported_model_capability"


def test_input_longer_than_the_context_is_a_400(s):
    with pytest.raises(openai.BadRequestError) as refused:
        s.client().embeddings.create(model="embed-onnx", input="word " * 600)
    assert refused.value.code == "context_length_exceeded"


def test_a_missing_graph_fails_the_load_clearly(s, tmp_path):
    broken = [{"id": "broken", "backend": "onnx", "path": str(DEFAULT_ROOT / tiny_onnx.EMBED_DIR),
               "options": {"file": "absent.onnx"}}]
    with serve(tmp_path, broken) as other:
        with pytest.raises(openai.InternalServerError) as failed:
            other.client().embeddings.create(model="broken", input="x")
        assert failed.value.code == "model_load_failed" and "absent.onnx" in failed.value.message
