"""/v1/rerank through the real app and workers: a Hugging Face cross-encoder and the same weights as a
GGUF reranker under llama.cpp's rank pooling."""

from __future__ import annotations

import pytest
from conftest import fake, serve

from tinymodels import DEFAULT_ROOT
from tinymodels import gguf as tiny_gguf
from tinymodels import hf as tiny_hf

QUERY = "which animal is quick"
DOCUMENTS = ["the quick brown fox", "memory budgets and careful arbiters", "a lazy dog", "local questions"]


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    tiny_gguf.build(DEFAULT_ROOT)  # builds the HF cross-encoder too, then converts it
    models = [{"id": "rerank-hf", "backend": "hf", "path": str(DEFAULT_ROOT / tiny_hf.RERANK_DIR)},
              {"id": "rerank-gguf", "backend": "gguf", "path": str(DEFAULT_ROOT / tiny_gguf.RERANK_FILE),
               "options": {"rerank": True, "n_ctx": 128}},
              fake("chat")]
    with serve(tmp_path_factory.mktemp("rerank"), models) as served:
        yield served


def rerank(s, **body):
    return s.http.post("/v1/rerank", json={"model": "rerank-hf", "query": QUERY, "documents": DOCUMENTS, **body})


@pytest.mark.parametrize("model", ["rerank-hf", "rerank-gguf"])
def test_results_come_most_relevant_first_with_their_documents_and_indices(s, model):
    body = rerank(s, model=model).raise_for_status().json()
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0.0 < x < 1.0 for x in scores)
    assert all(r["document"]["text"] == DOCUMENTS[r["index"]] for r in results)
    assert body["model"] == model and body["usage"]["total_tokens"] > len(DOCUMENTS) * 4


def test_llama_cpp_rank_pooling_scores_like_the_hugging_face_cross_encoder(s):
    def scores(model: str) -> list[float]:
        results = rerank(s, model=model).raise_for_status().json()["results"]
        return [r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])]

    hf, gguf = scores("rerank-hf"), scores("rerank-gguf")
    assert max(abs(a - b) for a, b in zip(hf, gguf, strict=True)) < 1e-5  # one set of weights, two engines


def test_top_n_and_return_documents_trim_the_answer(s):
    results = rerank(s, top_n=2, return_documents=False).raise_for_status().json()["results"]
    assert len(results) == 2 and all("document" not in r for r in results)
    everything = rerank(s).json()["results"]
    assert [r["index"] for r in results] == [r["index"] for r in everything[:2]]


def test_documents_may_be_objects_with_text_and_the_other_paths_answer_too(s):
    as_objects = [{"text": d} for d in DOCUMENTS]
    expected = rerank(s).json()["results"]
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        body = {"model": "rerank-hf", "query": QUERY, "documents": as_objects}
        results = s.http.post(path, json=body).raise_for_status().json()["results"]
        assert [r["index"] for r in results] == [r["index"] for r in expected]


def test_a_long_document_is_cut_to_the_context_and_still_scored(s):
    long = " ".join(["fox"] * 2000)
    results = rerank(s, model="rerank-gguf", documents=[long, "a lazy dog"]).raise_for_status().json()["results"]
    assert len(results) == 2


@pytest.mark.parametrize(("body", "param"), [
    ({"documents": []}, "documents"),
    ({"query": ""}, "query"),
    ({"top_n": 0}, "top_n"),
    ({"documents": [{"title": "no text"}]}, "documents.0.str"),
])
def test_bad_rerank_requests_are_a_400_naming_the_field(s, body, param):
    response = rerank(s, **body)
    assert response.status_code == 400 and response.json()["error"]["param"].startswith(param.split(".")[0])


@pytest.mark.parametrize("model", ["rerank-hf", "rerank-gguf"])
def test_a_query_that_fills_the_context_is_a_400(s, model):
    response = rerank(s, model=model, query=" ".join(["fox"] * 700))
    assert response.status_code == 400 and response.json()["error"]["param"] == "query"


def test_a_model_that_cannot_rerank_is_a_400(s):
    response = rerank(s, model="chat")
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_model_capability"
