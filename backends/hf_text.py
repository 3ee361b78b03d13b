"""Hugging Face transformers text adapter: causal LMs in fp16/bf16/fp32, bitsandbytes 4/8-bit, GPTQ.

Runs in a worker process; torch and transformers are imported when a model loads. Loading is
local-only, safetensors-only and never runs code from the model directory. Generation is our own
token-by-token decode loop over the model's KV cache rather than `generate()`: every step we apply
logit bias, penalties and the JSON grammar mask, sample with the request's own torch.Generator
(same seed, same output), read logprobs, poll the Cancel flag (a disconnect stops the compute at
the next token) and stream the decoded text through the stop-string matcher.

Device and dtype: `device: auto` uses CUDA when torch sees it. `dtype: auto` keeps the checkpoint's
dtype on a GPU and uses float32 on a CPU, because CPU fp16 matmuls are emulated or missing on most
CPUs and bf16 is only fast with AMX; float32 is exact and the fastest CPU path for small models.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import json
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backends.base import Cancel, ChatParams, Chunks, CompletionParams, EmbeddingParams, InvalidInput, StopMatcher

# Fill-in-the-middle token triples (prefix, suffix, middle) of the common code-model families.
FIM_TOKENS = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, DeepSeek-style
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<|fim_begin|>", "<|fim_hole|>", "<|fim_end|>"),  # DeepSeek-Coder
    ("<PRE>", "<SUF>", "<MID>"),  # CodeLlama
    ("▁<PRE>", "▁<SUF>", "▁<MID>"),  # CodeLlama (sentencepiece spelling)
)
# Used when a tokenizer has no chat template and models.yaml gives none (base models).
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
DEFAULT_CONTEXT = 8192  # must match server.registry.DEFAULT_HF_CONTEXT
_DTYPES = ("float16", "bfloat16", "float32")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class HfTextAdapter:
    def __init__(self, spec: dict[str, Any]):
        # gptqmodel sizes its CPU thread pools from the core count and fails on 2 cores without this.
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        import transformers

        self._torch = torch
        self.model_id = spec["id"]
        self.options = spec.get("options") or {}
        self.path = Path(spec["path"])
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a Hugging Face model directory (no config.json)")
        if not list(self.path.glob("*.safetensors")):
            raise FileNotFoundError(f"{self.path} has no .safetensors weights (pickle checkpoints are refused)")
        config = json.loads((self.path / "config.json").read_text())
        self.device = self._device()
        quant = "gptq" if (config.get("quantization_config") or {}).get("quant_method") == "gptq" \
            else self.options.get("quantization", "none")
        self.quantization = quant
        self.dtype = self._dtype(config)
        self.causal = any(a.endswith(_CAUSAL_SUFFIXES) for a in config.get("architectures") or [])
        self.embedding = bool(self.options.get("embedding")) or not self.causal
        local = {"local_files_only": True, "trust_remote_code": False}
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, **local)
        kwargs: dict[str, Any] = {**local, "use_safetensors": True, "dtype": getattr(torch, self.dtype),
                                  "device_map": self.device}
        if quant in ("4bit", "8bit"):
            kwargs["quantization_config"] = self._bnb_config(transformers, quant)
        auto = transformers.AutoModelForCausalLM if self.causal else transformers.AutoModel
        self.model = auto.from_pretrained(self.path, **kwargs).eval()
        text = getattr(self.model.config, "text_config", None) or self.model.config
        self.config = text
        self.vocab = len(self.tokenizer)
        limit = spec.get("context_length") or getattr(text, "max_position_embeddings", None) or DEFAULT_CONTEXT
        self.context = int(limit) if spec.get("context_length") else min(int(limit), DEFAULT_CONTEXT)
        self.eos_ids = self._eos_ids()
        self.template = self._template()
        self.fim = self._fim_tokens()
        accepted = inspect.signature(self.model.forward).parameters
        self._keep_arg = "logits_to_keep" in accepted
        # transformers 5.2x renamed past_key_values to cache (the old name warns)
        self._cache_arg = "cache" if "cache" in accepted else "past_key_values"
        self._lock = threading.Lock()  # one request at a time: the model and its cache are not shared
        self._tokens_generated = 0
        self._requests = 0
        self._guidance_tokenizer = None

    # ---- loading ----------------------------------------------------------------------------

    def _device(self) -> str:
        wanted = self.options.get("device", "auto")
        has_cuda = self._torch.cuda.is_available()
        if wanted == "cuda" and not has_cuda:
            raise RuntimeError("device: cuda was asked for but torch sees no CUDA device")
        return "cuda" if wanted == "cuda" or (wanted == "auto" and has_cuda) else "cpu"

    def _dtype(self, config: dict[str, Any]) -> str:
        wanted = self.options.get("dtype", "auto")
        if wanted != "auto":
            return wanted
        if self.device == "cpu":
            return "float32"
        stored = config.get("torch_dtype") or config.get("dtype")
        return stored if stored in _DTYPES else "float16"

    def _bnb_config(self, transformers, quant: str):
        if quant == "8bit":
            return transformers.BitsAndBytesConfig(load_in_8bit=True)
        compute = self.options.get("bnb_4bit_compute_dtype", "auto")
        compute = self.dtype if compute == "auto" else compute
        return transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.options.get("bnb_4bit_quant_type", "nf4"),
            bnb_4bit_compute_dtype=getattr(self._torch, compute),
            bnb_4bit_use_double_quant=bool(self.options.get("double_quant", False)),
        )

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        sources = [self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)
                   if getattr(self.model, "generation_config", None) else None]
        for value in sources:
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    def _template(self):
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        source = self.options.get("chat_template") or self.tokenizer.chat_template or FALLBACK_TEMPLATE
        if isinstance(source, dict):  # named templates: take the default one
            source = source.get("default") or next(iter(source.values()))

        def raise_exception(message: str):
            raise TemplateError(message)

        def tojson(value: Any, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
            # transformers' own filter: no HTML escaping (jinja2's built-in would turn < into \u003c)
            return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)

        # The sandbox refuses attribute access to internals: a template from a downloaded model
        # must not reach Python objects (the llama-cpp-python CVE-2024-34359 class of bug). The
        # environment mirrors what transformers gives templates (loop controls, tojson, helpers).
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        return env.from_string(source)

    def _fim_tokens(self) -> tuple[str, str, str] | None:
        vocab = self.tokenizer.get_vocab()
        return next((triple for triple in FIM_TOKENS if all(t in vocab for t in triple)), None)

    # ---- the adapter protocol ---------------------------------------------------------------

    def memory_mb(self) -> float:
        weights = self.model.get_memory_footprint()
        element = 4 if self.dtype == "float32" else 2
        cfg = self.config
        heads = getattr(cfg, "num_attention_heads", 1) or 1
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or (getattr(cfg, "hidden_size", 0) // heads)
        layers = getattr(cfg, "num_hidden_layers", 0)
        kv = 2 * layers * kv_heads * head_dim * self.context * element if self.causal else 0
        own = weights + kv
        if self.device == "cuda":  # what torch really holds, when NVML cannot see this process
            own = max(own, self._torch.cuda.memory_reserved())
        return own / (1024 * 1024)

    def stats(self) -> dict[str, Any]:
        return {"tokens_generated": self._tokens_generated, "requests": self._requests,
                "weights_bytes": self.model.get_memory_footprint(), "dtype": self.dtype,
                "quantization": self.quantization, "device": self.device, "context_length": self.context}

    def close(self) -> None:
        self.model = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()

    def chat(self, params: ChatParams, cancel: Cancel) -> Chunks:
        self._need_causal()
        prompt = self.render(params.messages, params.tools)
        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        top = params.top_logprobs if params.logprobs else None
        return (yield from self._generate(ids, params, cancel, top, "messages"))

    def complete(self, params: CompletionParams, cancel: Cancel) -> Chunks:
        self._need_causal()
        prompt = params.prompt
        if params.suffix is not None:
            if self.fim is None:
                raise InvalidInput("this model has no fill-in-the-middle tokens; `suffix` is not supported",
                                   param="suffix", code="unsupported_parameter")
            prefix_tok, suffix_tok, middle_tok = self.fim
            prompt = f"{prefix_tok}{prompt}{suffix_tok}{params.suffix}{middle_tok}"
        ids = self.tokenizer(prompt).input_ids
        echo = params.echo and params.suffix is None
        return (yield from self._generate(ids, params, cancel, params.logprobs, "prompt", echo=echo))

    def embed(self, params: EmbeddingParams, cancel: Cancel) -> Chunks:
        torch = self._torch
        if not self.embedding:
            raise InvalidInput("this model does not serve embeddings (set `embedding: true` in models.yaml)",
                               param="model", code="unsupported")
        if not params.inputs:
            raise InvalidInput("input must not be empty", param="input")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Right padding keeps each text's positions as they would be alone (a causal LM numbers
        # positions from the left edge); the attention mask then hides the padding from the mean.
        self.tokenizer.padding_side = "right"
        vectors: list[list[float]] = []
        total = 0
        with self._acquire(cancel):
            for start in range(0, len(params.inputs), 16):
                if cancel:
                    break
                batch = self.tokenizer(params.inputs[start:start + 16], padding=True, return_tensors="pt")
                lengths = batch["attention_mask"].sum(dim=1)
                if int(lengths.max()) > self.context:
                    raise InvalidInput(f"This model's maximum context length is {self.context} tokens; an input "
                                       f"has {int(lengths.max())}.", param="input", code="context_length_exceeded")
                total += int(lengths.sum())
                batch = {k: v.to(self.model.device) for k, v in batch.items()}
                extra = {"logits_to_keep": 1} if self._keep_arg else {}
                with torch.inference_mode():
                    out = self.model(**batch, output_hidden_states=True, **extra)
                hidden = out.hidden_states[-1] if getattr(out, "hidden_states", None) else out.last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
                pooled = (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                vectors.extend(pooled.cpu().tolist())
        self._requests += 1
        return {"embeddings": vectors, "usage": {"prompt_tokens": total}}
        yield  # a generator like every capability method, though it yields nothing

    # ---- internals ------------------------------------------------------------------------

    def _need_causal(self) -> None:
        if not self.causal:
            raise InvalidInput("this model is an encoder; it serves embeddings only", param="model",
                               code="unsupported")

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        from jinja2.exceptions import TemplateError

        plain = [{**m, "content": _text_of(m.get("content"))} for m in messages]
        special = {name: getattr(self.tokenizer, name, None) or "" for name in
                   ("bos_token", "eos_token", "unk_token", "pad_token")}
        try:
            return self.template.render(messages=plain, tools=tools, add_generation_prompt=True, **special)
        except TemplateError as exc:
            raise InvalidInput(f"the chat template refused these messages: {exc}", param="messages") from None

    @contextlib.contextmanager
    def _acquire(self, cancel: Cancel) -> Iterator[None]:
        """Hold the model for one request, giving up if the client leaves while waiting."""
        while not self._lock.acquire(timeout=0.05):
            if cancel:
                raise InvalidInput("request cancelled while waiting for the model", code="cancelled")
        try:
            yield
        finally:
            self._lock.release()

    def _check_context(self, prompt_len: int, param: str) -> None:
        if prompt_len >= self.context:
            raise InvalidInput(f"This model's maximum context length is {self.context} tokens; the prompt has "
                               f"{prompt_len}.", param=param, code="context_length_exceeded")

    def _generate(self, ids: list[int], params, cancel: Cancel, top: int | None, param: str,
                  echo: bool = False) -> Chunks:
        torch = self._torch
        self._check_context(len(ids), param)
        bias = self._bias(params.logit_bias)
        matcher = self._grammar(params.response_format)
        budget = self.context - len(ids)
        if params.max_tokens is not None:
            budget = min(budget, params.max_tokens)
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        generator = torch.Generator(device=self.model.device).manual_seed(seed % (2**63))
        stops = StopMatcher(params.stop)
        detok = _Detokenizer(self.tokenizer)
        pending: list[dict[str, Any]] = []
        produced, finish, offset, hit = 0, "length", 0, False
        with self._acquire(cancel):
            self._requests += 1
            if echo:
                prompt_text = self.tokenizer.decode(ids, skip_special_tokens=True)
                offset = len(prompt_text)
                chunk: dict[str, Any] = {"text": prompt_text}
                if top is not None:
                    chunk["logprobs"] = self._prompt_logprobs(ids, top)
                yield chunk
            counts = torch.zeros(self.vocab_rows(), dtype=torch.float32, device=self.model.device)
            past = None
            step_input = torch.tensor([ids], device=self.model.device)
            while produced < budget:
                if cancel:
                    finish = "cancelled"
                    break
                logits, past = self._forward(step_input, past)
                raw = logits
                logits = logits.clone()
                logits[self.vocab:] = -math.inf  # padded rows of the embedding are not tokens
                if bias is not None:
                    logits += bias
                if params.presence_penalty or params.frequency_penalty:
                    logits -= params.presence_penalty * (counts > 0) + params.frequency_penalty * counts
                if matcher is not None:
                    self._mask(matcher, logits)
                token = self._sample(logits, params.temperature, params.top_p, generator)
                produced += 1
                self._tokens_generated += 1
                counts[token] += 1
                if matcher is not None:
                    matcher.consume_token(token)
                if token in self.eos_ids:
                    finish = "stop"
                    break
                if top is not None:
                    entry = self._token_logprob(raw, token, top)
                    entry["text_offset"] = offset
                    pending.append(entry)
                text = detok.push(token)
                offset += len(text)
                safe, hit = stops.feed(text)
                if safe or (hit and pending):
                    yield self._chunk(safe, pending, top)
                    pending = []
                if hit or (matcher is not None and matcher.is_stopped()):
                    finish = "stop"
                    break
                step_input = torch.tensor([[token]], device=self.model.device)
            if not hit:
                # Ended by length, end-of-sequence or the grammar: text held back for a stop string
                # that never came (and a last partial character) is output too.
                tail = stops.flush() + (detok.flush() if finish != "cancelled" else "")
                if tail or pending:
                    yield self._chunk(tail, pending, top)
            elif pending:
                yield self._chunk("", pending, top)
        return {"finish_reason": finish, "usage": {"prompt_tokens": len(ids), "completion_tokens": produced}}

    def vocab_rows(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def _forward(self, step_input, past):
        extra = {"logits_to_keep": 1} if self._keep_arg else {}
        with self._torch.inference_mode():
            out = self.model(input_ids=step_input, use_cache=True, **{self._cache_arg: past}, **extra)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return out.logits[0, -1].float(), cache

    def _sample(self, logits, temperature: float, top_p: float, generator) -> int:
        torch = self._torch
        if temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p  # always keeps the first
            filtered = torch.zeros_like(probs)
            filtered[order[keep]] = sorted_probs[keep]
            probs = filtered
        return int(torch.multinomial(probs, 1, generator=generator))

    def _bias(self, logit_bias: dict[str, float]):
        if not logit_bias:
            return None
        bias = self._torch.zeros(self.vocab_rows(), dtype=self._torch.float32, device=self.model.device)
        for key, value in logit_bias.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise InvalidInput(f"logit_bias key {key!r} is not a token id", param="logit_bias") from None
            if not 0 <= token < self.vocab:
                raise InvalidInput(f"logit_bias token {token} is outside the vocabulary (0..{self.vocab - 1})",
                                   param="logit_bias")
            bias[token] = float(value)
        return bias

    # ---- constrained decoding (llguidance) ----------------------------------------------------

    def _grammar(self, response_format: dict[str, Any] | None):
        if not response_format or response_format.get("type") in (None, "text"):
            return None
        kind = response_format.get("type")
        if kind == "json_object":
            schema: dict[str, Any] = {"type": "object"}
        elif kind == "json_schema":
            schema = response_format.get("schema") or {}
            if not isinstance(schema, dict):
                raise InvalidInput("response_format.json_schema.schema must be an object", param="response_format")
        else:
            raise InvalidInput(f"response_format type {kind!r} is not supported", param="response_format")
        try:
            import llguidance
            import llguidance.hf
        except ImportError:
            raise InvalidInput("constrained JSON output needs the llguidance package on the server",
                               param="response_format") from None
        if self._guidance_tokenizer is None:
            self._guidance_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab,
                                                                    eos_token=sorted(self.eos_ids) or None)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._guidance_tokenizer)
        if is_error:
            raise InvalidInput(f"response_format schema is not usable: {messages[0]}", param="response_format")
        return llguidance.LLMatcher(self._guidance_tokenizer, grammar, log_level=0)

    def _mask(self, matcher, logits) -> None:
        torch = self._torch
        if matcher.is_error():
            raise RuntimeError(f"constrained decoding failed: {matcher.get_error()}")
        words = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.int32)
        bits = (words.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
        allowed = bits.flatten()[: self.vocab].to(torch.bool).to(logits.device)
        logits[: self.vocab][~allowed] = -math.inf

    # ---- logprobs -----------------------------------------------------------------------------

    def _token_logprob(self, logits, token: int, top: int) -> dict[str, Any]:
        torch = self._torch
        logprobs = torch.log_softmax(logits[: self.vocab], dim=-1)
        entry = {**self._token_entry(token, float(logprobs[token])), "top_logprobs": []}
        if top:
            values, indices = torch.topk(logprobs, min(top, self.vocab))
            entry["top_logprobs"] = [self._token_entry(int(i), float(v)) for v, i in zip(values, indices, strict=True)]
        return entry

    def _token_entry(self, token: int, logprob: float) -> dict[str, Any]:
        raw = _token_bytes(self.tokenizer, token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    def _prompt_logprobs(self, ids: list[int], top: int) -> list[dict[str, Any]]:
        """Echoed prompt tokens with their logprobs; the first has none (as OpenAI's API gives it)."""
        torch = self._torch
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids], device=self.model.device)).logits[0].float()
        entries, offset = [], 0
        for position, token in enumerate(ids):
            if position == 0:
                entry = {**self._token_entry(token, 0.0), "logprob": None, "top_logprobs": []}
            else:
                entry = self._token_logprob(logits[position - 1], token, top)
            entry["text_offset"] = offset
            offset += len(self.tokenizer.decode([token], skip_special_tokens=True))
            entries.append(entry)
        return entries

    @staticmethod
    def _chunk(text: str, pending: list[dict[str, Any]], top: int | None) -> dict[str, Any]:
        chunk: dict[str, Any] = {"text": text}
        if top is not None:
            chunk["logprobs"] = list(pending)
        return chunk


class _Detokenizer:
    """Incremental decoding that never emits half a UTF-8 character or a wrong leading space."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix:], skip_special_tokens=True)
        self.prefix = self.read = len(self.ids)
        return after[len(before):]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


_BYTE_DECODER = _byte_decoder()


def _token_bytes(tokenizer, token: int) -> bytes:
    """The exact bytes a token stands for (byte-level BPE, sentencepiece byte tokens, or plain text)."""
    piece = tokenizer.convert_ids_to_tokens(token)
    if piece is None:
        return b""
    if piece in tokenizer.all_special_tokens:
        return piece.encode()
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    if all(c in _BYTE_DECODER for c in piece):
        return bytes(_BYTE_DECODER[c] for c in piece)
    return piece.replace("▁", " ").encode()


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)
