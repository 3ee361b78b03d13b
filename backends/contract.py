"""The contract between the server and a worker: params in, chunks and a result out, error codes.

Both ends import this module and nothing else of each other. Routes build the params dataclasses;
the server's end of the pipe (server/worker_client.py) sends them as JSON; the worker's end
(backends/worker_main.py) rebuilds them with `decode_params`, which refuses a key no dataclass
field has. Chunks and results travel as JSON objects whose shapes are the TypedDicts below.

Adapters are synchronous and run inside their own worker process. Each capability is a generator
method: it yields chunks as they are produced and returns its result. Cancellation arrives as a
`Cancel` flag the engine checks per token or per step. Adapters know nothing of HTTP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, NotRequired, Protocol, TypedDict


class Outlet:
    """Where a text call's chunks may go straight from an engine's own thread (the worker's pipe),
    instead of being yielded by the call's generator: one thread hand-off less per token. The engine
    holds off while `paused` (the server's backpressure) and sends nothing once cancelled; it may
    also `finish` the call from there (its result, sent at once; the generator still returns it)."""

    def __init__(self, send: Callable[[dict[str, Any]], None], finish: Callable[[dict[str, Any]], None],
                 gate: threading.Event):
        self.send = send
        self._finish = finish
        self._gate = gate
        self.finished = False

    @property
    def paused(self) -> bool:
        return not self._gate.is_set()

    def finish(self, result: dict[str, Any]) -> None:
        self.finished = True
        self._finish(result)


class Cancel:
    """Set by the worker when the client went away; engines poll it between tokens/steps.

    `outlet`: set by the worker on text calls; an engine that produces on a thread of its own may
    send chunks through it (None: yield them)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.outlet: Outlet | None = None

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __bool__(self) -> bool:  # `if cancel:` reads naturally in engine loops
        return self._event.is_set()

    @contextlib.contextmanager
    def holding(self, lock: threading.Lock) -> Iterator[None]:
        """Hold `lock` (a model one request uses at a time), giving up if cancelled while waiting."""
        while not lock.acquire(timeout=0.05):
            if self:
                raise InvalidInput("request cancelled while waiting for the model", code=ErrorCode.CANCELLED)
        try:
            yield
        finally:
            lock.release()


class ErrorCode(StrEnum):
    """Why an engine refused a request; the server maps each to its OpenAI error."""

    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    UNSUPPORTED_CAPABILITY = "unsupported_model_capability"  # the model does not do this at all
    UNSUPPORTED_PARAMETER = "unsupported_parameter"  # the model cannot honour this parameter
    CANCELLED = "cancelled"
    ADAPTER_LOAD_FAILED = "adapter_load_failed"  # a declared LoRA adapter would not load; the base serves on


class InvalidInput(Exception):
    """The request cannot be served by this model as asked (HTTP 400)."""

    def __init__(self, message: str, *, param: str | None = None, code: ErrorCode | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ContractError(Exception):
    """The server sent what the contract does not allow (a bug, never the client's fault)."""


# ---- params ------------------------------------------------------------------------------------

ResponseFormat = dict[str, Any]  # {"type": "json_object"} | {"type": "json_schema", "schema": {...}}


@dataclass
class SamplingParams:
    """Shared by chat and completions."""

    max_tokens: int | None = None  # None: up to the end of the context
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off; else only the k likeliest tokens (llama.cpp, vLLM and Anthropic have it)
    min_p: float = 0.0  # 0: off; else only tokens at least min_p x the likeliest token's probability
    seed: int | None = None  # same seed, same prompt, same params -> same output
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] = field(default_factory=dict)  # token id (as str) -> bias
    # Constrained output: None or a ResponseFormat. Tool calls reach engines as a json_schema, or
    # (ChatParams.tool_format) as tools held to their schemas in the model's own syntax.
    response_format: ResponseFormat | None = None
    adapter: str | None = None  # a LoRA adapter of the model, by its models.yaml name; None: the base alone


class ImagePart(TypedDict):
    """An image in a chat message's content as a worker receives it: `image` indexes ChatParams.images."""

    type: Literal["image"]
    image: int


@dataclass
class ChatParams(SamplingParams):
    messages: list[dict[str, Any]] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0  # 0..20 alternatives per token when logprobs is on
    tools: list[dict[str, Any]] | None = None  # for chat templates that render tools
    # With tool_format (a backends/tools.py ToolFormat other than json) the engine holds calls in the
    # model's own syntax to the tools' schemas; tool_choice as OpenAI's (None means "auto").
    tool_choice: Any = None
    tool_format: str | None = None
    parallel_tool_calls: bool = True  # False: the grammar ends the answer after one call
    # Images the messages' ImageParts point at: base64 PNGs, upright RGB, decoded, checked and sized by
    # the server (server/image_input.py); only a vision model is sent any.
    images: list[str] = field(default_factory=list)


@dataclass
class CompletionParams(SamplingParams):
    prompt: str = ""
    prompt_tokens: list[int] | None = None  # token ids in the model's own vocabulary, instead of `prompt`
    suffix: str | None = None  # fill-in-the-middle; refused if the model has no FIM tokens
    echo: bool = False  # yield the prompt first (with its logprobs when asked)
    logprobs: int | None = None  # legacy: number of top alternatives per token (0..5)


@dataclass
class EmbeddingParams:
    inputs: list[str] = field(default_factory=list)
    token_inputs: list[list[int]] | None = None  # token ids in the model's own vocabulary, instead of `inputs`


@dataclass
class RerankParams:
    """Score each document's relevance to the query (a cross-encoder reads each pair together)."""

    query: str = ""
    documents: list[str] = field(default_factory=list)


@dataclass
class TokenizeParams:
    """Exactly one of `text` (as a prompt) and `messages` (through the chat template) is set."""

    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None  # rendered with the messages, as a chat request would
    add_special_tokens: bool = True
    images: list[str] = field(default_factory=list)  # as ChatParams.images; each image's tokens appear as -1


@dataclass
class DetokenizeParams:
    tokens: list[int] = field(default_factory=list)


@dataclass
class ImageParams:
    """One text-to-image call; the route has already checked every bound against the model's spec."""

    prompt: str = ""
    negative_prompt: str | None = None
    n: int = 1
    width: int = 512
    height: int = 512
    steps: int | None = None  # None: the model's default_steps
    guidance_scale: float | None = None  # None: the model's default_guidance
    seed: int | None = None  # image i uses seed + i, so each is reproducible on its own


@dataclass
class TranscriptionParams:
    """One speech-to-text call on audio the server decoded to 16 kHz mono float32.

    The samples sit in a raw little-endian float32 file the server wrote in its private temp dir
    (JSON lines would carry 30 minutes of audio as ~150 MB of base64)."""

    audio_path: str = ""
    task: Literal["transcribe", "translate"] = "transcribe"
    language: str | None = None  # None: detect
    prompt: str | None = None  # Whisper's initial_prompt
    temperature: float | None = None  # None or 0: the usual fallback ladder from 0
    word_timestamps: bool = False


@dataclass
class SpeechParams:
    """One text-to-speech call; the route has mapped the voice name to one of the model's speakers."""

    text: str = ""
    speaker: int = 0
    speed: float = 1.0  # 0.25..4.0; an engine without a rate of its own says so and the server stretches
    language: str | None = None  # None: the model's default


Params = (ChatParams | CompletionParams | EmbeddingParams | ImageParams | TranscriptionParams | SpeechParams
          | RerankParams | TokenizeParams | DetokenizeParams)


class Method(StrEnum):
    """The adapter method a call runs; each takes exactly one params type."""

    CHAT = "chat"
    COMPLETE = "complete"
    EMBED = "embed"
    GENERATE_IMAGE = "generate_image"
    TRANSCRIBE = "transcribe"
    SYNTHESIZE = "synthesize"
    RERANK = "rerank"
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"


PARAMS: dict[Method, type] = {Method.CHAT: ChatParams, Method.COMPLETE: CompletionParams,
                              Method.EMBED: EmbeddingParams, Method.GENERATE_IMAGE: ImageParams,
                              Method.TRANSCRIBE: TranscriptionParams, Method.SYNTHESIZE: SpeechParams,
                              Method.RERANK: RerankParams, Method.TOKENIZE: TokenizeParams,
                              Method.DETOKENIZE: DetokenizeParams}
METHODS: dict[type, Method] = {kind: method for method, kind in PARAMS.items()}
TEXT_METHODS = frozenset({Method.CHAT, Method.COMPLETE})  # their chunks are TextChunks


def method_of(params: Params) -> Method:
    return METHODS[type(params)]


def encode_params(params: Params) -> dict[str, Any]:
    # Shallow: the values are JSON data already (dataclasses.asdict's deep copy cost ~20 us a call).
    return dict(vars(params))


def decode_params(method: str, raw: dict[str, Any]) -> Params:
    """The params of a call, refusing a method or key the contract does not have."""
    try:
        kind = PARAMS[Method(method)]
    except ValueError:
        raise ContractError(f"unknown method {method!r}") from None
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ContractError(f"{kind.__name__} has no field {', '.join(map(repr, unknown))}")
    return kind(**raw)


# ---- chunks and results (JSON objects on the pipe) --------------------------------------------


class TopLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TypedDict):
    token: str
    logprob: float | None  # None for an echoed prompt's first token: nothing predicted it
    bytes: list[int]
    text_offset: int
    top_logprobs: list[TopLogprob]


class TextChunk(TypedDict):
    """chat/complete: text safe to send, and (when asked) the logprobs of the tokens in it."""

    text: str
    logprobs: NotRequired[list[TokenLogprob]]


def merge_text_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Consecutive TextChunks of one call as one: the texts joined, the logprobs in order (a chunk
    carries logprobs only when they were asked for, so either all do or none)."""
    if len(chunks) == 1:
        return chunks[0]
    merged: dict[str, Any] = {"text": "".join(c["text"] for c in chunks)}
    if any("logprobs" in c for c in chunks):
        merged["logprobs"] = [entry for c in chunks for entry in c.get("logprobs", ())]
    return merged


class TextUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int


FinishReason = Literal["stop", "length", "cancelled"]


class TextResult(TypedDict):
    finish_reason: FinishReason
    usage: TextUsage


class EmbeddingUsage(TypedDict):
    prompt_tokens: int


class EmbeddingResult(TypedDict):
    """embed yields no chunks."""

    embeddings: list[list[float]]
    usage: EmbeddingUsage


class RerankResult(TypedDict):
    """rerank yields no chunks: one score per document, in the documents' order."""

    scores: list[float]
    usage: EmbeddingUsage


class TokenizeResult(TypedDict):
    tokens: list[int]
    pieces: list[str]  # each token's text, as the model's vocabulary spells it


class DetokenizeResult(TypedDict):
    text: str


class ImageChunk(TypedDict):
    """generate_image yields one per finished image."""

    image: int  # its index
    steps: int


class ImageResult(TypedDict):
    images: list[str]  # base64 PNG
    steps: int
    seed: int | None
    finish_reason: Literal["stop", "cancelled"]
    nsfw: list[bool] | None


class Word(TypedDict):
    word: str
    start: float
    end: float
    probability: float


class Segment(TypedDict):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: NotRequired[list[Word]]


class TranscriptionResult(TypedDict):
    """transcribe yields no chunks."""

    text: str
    language: str
    language_probability: float
    duration: float
    segments: list[Segment]
    words: list[Word] | None
    finish_reason: Literal["stop", "cancelled"]


class SpeechChunk(TypedDict):
    """synthesize yields one per sentence: mono float32 samples, little-endian, base64."""

    audio: str
    sample_rate: int
    speed_applied: bool  # False: the engine has no rate of its own; the server time-stretches


class SpeechResult(TypedDict):
    seconds: float  # audio synthesised, before any time-stretch
    input_tokens: int  # what the engine read of the text
    finish_reason: Literal["stop", "cancelled"]


Chunk = TextChunk | ImageChunk | SpeechChunk
Result = (TextResult | EmbeddingResult | ImageResult | TranscriptionResult | SpeechResult | RerankResult
          | TokenizeResult | DetokenizeResult)
Chunks = Generator[Any, None, Any]  # yields a Chunk, returns a Result


# ---- the pipe's messages (one JSON object per line) ------------------------------------------
# server -> worker: first a Handshake, then CallMessage | ControlMessage | FlowMessage.
# worker -> server: first ReadyMessage | LoadErrorMessage, then replies tagged with the call's id,
# and a HeartbeatMessage every HEARTBEAT_INTERVAL_S.


class Handshake(TypedDict):
    plan_type: str  # "backends.gguf.spec:GgufPlan": the class the plan is read as
    plan: dict[str, Any]  # LoadPlan.to_json()


class CallMessage(TypedDict):
    op: Literal["call"]
    id: int
    method: str
    params: dict[str, Any]
    stream: NotRequired[bool]  # False: nobody reads the text before the end, so it may come merged


class ControlMessage(TypedDict):
    op: Literal["cancel", "stats", "stop"]
    id: NotRequired[int]


class ParkMessage(TypedDict):
    """Write the model's warm copy into `dest` (an empty directory in RAM), then wait for stop."""

    op: Literal["park"]
    id: int
    dest: str


class ParkResult(TypedDict):
    bytes: int  # what the warm copy takes in RAM


class FlowMessage(TypedDict):
    """Backpressure: the server holds more of this call's chunks than its client has read, so the
    worker stops producing them (paused) until told to go on."""

    op: Literal["flow"]
    id: int
    paused: bool


class HeartbeatMessage(TypedDict):
    """worker -> server every HEARTBEAT_INTERVAL_S: a stopped or wedged worker falls silent."""

    op: Literal["heartbeat"]


HEARTBEAT_INTERVAL_S = 0.5


class ReadyMessage(TypedDict):
    op: Literal["ready"]
    memory_mb: float  # the adapter's own account of its footprint
    pid: int


class LoadErrorMessage(TypedDict):
    op: Literal["load_error"]
    message: str


class ErrorReply(TypedDict):
    kind: Literal["invalid", "backend", "contract"]
    message: str
    param: NotRequired[str | None]
    code: NotRequired[str | None]


class Reply(TypedDict):
    """Exactly one of c (a chunk), end (the result), err, stats, parked; or c and end together (the
    last chunk, then the result)."""

    id: int
    c: NotRequired[dict[str, Any]]
    end: NotRequired[dict[str, Any]]
    err: NotRequired[ErrorReply]
    stats: NotRequired[dict[str, Any]]
    parked: NotRequired[ParkResult]


# ---- adapters ----------------------------------------------------------------------------------


class Adapter(Protocol):
    """What every engine adapter offers, whatever it serves; capabilities are methods named by
    `Method`, each `(params, cancel) -> Chunks`. A prompt longer than the context raises
    InvalidInput(code=CONTEXT_LENGTH_EXCEEDED) before generating anything."""

    def memory_mb(self) -> float:
        """The adapter's own account of its footprint (weights, caches, runtime)."""

    def stats(self) -> dict[str, Any]:
        """Counters for observability and tests; text engines include tokens_generated."""

    def close(self) -> None: ...


class Parkable(Protocol):
    """An adapter whose plan parks as a "bundle" (backends/plan.py) also has park()."""

    def park(self, dest: Path) -> int:
        """Write what a fresh worker needs to load this model into `dest`; the bytes written."""
