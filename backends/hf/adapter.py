"""Hugging Face transformers text adapter: causal LMs in fp16/bf16/fp32, bitsandbytes 4/8-bit, GPTQ.

Runs in a worker process; torch and transformers are imported when a model loads. Loading is
local-only, safetensors-only and never runs code from the model directory. Generation is our own
token-by-token decode loop over the model's KV cache rather than `generate()`: every step we apply
logit bias, penalties and the JSON grammar mask, sample with the request's own torch.Generator
(same seed, same output), read logprobs, poll the Cancel flag (a disconnect stops the compute at
the next token) and stream the decoded text through the stop-string matcher. Device, dtype,
quantization and context come decided in the plan (spec.py).
"""

from __future__ import annotations

import inspect
import math
import os
import threading
from pathlib import Path
from typing import Any

from backends import bundle, text
from backends.batcher import Batcher
from backends.contract import (
    Cancel,
    ChatParams,
    Chunks,
    CompletionParams,
    DetokenizeParams,
    EmbeddingParams,
    InvalidInput,
    TextChunk,
    TokenizeParams,
    TokenLogprob,
)
from backends.hf.batch import Row, Scheduler, batchable
from backends.hf.decode import make_decoder
from backends.hf.guidance import Guidance
from backends.hf.lora import Loras
from backends.hf.plan import HfPlan
from backends.hf.tokens import fim_tokens, token_bytes
from backends.plan import MIB
from backends.relay import LetGoTimeout, relay

EMBED_BATCH = 32  # inputs per embedding forward


class HfTextAdapter:
    batches = True  # concurrent requests decode as rows of one batch (backends/hf/batch.py)

    def __init__(self, plan: HfPlan):
        # gptqmodel sizes its CPU thread pools from the core count and fails on 2 cores without this.
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        import transformers

        self._torch = torch
        self.plan = plan
        if plan.n_threads:
            torch.set_num_threads(plan.n_threads)
        self.model_id = plan.model_id
        if plan.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device: cuda was planned but torch sees no CUDA device")
        if not (plan.path / "config.json").is_file():
            raise FileNotFoundError(f"{plan.path} is not a Hugging Face model directory (no config.json)")
        if not list(plan.path.glob("*.safetensors")):
            raise FileNotFoundError(f"{plan.path} has no .safetensors weights (pickle checkpoints are refused)")
        local = {"local_files_only": True, "trust_remote_code": False}
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(plan.path, **local)
        kwargs: dict[str, Any] = {**local, "use_safetensors": True, "dtype": getattr(torch, plan.dtype),
                                  "device_map": plan.device}
        if plan.quantization in ("4bit", "8bit"):
            kwargs["quantization_config"] = self._bnb_config(transformers)
        self.model = self._model_class(transformers).from_pretrained(plan.path, **kwargs).eval()
        self.text_model = self.model  # what reads token ids alone (a BLIP-2's language model)
        self.loras = Loras(self.model, plan.adapters) if plan.adapters else None
        self.vocab = len(self.tokenizer)
        self.context = plan.context_length
        self.eos_ids = self._eos_ids()
        self.template = text.ChatTemplate(plan.chat_template or self.tokenizer.chat_template)
        self.fim = fim_tokens(self.tokenizer)
        self.guidance = Guidance(self.tokenizer, self.vocab, self.eos_ids)
        # No token spells more bytes than its vocabulary entry (byte-level BPE and SentencePiece
        # entries are longer than their text): prompts longer than the context x this are refused
        # before tokenizing.
        self.longest_token_bytes = max(len(t.encode("utf-8")) for t in self.tokenizer.get_vocab())
        accepted = inspect.signature(self.model.forward).parameters
        self._keep_arg = "logits_to_keep" in accepted
        # transformers 5.2x renamed past_key_values to cache (the old name warns)
        self._cache_arg = "cache" if "cache" in accepted else "past_key_values"
        self._keep = {"logits_to_keep": 1} if self._keep_arg else {}
        self.decoder = make_decoder(plan.decode, torch, self.model, self._cache_arg, self._keep_arg,
                                    self.context) if plan.causal else None
        self._lock = threading.Lock()  # around every forward: the scheduler's, prompt logprobs, embeddings
        self._embedder: Batcher[list[int], list[float]] = Batcher(self._embed_batch)
        self._tokens_generated = 0
        self._requests = 0
        self._engine_s = 0.0
        self._engine_cpu_s = 0.0
        batched = self.batches and plan.decode == "dynamic" and batchable(self.model)
        self.scheduler = Scheduler(self, plan.n_parallel, batched) if plan.causal else None

    # ---- loading ----------------------------------------------------------------------------

    def _model_class(self, transformers):
        return transformers.AutoModelForCausalLM if self.plan.causal else transformers.AutoModel

    def _bnb_config(self, transformers):
        if self.plan.quantization == "8bit":
            return transformers.BitsAndBytesConfig(load_in_8bit=True)
        return transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=self.plan.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=getattr(self._torch, self.plan.bnb_4bit_compute_dtype),
            bnb_4bit_use_double_quant=self.plan.double_quant)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        generation = getattr(self.model, "generation_config", None)
        for value in (self.tokenizer.eos_token_id, getattr(generation, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    # ---- the adapter protocol ---------------------------------------------------------------

    def memory_mb(self) -> float:
        own = self.model.get_memory_footprint() + self.plan.estimate().kv_cache_mb * MIB
        if self.plan.device == "cuda":  # what torch really holds, when NVML cannot see this process
            own = max(own, self._torch.cuda.memory_reserved())
        return own / MIB

    def stats(self) -> dict[str, Any]:
        return {"tokens_generated": self._tokens_generated, "requests": self._requests, "engine_s": self._engine_s,
                "engine_cpu_s": self._engine_cpu_s,
                "adapters": self.loras.state() if self.loras else {},
                "weights_bytes": self.model.get_memory_footprint(), "dtype": self.plan.dtype,
                "quantization": self.plan.quantization, "device": self.plan.device, "context_length": self.context,
                "decode": self._decode_kind(),
                "peak_rows": self.scheduler.peak_rows if self.scheduler is not None else 0}

    def _decode_kind(self) -> str | None:
        """The decode path in use (cuda-graphs falls back to static when it cannot compile)."""
        if self.decoder is None:
            return None
        graphs = getattr(self.decoder, "graphs", False)
        return "cuda-graphs" if graphs else self.plan.decode if self.plan.decode != "cuda-graphs" else "static"

    def park(self, dest: Path) -> int:
        """Write the model as loaded (bitsandbytes weights stay quantized) with its tokenizer, as a
        directory a fresh worker loads without the original files. GPTQ weights are stored
        quantized already, so their files are copied as they are."""
        with self._lock:
            if self.plan.quantization == "gptq":
                return bundle.copy_files(self.plan.path, dest)
            if self.loras is not None:  # the base alone: a new worker loads the adapters from their files
                self.loras.remove()
            self.model.save_pretrained(dest, safe_serialization=True)
            self.tokenizer.save_pretrained(dest)
        return bundle.size_of(dest)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        self.model = None
        if self.plan.device == "cuda":
            self._torch.cuda.empty_cache()

    def chat(self, params: ChatParams, cancel: Cancel) -> Chunks:
        self._need_causal()
        prompt = self.render(params.messages, params.tools)
        text.check_bytes(prompt, self.context, self.longest_token_bytes, "messages")
        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        top = params.top_logprobs if params.logprobs else None
        return (yield from self._generate(ids, params, cancel, top, "messages"))

    def complete(self, params: CompletionParams, cancel: Cancel) -> Chunks:
        self._need_causal()
        prompt = params.prompt
        if params.prompt_tokens is not None:
            if params.suffix is not None:
                raise InvalidInput("`suffix` needs the prompt as text, not token ids", param="suffix")
            ids = text.check_token_ids(params.prompt_tokens, self.vocab, "prompt")
            return (yield from self._generate(ids, params, cancel, params.logprobs, "prompt", echo=params.echo))
        if params.suffix is not None:
            if self.fim is None:
                raise text.no_fill_in_the_middle(self.model_id)
            prefix_tok, suffix_tok, middle_tok = self.fim
            prompt = f"{prefix_tok}{prompt}{suffix_tok}{params.suffix}{middle_tok}"
        text.check_bytes(prompt, self.context, self.longest_token_bytes, "prompt")
        ids = self.tokenizer(prompt).input_ids
        echo = params.echo and params.suffix is None
        return (yield from self._generate(ids, params, cancel, params.logprobs, "prompt", echo=echo))

    def embed(self, params: EmbeddingParams, cancel: Cancel) -> Chunks:
        if not self.plan.embedding:
            raise text.unsupported(self.model_id, "does not serve embeddings (set `embedding: true` in models.yaml)")
        if params.token_inputs is not None:
            encoded = [text.check_token_ids(ids, self.vocab, "input", f"input[{i}]")
                       for i, ids in enumerate(params.token_inputs)]
        else:
            for i, item in enumerate(params.inputs):  # refused by size before tokenizing
                text.check_bytes(item, self.context, self.longest_token_bytes, "input", what=f"input {i}")
            encoded = self.tokenizer(params.inputs).input_ids if params.inputs else []
        if not encoded:
            raise InvalidInput("input must not be empty", param="input")
        longest = max(map(len, encoded))
        text.check_context(longest, self.context, "input", what="an input", room=0)
        vectors = self._embedder.submit(encoded, cancel)  # with other requests' inputs, in as few forwards
        self._requests += 1
        return {"embeddings": vectors, "usage": {"prompt_tokens": sum(map(len, encoded))}}
        yield  # a generator like every capability method, though it yields nothing

    def _embed_batch(self, encoded: list[list[int]]) -> list[list[float]]:
        """Mean-pooled, normalised last hidden states, EMBED_BATCH inputs a forward, inputs of like
        length together (less padding); in the inputs' order."""
        torch = self._torch
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Right padding keeps each text's positions as they would be alone (a causal LM numbers
        # positions from the left edge); the attention mask then hides the padding from the mean.
        self.tokenizer.padding_side = "right"
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        vectors: list[list[float]] = [[] for _ in encoded]
        extra = {"logits_to_keep": 1} if self._keep_arg else {}
        with self._lock:
            self._use_adapter(None)  # embeddings are the base's
            for start in range(0, len(order), EMBED_BATCH):
                chunk = order[start:start + EMBED_BATCH]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, padding=True,
                                           return_tensors="pt")
                batch = {k: v.to(self.model.device) for k, v in batch.items()}
                with torch.inference_mode():
                    out = self.model(**batch, output_hidden_states=True, **extra)
                hidden = out.hidden_states[-1] if getattr(out, "hidden_states", None) else out.last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
                pooled = (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                for i, row in zip(chunk, pooled.cpu().tolist(), strict=True):
                    vectors[i] = row
        return vectors

    def tokenize(self, params: TokenizeParams, cancel: Cancel) -> Chunks:
        """Text as a prompt is tokenized, or messages through the chat template, as generation would."""
        yield from ()
        if params.messages is not None:
            self._need_causal()
            ids = self.tokenizer(self.render(params.messages, params.tools), add_special_tokens=False).input_ids
        else:
            ids = self.tokenizer(params.text or "", add_special_tokens=params.add_special_tokens).input_ids
        return {"tokens": ids, "pieces": [self.tokenizer.decode([i]) for i in ids]}

    def detokenize(self, params: DetokenizeParams, cancel: Cancel) -> Chunks:
        yield from ()
        ids = text.check_token_ids(params.tokens, self.vocab, "tokens")
        return {"text": self.tokenizer.decode(ids)}

    # ---- internals ------------------------------------------------------------------------

    def _need_causal(self) -> None:
        if not self.plan.causal:
            raise text.unsupported(self.model_id, "is an encoder; it serves embeddings only")

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        special = {name: getattr(self.tokenizer, name, None) or "" for name in
                   ("bos_token", "eos_token", "unk_token", "pad_token")}
        return self.template.render(messages, tools, **special)

    def _generate(self, ids: list[int], params, cancel: Cancel, top: int | None, param: str,
                  echo: bool = False) -> Chunks:
        text.check_context(len(ids), self.context, param)
        if params.adapter is not None and self.loras is None:
            raise InvalidInput(f"model {self.model_id} has no adapter {params.adapter!r}", param="model")
        if self.loras is not None:
            self.loras.require(params.adapter, self.model_id)
        row = Row(self, ids, params, cancel, top, offset=0)  # refuses a bad bias or schema before any output
        self._requests += 1
        if echo:
            prompt_text = self.tokenizer.decode(ids, skip_special_tokens=True)
            row.offset = len(prompt_text)
            chunk: TextChunk = {"text": prompt_text}
            if top is not None:
                with cancel.holding(self._lock):
                    self._use_adapter(params.adapter)
                    chunk["logprobs"] = self._prompt_logprobs(ids, top)
            yield chunk
        self.scheduler.submit(row)
        try:
            return (yield from relay(row.events, cancel))
        except LetGoTimeout:
            return None  # the scheduler is gone (shutdown)

    def _use_adapter(self, name: str | None) -> None:
        """Decode with LoRA adapter `name` (None: the base alone); under the model's lock."""
        if self.loras is not None:
            self.loras.use(name)

    def vocab_rows(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def _sample(self, logits, params, generator) -> int:
        """Greedy at temperature 0; else temperature, top-k, top-p, min-p, then a draw with the
        request's generator (llama.cpp's chain in the same order: backends/gguf/sampler.py)."""
        torch = self._torch
        if params.temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / params.temperature
        if 0 < params.top_k < logits.shape[-1]:
            kth = torch.topk(logits, params.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p  # always keeps the first
            filtered = torch.zeros_like(probs)
            filtered[order[keep]] = sorted_probs[keep]
            probs = filtered
        if params.min_p > 0.0:
            probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _bias(self, logit_bias: dict[str, float]):
        checked = text.logit_bias(logit_bias, self.vocab)
        if not checked:
            return None
        bias = self._torch.zeros(self.vocab_rows(), dtype=self._torch.float32, device=self.model.device)
        for token, value in checked.items():
            bias[token] = value
        return bias

    # ---- logprobs -----------------------------------------------------------------------------

    def _token_logprob(self, logits, token: int, top: int, offset: int) -> TokenLogprob:
        torch = self._torch
        logprobs = torch.log_softmax(logits[: self.vocab], dim=-1)
        entry: TokenLogprob = {**self._token_entry(token, float(logprobs[token])),  # type: ignore[typeddict-item]
                               "text_offset": offset, "top_logprobs": []}
        if top:
            values, indices = torch.topk(logprobs, min(top, self.vocab))
            entry["top_logprobs"] = [self._token_entry(int(i), float(v)) for v, i in zip(values, indices, strict=True)]
        return entry

    def _token_entry(self, token: int, logprob: float) -> dict[str, Any]:
        raw = token_bytes(self.tokenizer, token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    def _prompt_logprobs(self, ids: list[int], top: int) -> list[TokenLogprob]:
        """Echoed prompt tokens with their logprobs; the first has none (as OpenAI's API gives it)."""
        torch = self._torch
        with torch.inference_mode():
            logits = self.text_model(input_ids=torch.tensor([ids], device=self.model.device)).logits[0].float()
        entries, offset = [], 0
        for position, token in enumerate(ids):
            if position == 0:
                entry = {**self._token_entry(token, 0.0), "logprob": None, "text_offset": offset, "top_logprobs": []}
            else:
                entry = self._token_logprob(logits[position - 1], token, top, offset)
            offset += len(self.tokenizer.decode([token], skip_special_tokens=True))
            entries.append(entry)
        return entries
