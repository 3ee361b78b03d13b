"""POST /v1/rerank (also /rerank and /v2/rerank): the Jina/Cohere request and response."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from server.protocol.common import KeepAlive, WireModel

DocumentText = Annotated[str, Field(max_length=100_000)]


class Document(WireModel):
    text: DocumentText


class RerankRequest(WireModel):
    model: str = Field(min_length=1, max_length=256)
    query: str = Field(min_length=1, max_length=100_000)
    documents: list[DocumentText | Document] = Field(min_length=1, max_length=1000)
    top_n: Annotated[int, Field(ge=1, le=1000)] | None = None
    return_documents: bool = True
    keep_alive: KeepAlive = None

    def texts(self) -> list[str]:
        return [doc.text if isinstance(doc, Document) else doc for doc in self.documents]


def response(rid: str, model: str, texts: list[str], scores: list[float], top_n: int | None,
             return_documents: bool, prompt_tokens: int) -> dict[str, Any]:
    """Results most relevant first, each with its index in the request's documents."""
    ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[:top_n]
    results = []
    for index in ranked:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if return_documents:
            result["document"] = {"text": texts[index]}
        results.append(result)
    return {"id": rid, "object": "list", "model": model, "results": results,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
