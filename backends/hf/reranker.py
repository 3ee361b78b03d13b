"""A Hugging Face cross-encoder reranker (bge-reranker and kin: ...ForSequenceClassification) inside a
worker process: each (query, document) pair is read together and scored."""

from __future__ import annotations

import threading
from typing import Any

from backends import checkpoint, text
from backends.contract import Cancel, Chunks, InvalidInput, RerankParams, RerankResult
from backends.hf.plan import HfRerankPlan
from backends.plan import MIB


class HfRerankAdapter:
    def __init__(self, plan: HfRerankPlan):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        self.plan = plan
        self.model_id = plan.model_id
        self.model, self.tokenizer = checkpoint.load_with_processor(AutoModelForSequenceClassification,
                                                                    AutoTokenizer, plan)
        self.labels = int(self.model.config.num_labels)
        self._lock = threading.Lock()
        self._requests = 0

    def memory_mb(self) -> float:
        return self.model.get_memory_footprint() / MIB + self.plan.estimate().activations_mb

    def stats(self) -> dict[str, Any]:
        return {"requests": self._requests}

    def close(self) -> None:
        self.model = None

    def rerank(self, params: RerankParams, cancel: Cancel) -> Chunks:
        """Relevance in [0, 1]: the sigmoid of a one-label head's logit (bge-reranker's own reading), or
        the probability of the last label of a two-label head."""
        torch = self._torch
        if not params.documents:
            raise InvalidInput("documents must not be empty", param="documents")
        query = len(self.tokenizer(params.query).input_ids)
        # Each document is cut to what the context leaves after the query; a query must leave some room.
        text.check_context(query, self.plan.context_length, "query", what="the query", room=8)
        scores: list[float] = []
        tokens = 0
        with self._lock:
            for start in range(0, len(params.documents), self.plan.batch):
                if cancel:
                    break
                pairs = [(params.query, doc) for doc in params.documents[start:start + self.plan.batch]]
                batch = self.tokenizer(pairs, padding=True, truncation="only_second",
                                       max_length=self.plan.context_length, return_tensors="pt")
                tokens += int(batch["attention_mask"].sum())
                with torch.inference_mode():
                    logits = self.model(**{k: v.to(self.plan.device) for k, v in batch.items()}).logits.float()
                relevance = logits[:, 0].sigmoid() if self.labels == 1 else logits.softmax(dim=-1)[:, -1]
                scores.extend(relevance.cpu().tolist())
        self._requests += 1
        result: RerankResult = {"scores": scores, "usage": {"prompt_tokens": tokens}}
        return result
        yield  # a generator like every capability method, though it yields nothing
