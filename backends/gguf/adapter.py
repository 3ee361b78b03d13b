"""GGUF models through llama-cpp-python: chat, completions (with fill-in-the-middle), embeddings, rerank.

We drive llama.cpp's decode and sampler chain ourselves rather than calling create_completion, so
that the Cancel flag is checked between tokens, several requests decode in one batch
(scheduler.py owns the context on one thread), logprobs come from the raw logits, and chat
templates render in jinja2's sandbox (llama-cpp-python's own template path was CVE-2024-34359).
Embedding models and rerankers (rank pooling: a classification head per sequence) decode their
inputs as pooled sequences under a lock. A projector file gives chats images (vision.py); declared
LoRA adapters load beside the base and are chosen per request (lora.py).
"""

from __future__ import annotations

import math
import threading
from typing import Any

from backends import text, tools
from backends.batcher import Batcher
from backends.contract import (
    Cancel,
    ChatParams,
    Chunks,
    CompletionParams,
    DetokenizeParams,
    EmbeddingParams,
    InvalidInput,
    RerankParams,
    SamplingParams,
    TokenizeParams,
)
from backends.gguf import sampler as sampling
from backends.gguf.file import GgufFile
from backends.gguf.lora import Loras
from backends.gguf.plan import GgufPlan
from backends.gguf.scheduler import Scheduler, Sequence
from backends.gguf.stream import TokenStream, Vocab
from backends.gguf.tokenizer import PromptTokenizer
from backends.gguf.vision import ImagePrompt, Projector, image_slots
from backends.guidance import Constraint, llama_tokenizer
from backends.plan import MIB
from backends.relay import LetGoTimeout, relay
from backends.tools import ToolConstraint


class GgufAdapter:
    def __init__(self, plan: GgufPlan):
        import llama_cpp

        self._lc = llama_cpp
        self.plan = plan
        self.model_id = plan.model_id
        self.file = GgufFile.read(plan.path)  # clear errors for empty/truncated files
        self.n_ctx = plan.context_length
        kwargs: dict[str, Any] = dict(n_ctx=self.n_ctx, n_gpu_layers=plan.n_gpu_layers, verbose=False,
                                      embedding=plan.pooled, n_threads=plan.n_threads,
                                      n_threads_batch=plan.n_threads_batch)
        if plan.pooled:
            # A pooled output needs the whole input in one micro-batch.
            kwargs.update(n_batch=self.n_ctx, n_ubatch=self.n_ctx)
            if plan.rerank:
                kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_RANK
            elif f"{self.file.architecture}.pooling_type" not in self.file.metadata:
                kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        else:
            # The loader's own context is a stub: generation runs on a context made for batching.
            kwargs.update(n_ctx=32, n_batch=32, n_ubatch=32)
        try:
            self.llama = llama_cpp.Llama(str(plan.path), **kwargs)
        except ValueError as exc:
            raise RuntimeError(f"llama.cpp could not load {plan.path.name}: {exc}") from None
        if plan.pooled and plan.flash_attn != "off":
            self._pooled_context(plan)
        self._counters = {"tokens_generated": 0, "peak_sequences": 0, "images": 0, "engine_s": 0.0, "engine_cpu_s": 0.0}
        self.loras: Loras | None = None
        self.scheduler = None if plan.pooled else self._batching_scheduler(plan.n_parallel)
        self.projector = Projector(llama_cpp, self.llama._model.model, plan.mmproj, plan.n_threads_batch,
                                   use_gpu=plan.device == "cuda") if plan.mmproj else None
        self.vocab = Vocab(llama_cpp, self.llama, spm=self.file.metadata.get("tokenizer.ggml.model") == "llama")
        self.tokenizer = PromptTokenizer(llama_cpp, self.llama)
        self._template_source = plan.chat_template or self.file.chat_template
        self._template: text.ChatTemplate | None = None
        self._lock = threading.Lock()
        self._embedder: Batcher[list[int], list[float]] = Batcher(self._embed_batch)
        self._prompt_tokens = 0
        self._requests = 0
        self._lltokenizer = None  # the vocabulary as llguidance sees it, built for the first schema

    # ---- the Adapter protocol ------------------------------------------------------------------

    def memory_mb(self) -> float:
        weights = self._lc.llama_model_size(self.llama._model.model)
        logits = self.vocab.n_vocab * 4 * min(self.n_ctx, 512)  # output buffer for a full micro-batch
        beside = (self.loras.memory_bytes() if self.loras else 0) + (self.plan.mmproj_bytes if self.projector else 0)
        return (weights + logits + beside) / MIB + self.plan.estimate().kv_cache_mb + 16.0

    def stats(self) -> dict[str, Any]:
        return {**self._counters, "prompt_tokens": self._prompt_tokens, "requests": self._requests,
                "n_ctx": self.n_ctx, "pooled_batches": self._embedder.batches,
                "adapters": self.loras.state() if self.loras else {}}

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
            if self.loras is not None:
                self.loras.close()
            self.ctx.close()
        else:
            self.llama._ctx.close()  # ours, maybe (_pooled_context): the loader closes only its own
        if self.projector is not None:
            self.projector.close()
        self.llama.close()

    def _flash_attn(self, plan: GgufPlan) -> int:
        lc = self._lc
        return {"auto": lc.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                "off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED}[plan.flash_attn]

    def _pooled_context(self, plan: GgufPlan) -> None:
        """The loader's context again, with flash attention as planned (the loader takes only on/off)."""
        from llama_cpp import _internals

        params = type(self.llama.context_params).from_buffer_copy(self.llama.context_params)
        params.flash_attn_type = self._flash_attn(plan)
        self.llama._ctx.close()
        self.llama._ctx = _internals.LlamaContext(model=self.llama._model, params=params, verbose=False)
        self.llama.context_params = params

    def _batching_scheduler(self, n_parallel: int) -> Scheduler:
        from llama_cpp import _internals

        params = type(self.llama.context_params).from_buffer_copy(self.llama.context_params)
        params.flash_attn_type = self._flash_attn(self.plan)
        params.n_ctx = self.n_ctx
        params.n_batch = params.n_ubatch = min(self.n_ctx, 512)
        params.n_seq_max = n_parallel
        params.kv_unified = True  # one pool of n_ctx cells: the memory estimate holds for any n_parallel
        self.llama._ctx.close()
        try:
            self.ctx = _internals.LlamaContext(model=self.llama._model, params=params, verbose=False)
        except ValueError as exc:
            raise RuntimeError(f"llama.cpp could not create a {self.n_ctx}-token context: {exc}") from None
        if self.plan.adapters:
            self.loras = Loras(self._lc, self.llama._model.model, self.ctx.ctx, self.plan.adapters, self.plan.path)
        return Scheduler(self._lc, self.ctx, self.n_ctx, n_parallel, params.n_batch, self.llama.n_vocab(),
                         self._counters, use_group=self.loras.use if self.loras else None)

    # ---- capabilities --------------------------------------------------------------------------

    def chat(self, params: ChatParams, cancel: Cancel) -> Chunks:
        self._text_model()
        marker = self.projector.marker if self.projector else None
        prompt = self._chat_prompt(params.messages, params.tools, marker)
        add_bos = self.vocab.adds_bos and not prompt.startswith(self.vocab.text(self.vocab.bos))
        top = params.top_logprobs if params.logprobs else None
        if self.projector is None or not params.images:
            tokens = self._tokenize(prompt, add_bos, cancel, "messages")
            return (yield from self._generate(tokens, params, cancel, top=top, param="messages"))
        text.check_bytes(prompt, self.n_ctx, self.tokenizer.longest_token_bytes, "messages")
        images = [params.images[i] for i in image_slots(params.messages)]
        tokens, media = self.projector.prompt(prompt, images, add_bos)
        self._counters["images"] += media.count
        try:
            return (yield from self._generate(tokens, params, cancel, top=top, param="messages", media=media))
        finally:
            media.close()

    def complete(self, params: CompletionParams, cancel: Cancel) -> Chunks:
        self._text_model()
        prompt = params.prompt
        if params.prompt_tokens is not None:
            if params.suffix is not None:
                raise InvalidInput("`suffix` needs the prompt as text, not token ids", param="suffix")
            tokens = text.check_token_ids(params.prompt_tokens, self.vocab.n_vocab, "prompt")
            prompt = self.llama.detokenize(tokens, special=True).decode("utf-8", errors="replace")
        elif params.suffix is not None:
            tokens = self._fim_tokens(params.prompt, params.suffix, cancel)
        else:
            tokens = self._tokenize(params.prompt, self.vocab.adds_bos, cancel, "prompt")
        echo = prompt if params.echo else None
        return (yield from self._generate(tokens, params, cancel, top=params.logprobs, param="prompt", echo=echo))

    def embed(self, params: EmbeddingParams, cancel: Cancel) -> Chunks:
        if not self.plan.embedding:
            raise text.unsupported(self.model_id, "is not declared as an embedding model (options.embedding: true)")
        yield from ()
        if params.token_inputs is not None:
            sequences = [text.check_token_ids(ids, self.vocab.n_vocab, "input", f"input[{i}]")
                         for i, ids in enumerate(params.token_inputs)]
        else:
            # Outside the lock (a long input holds up no one else), each refused by its bytes first.
            sequences = [self._pooled_tokens(item, i) for i, item in enumerate(params.inputs)]
        for i, sequence in enumerate(sequences):
            text.check_context(len(sequence), self.n_ctx, "input", what=f"input {i}", room=0)
        vectors = self._embedder.submit(sequences, cancel)  # with other requests' inputs, in as few decodes
        count = sum(map(len, sequences))
        with self._lock:
            self._prompt_tokens += count
            self._requests += 1
        return {"embeddings": vectors, "usage": {"prompt_tokens": count}}

    def _embed_batch(self, sequences: list[list[int]]) -> list[list[float]]:
        with self._lock:
            return self._pooled(sequences, self.llama.n_embd(), normalize=True)

    def rerank(self, params: RerankParams, cancel: Cancel) -> Chunks:
        """Each document read after the query, the way the file's tokenizer frames a pair
        ([CLS] query [SEP] document [SEP] for BERT), scored by its classification head."""
        if not self.plan.rerank:
            raise text.unsupported(self.model_id, "is not declared as a reranker (options.rerank: true)")
        yield from ()
        lc, vocab = self._lc, self.vocab.vocab
        head = [self.vocab.bos] if self.vocab.adds_bos else []
        tail = [lc.llama_vocab_eos(vocab)] if lc.llama_vocab_get_add_eos(vocab) else []
        sep = [lc.llama_vocab_sep(vocab)] if lc.llama_vocab_get_add_sep(vocab) else []
        text.check_bytes(params.query, self.n_ctx, self.tokenizer.longest_token_bytes, "query", "the query")
        prefix = [*head, *self.llama.tokenize(params.query.encode(), add_bos=False, special=False), *tail, *sep]
        text.check_context(len(prefix) + len(tail), self.n_ctx, "query", what="the query", room=8)
        room = self.n_ctx - len(prefix) - len(tail)  # documents are cut to what the context leaves
        cut = max(room, 0) * self.tokenizer.longest_token_bytes  # no more text than `room` tokens can hold
        sequences = [[*prefix, *self.llama.tokenize(doc[:cut].encode(), add_bos=False, special=False)[:room], *tail]
                     for doc in params.documents]
        with cancel.holding(self._lock):
            outputs = self._pooled(sequences, max(lc.llama_model_n_cls_out(self.llama._model.model), 1))
        # The head's first output is the relevance logit (bge-reranker style): as a probability, like HF's.
        scores = [1.0 / (1.0 + math.exp(-row[0])) for row in outputs]
        self._requests += 1
        return {"scores": scores, "usage": {"prompt_tokens": sum(map(len, sequences))}}

    def _pooled_tokens(self, item: str, index: int) -> list[int]:
        # As llama-cpp-python's embed() tokenizes: the vocabulary's own special tokens, text as text.
        text.check_bytes(item, self.n_ctx, self.tokenizer.longest_token_bytes, "input", f"input {index}")
        return self.llama.tokenize(item.encode(), add_bos=True, special=False)

    def _pooled(self, sequences: list[list[int]], width: int, normalize: bool = False) -> list[list[float]]:
        """One pooled output of `width` floats per sequence; sequences share a decode while they fit."""
        from llama_cpp import _internals

        batch, out = self.llama._batch, []
        n_batch, n_seq_max = self.llama.n_batch, self.llama.context_params.n_seq_max

        def flush(count: int) -> None:
            self.llama._ctx.kv_cache_clear()
            self.llama._ctx.decode(batch)
            batch.reset()
            for seq in range(count):
                row = self._lc.llama_get_embeddings_seq(self.llama._ctx.ctx, seq)[:width]
                out.append(_internals.normalize_embedding(row) if normalize else row)

        pending = tokens = 0
        for sequence in sequences:
            if pending and (tokens + len(sequence) > n_batch or pending >= n_seq_max):
                flush(pending)
                pending = tokens = 0
            batch.add_sequence(sequence, pending, True)
            pending, tokens = pending + 1, tokens + len(sequence)
        if pending:
            flush(pending)
        self.llama._ctx.kv_cache_clear()
        return out

    def tokenize(self, params: TokenizeParams, cancel: Cancel) -> Chunks:
        """Text as a prompt is tokenized, or messages through the chat template, as generation would."""
        yield from ()
        if params.messages is not None:
            self._text_model()
            prompt = self._chat_prompt(params.messages, params.tools, self.projector.marker if self.projector else None)
            add_bos = self.vocab.adds_bos and not prompt.startswith(self.vocab.text(self.vocab.bos))
        else:
            prompt, add_bos = params.text or "", params.add_special_tokens and self.vocab.adds_bos
        if params.images and params.messages is not None and self.projector is not None:
            images = [params.images[i] for i in image_slots(params.messages)]
            tokens, media = self.projector.prompt(prompt, images, add_bos)
            media.close()
            tokens = [max(t, -1) for t in tokens]  # an image's positions, as the contract shows them
        else:
            tokens = self.llama.tokenize(prompt.encode(), add_bos=add_bos, special=True)
        return {"tokens": tokens, "pieces": [self.vocab.piece(t, special=True).decode("utf-8", errors="replace")
                                             if t >= 0 else "<image>" for t in tokens]}

    def detokenize(self, params: DetokenizeParams, cancel: Cancel) -> Chunks:
        yield from ()
        tokens = text.check_token_ids(params.tokens, self.vocab.n_vocab, "tokens")
        return {"text": self.llama.detokenize(tokens, special=True).decode("utf-8", errors="replace")}

    # ---- prompts -------------------------------------------------------------------------------

    def _text_model(self) -> None:
        if self.plan.pooled:
            raise text.unsupported(self.model_id, "is an embedding model" if self.plan.embedding else "is a reranker")

    def _chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                     image_marker: str | None = None) -> str:
        return self._chat_template().render(messages, tools, image_marker, bos_token=self.vocab.text(self.vocab.bos),
                                            eos_token=self.vocab.text(self.vocab.eos))

    def _chat_template(self) -> text.ChatTemplate:
        if self._template is None:
            if not self._template_source:
                raise InvalidInput(f"model {self.model_id} has no chat template in its GGUF metadata; set "
                                   "options.chat_template or use /v1/completions", param="messages")
            self._template = text.ChatTemplate(self._template_source)
        return self._template

    def _tokenize(self, prompt: str, add_bos: bool, cancel: Cancel, param: str, what: str = "the prompt",
                  room: int = 1) -> list[int]:
        """Refused by its length in bytes before any work, else tokenized a window at a time
        (stopping once past the context, or when the client leaves) and refused by its count."""
        text.check_bytes(prompt, self.n_ctx, self.tokenizer.longest_token_bytes, param, what)
        tokens = self.tokenizer.tokenize(prompt, add_special=add_bos, cancel=cancel, limit=self.n_ctx)
        text.check_context(len(tokens), self.n_ctx, param, what, room)
        return tokens

    def _fim_tokens(self, prefix: str, suffix: str, cancel: Cancel) -> list[int]:
        # Only the metadata counts: llama.cpp also guesses FIM tokens from token names, which a
        # model not trained for infill may merely contain.
        fim = self.file.fim_tokens()
        if fim is None:
            raise text.no_fill_in_the_middle(self.model_id)
        pre, suf, mid = fim
        head = [self.vocab.bos] if self.vocab.adds_bos else []
        prefix_tokens = self._tokenize(prefix, False, cancel, "prompt")
        suffix_tokens = self._tokenize(suffix, False, cancel, "suffix")
        return [*head, pre, *prefix_tokens, suf, *suffix_tokens, mid]

    # ---- decoding ------------------------------------------------------------------------------

    def _generate(self, tokens: list[int], params: SamplingParams, cancel: Cancel, *, top: int | None,
                  param: str, echo: str | None = None, media: ImagePrompt | None = None) -> Chunks:
        group = self._adapter(params.adapter)
        text.check_context(len(tokens), self.n_ctx, param)
        bias = text.logit_bias(params.logit_bias, self.vocab.n_vocab)
        constraint = self._constraint(params)
        budget = self.n_ctx - len(tokens)
        if params.max_tokens is not None:
            budget = min(budget, params.max_tokens)
        self._requests += 1
        self._prompt_tokens += len(tokens)
        stream = TokenStream(self.vocab, tokens, params.stop, top, echo)
        sampler = sampling.chain(params, bias, self.vocab.n_vocab)
        seq = Sequence(tokens, sampler, budget, stream, cancel, prompt_logits=echo is not None and top is not None,
                       constraint=constraint, group=group, media=media)
        try:
            if echo is not None and top is None:
                yield {"text": echo}
            self.scheduler.submit(seq)
            result = yield from relay(seq.events, cancel)
        except LetGoTimeout:
            return None  # the scheduler is gone (shutdown); leave the sampler to the process exit
        except BaseException:  # an error, or the reader gone (the scheduler has let the sequence go)
            sampler.close()
            raise
        sampler.close()
        return result

    def _adapter(self, name: str | None) -> str | None:
        """The LoRA adapter a request decodes with (None: the base); refused if not loaded."""
        if self.loras is not None:
            return self.loras.require(name, self.model_id)
        if name is not None:
            raise InvalidInput(f"model {self.model_id} has no adapter {name!r}", param="model")
        return None

    def _constraint(self, params: SamplingParams) -> Constraint | ToolConstraint | None:
        return tools.constraint_for(params, self._llguidance_vocab, self.vocab.n_vocab,
                                    lambda token: self.vocab.piece(token, special=True), self._template_source or "")

    def _llguidance_vocab(self):
        if self._lltokenizer is None:  # once per model: ~150 ms for a 32k vocabulary
            self._lltokenizer = llama_tokenizer(self._lc, self.vocab.vocab, self.vocab.n_vocab)
        return self._lltokenizer
