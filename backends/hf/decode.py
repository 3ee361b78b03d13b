"""The forward passes of one request over a transformers model's KV cache: the prompt, then a token a step.

Three ways, chosen per model by the plan's `decode` (models.yaml `options.decode`):

- `dynamic`: a DynamicCache grown token by token, eager forwards. The CPU default: measured fastest
  there (engine-facts.md, "Hugging Face decode").
- `static`: one StaticCache of the model's whole context, allocated once (it is exactly the full-context
  KV cache the memory estimate already counts) and reset per request; positions passed explicitly.
- `cuda-graphs`: `static`, with the one-token decode step compiled by torch.compile in
  "reduce-overhead" mode, which replays it as a CUDA graph: batch-1 decode on a GPU is bound by
  Python and kernel-launch overhead (12-16 tok/s for a 1.1B shape in bf16 on an H100, against ~690
  for llama.cpp), and a graph replay removes most of it. Compiled and warmed at load; if compiling or
  the first replay fails, the model keeps serving on the eager static path (logged once). On a CPU
  it is the static path.

Logits come back as a 1-D float32 tensor the caller may modify (a copy, never a graph's buffer).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("modelyard.hf.decode")


class Decoder:
    def __init__(self, torch: Any, model: Any, cache_arg: str, keep_arg: bool):
        self.torch = torch
        self.model = model
        self.cache_arg = cache_arg
        self.extra = {"logits_to_keep": 1} if keep_arg else {}

    def begin(self) -> None:
        """Start a request: an empty cache."""
        raise NotImplementedError

    def step(self, input_ids: Any) -> Any:
        """Feed `input_ids` ([1, n]: the prompt, then one token); the next token's logits."""
        raise NotImplementedError


class DynamicDecoder(Decoder):
    def begin(self) -> None:
        self._cache = None

    def step(self, input_ids: Any) -> Any:
        with self.torch.inference_mode():
            out = self.model(input_ids=input_ids, use_cache=True, **{self.cache_arg: self._cache}, **self.extra)
        self._cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return out.logits[0, -1].float()


class StaticDecoder(Decoder):
    def __init__(self, torch: Any, model: Any, cache_arg: str, keep_arg: bool, context: int, graphs: bool):
        super().__init__(torch, model, cache_arg, keep_arg)
        from transformers import StaticCache

        self.cache = StaticCache(config=model.config, max_cache_len=context)
        self.context = context
        self._position = 0
        self._compiled = None
        self.graphs = graphs
        if graphs:
            self._compile()

    def begin(self) -> None:
        with self.torch.inference_mode():
            if self._position:
                self.cache.reset()
        self._position = 0

    def step(self, input_ids: Any) -> Any:
        torch = self.torch
        length = int(input_ids.shape[1])
        positions = torch.arange(self._position, self._position + length, device=input_ids.device)
        if length == 1 and self._compiled is not None:
            try:
                torch.compiler.cudagraph_mark_step_begin()
                logits = self._compiled(input_ids, positions).clone()
                self._position += 1
                return logits
            except Exception as exc:  # a model or kernel the compiler cannot take: keep serving, eagerly
                log.warning("CUDA-graph decode failed (%s: %s); this model decodes eagerly from now on",
                            type(exc).__name__, exc)
                self._compiled = None
                self.graphs = False
        logits = self._forward(input_ids, positions)
        self._position += length
        return logits

    def _forward(self, input_ids: Any, positions: Any) -> Any:
        with self.torch.inference_mode():
            out = self.model(input_ids=input_ids, cache_position=positions, use_cache=True,
                             **{self.cache_arg: self.cache}, **self.extra)
        return out.logits[0, -1].float()

    def _compile(self) -> None:
        """Compile the one-token step and record its graph now, so the first request does not pay for it."""
        torch = self.torch
        if self.model.device.type != "cuda":  # a CPU model, even on a machine with a GPU (a CPU fit rung)
            log.warning("decode: cuda-graphs needs the model on a CUDA device; decoding with the static cache, eagerly")
            self.graphs = False
            return
        try:
            self._compiled = torch.compile(self._forward, mode="reduce-overhead", fullgraph=True)
            device = self.model.device
            self.begin()
            self.step(torch.tensor([[0]], device=device))  # the cache's tensors are made by the first update
            for _ in range(3):  # compile, then record the graph, then replay it
                self.step(torch.tensor([[0]], device=device))
            self.begin()
        except Exception as exc:
            log.warning("decode: compiling the CUDA-graph step failed (%s: %s); decoding eagerly",
                        type(exc).__name__, exc)
            self._compiled = None
            self.graphs = False
            self.begin()
        else:
            if self._compiled is not None:
                log.info("decode: one-token step compiled and captured as a CUDA graph (context %d)", self.context)


def make_decoder(kind: str, torch: Any, model: Any, cache_arg: str, keep_arg: bool, context: int) -> Decoder:
    if kind == "dynamic":
        return DynamicDecoder(torch, model, cache_arg, keep_arg)
    return StaticDecoder(torch, model, cache_arg, keep_arg, context, graphs=kind == "cuda-graphs")
