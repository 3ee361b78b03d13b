"""ONNX Runtime inside a worker process: embeddings (pooled token states) and rerank (a cross-encoder's
logits) from an exported graph, on the CPU or CUDA execution provider, float or int8 graphs alike.

The tokenizer is the `tokenizers` library reading tokenizer.json (no transformers import: the worker
stays small). The graph's own input names say what it is fed (input_ids, attention_mask and, when
declared, token_type_ids); its first output, or `sentence_embedding` where an export has pooled
already, is read.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np

from backends import text
from backends.contract import (
    Cancel,
    Chunks,
    DetokenizeParams,
    EmbeddingParams,
    InvalidInput,
    RerankParams,
    TokenizeParams,
)
from backends.onnx.plan import BATCH, OnnxPlan
from backends.plan import MIB

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class OnnxAdapter:
    def __init__(self, plan: OnnxPlan):
        import onnxruntime
        from tokenizers import Tokenizer

        self.plan = plan
        self.model_id = plan.model_id
        if plan.device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RuntimeError("device: cuda was planned but this ONNX Runtime has no CUDA execution provider")
        if not plan.graph.is_file():
            raise FileNotFoundError(f"{plan.graph} does not exist (set options.file to the .onnx graph to run)")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = plan.threads
        self.session = onnxruntime.InferenceSession(str(plan.graph), options, providers=PROVIDERS[plan.device])
        self.inputs = {i.name for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = "sentence_embedding" if "sentence_embedding" in outputs else outputs[0]
        self.tokenizer = Tokenizer.from_file(str(plan.path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.pad_id = self._pad_id()
        self.n_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self._lock = threading.Lock()
        self._requests = 0

    def _pad_id(self) -> int:
        try:
            config = json.loads((self.plan.path / "tokenizer_config.json").read_text())
        except (OSError, ValueError):
            config = {}
        token = config.get("pad_token")
        token = token.get("content") if isinstance(token, dict) else token
        found = self.tokenizer.token_to_id(token) if isinstance(token, str) else None
        return found if found is not None else 0

    def memory_mb(self) -> float:
        return self.plan.graph_bytes / MIB + self.plan.estimate().activations_mb

    def stats(self) -> dict[str, Any]:
        return {"requests": self._requests, "graph": self.plan.graph.name}

    def close(self) -> None:
        self.session = None

    # ---- capabilities ----------------------------------------------------------------------------

    def embed(self, params: EmbeddingParams, cancel: Cancel) -> Chunks:
        if self.plan.task != "embedding":
            raise text.unsupported(self.model_id, "is a reranker")
        yield from ()
        if params.token_inputs is not None:
            encoded = [(text.check_token_ids(ids, self.n_vocab, "input", f"input[{i}]"), [0] * len(ids))
                       for i, ids in enumerate(params.token_inputs)]
        else:
            encoded = [(e.ids, e.type_ids) for e in self.tokenizer.encode_batch(list(params.inputs))]
        if not encoded:
            raise InvalidInput("input must not be empty", param="input")
        for i, (ids, _) in enumerate(encoded):
            text.check_context(len(ids), self.plan.context_length, "input", what=f"input {i}", room=0)
        vectors: list[list[float]] = []
        with self._lock:
            for start in range(0, len(encoded), BATCH):
                if cancel:
                    break
                states, mask = self._run(encoded[start:start + BATCH])
                vectors.extend(_normalized(self._pool(states, mask)).tolist())
        self._requests += 1
        return {"embeddings": vectors, "usage": {"prompt_tokens": sum(len(ids) for ids, _ in encoded)}}

    def rerank(self, params: RerankParams, cancel: Cancel) -> Chunks:
        """Relevance in [0, 1], read as the HF reranker reads it (backends/hf/reranker.py)."""
        if self.plan.task != "rerank":
            raise text.unsupported(self.model_id, "is an embedding model")
        if not params.documents:
            raise InvalidInput("documents must not be empty", param="documents")
        yield from ()
        query = len(self.tokenizer.encode(params.query).ids)
        text.check_context(query, self.plan.context_length, "query", what="the query", room=8)
        self.tokenizer.enable_truncation(self.plan.context_length, strategy="only_second")
        try:
            encoded = [(e.ids, e.type_ids) for e in
                       self.tokenizer.encode_batch([(params.query, doc) for doc in params.documents])]
        finally:
            self.tokenizer.no_truncation()
        scores: list[float] = []
        with self._lock:
            for start in range(0, len(encoded), BATCH):
                if cancel:
                    break
                logits, _ = self._run(encoded[start:start + BATCH])
                logits = logits.astype(np.float64)
                relevance = 1 / (1 + np.exp(-logits[:, 0])) if logits.shape[1] == 1 else _softmax(logits)[:, -1]
                scores.extend(relevance.tolist())
        self._requests += 1
        return {"scores": scores, "usage": {"prompt_tokens": sum(len(ids) for ids, _ in encoded)}}

    def tokenize(self, params: TokenizeParams, cancel: Cancel) -> Chunks:
        if params.messages is not None:
            raise InvalidInput("this model has no chat template; send a prompt", param="messages")
        yield from ()
        encoding = self.tokenizer.encode(params.text or "", add_special_tokens=params.add_special_tokens)
        return {"tokens": encoding.ids, "pieces": encoding.tokens}

    def detokenize(self, params: DetokenizeParams, cancel: Cancel) -> Chunks:
        yield from ()
        ids = text.check_token_ids(params.tokens, self.n_vocab, "tokens")
        return {"text": self.tokenizer.decode(ids, skip_special_tokens=False)}

    # ---- the graph -------------------------------------------------------------------------------

    def _run(self, batch: list[tuple[list[int], list[int]]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ids, mask (and type ids when the graph takes them) in; its output and the mask out."""
        width = max(len(ids) for ids, _ in batch)
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, (tokens, type_ids) in enumerate(batch):
            ids[row, :len(tokens)], types[row, :len(tokens)], mask[row, :len(tokens)] = tokens, type_ids, 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        [output] = self.session.run([self.output], {name: value for name, value in feed.items() if name in self.inputs})
        return output, mask

    def _pool(self, states: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if states.ndim == 2:
            return states  # the export pooled already (sentence_embedding)
        if self.plan.pooling == "cls":
            return states[:, 0]
        weights = mask[..., None].astype(np.float32)
        return (states * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1.0, None)


def _normalized(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
