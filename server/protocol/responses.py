"""/v1/responses: the request, its translation into a Conversation, and the response and stream events.

Codex CLI, the openai-agents SDK, LangChain's `use_responses_api` and `client.responses` speak this.
Input items become chat messages: message items keep their role (instructions become the first
system message), function_call items become an assistant message's tool_calls, function_call_output
items become tool messages. Only function tools are ours to run; other tool types (web_search,
image_generation, ...) are ignored, since Codex always sends them. `reasoning` is accepted and ignored.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import Field

from server.conversation import Conversation
from server.errors import InvalidRequest
from server.protocol.common import KeepAlive, MaxTokens, Seed, Temperature, TopP, WireModel, new_id

TopLogprobs = Annotated[int, Field(ge=0, le=20)]
LOGPROBS_INCLUDE = "message.output_text.logprobs"


class TextFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(None, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(WireModel):
    format: TextFormat | None = None


class ResponsesRequest(WireModel):
    model: str = Field(min_length=1, max_length=256)
    input: Annotated[str, Field(max_length=4_000_000)] | Annotated[list[dict[str, Any]], Field(max_length=4096)]
    instructions: str | None = Field(None, max_length=1_000_000)
    tools: list[dict[str, Any]] | None = Field(None, max_length=256)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: TopLogprobs | None = None
    include: list[str] | None = Field(None, max_length=32)
    seed: Seed | None = None
    store: bool = False  # stateless unless asked: a stored response lives in memory for a while
    previous_response_id: str | None = Field(None, max_length=128)
    stream: bool = False
    reasoning: dict[str, Any] | None = None  # accepted, ignored
    metadata: dict[str, Any] | None = None
    keep_alive: KeepAlive = None

    def wants_logprobs(self) -> bool:
        return bool(self.include and LOGPROBS_INCLUDE in self.include)

    def function_tools(self) -> list[dict[str, Any]] | None:
        """The function tools as chat tools; every other kind is dropped."""
        chosen = []
        for tool in self.tools or []:
            if tool.get("type") == "function" and isinstance(tool.get("name"), str):
                function = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
                chosen.append({"type": "function", "function": function})
        return chosen or None

    def chat_tool_choice(self) -> Any:
        choice = self.tool_choice
        if isinstance(choice, dict):
            if choice.get("type") == "function" and choice.get("name"):
                return {"type": "function", "function": {"name": choice["name"]}}
            return "auto"  # hosted-tool and allowed-tools choices: ours to decide among function tools
        return choice if choice in ("none", "auto", "required") else None

    def response_format(self) -> dict[str, Any] | None:
        fmt = self.text.format if self.text else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema", "schema": fmt.schema_ or {"type": "object"}}


def conversation(body: ResponsesRequest, history: list[dict[str, Any]]) -> Conversation:
    """The request as one chat: a stored conversation it continues, its instructions, its input."""
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    messages.extend(history)
    messages.extend(input_messages(body.input))
    sampling = {k: v for k, v in (("temperature", body.temperature), ("top_p", body.top_p), ("seed", body.seed))
                if v is not None}
    return Conversation(messages=messages, tools=body.function_tools(), tool_choice=body.chat_tool_choice(),
                        parallel_tool_calls=body.parallel_tool_calls,
                        response_format=body.response_format(), max_tokens=body.max_output_tokens,
                        sampling=sampling, logprobs=body.wants_logprobs(), top_logprobs=body.top_logprobs or 0)


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message" or ("role" in item and kind not in ("function_call", "function_call_output")):
            messages.append(_message(item, index))
        elif kind == "function_call":
            call = {"id": item.get("call_id") or item.get("id"), "type": "function",
                    "function": {"name": item.get("name", ""), "arguments": item.get("arguments") or "{}"}}
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls belong to one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": _text(item.get("output"), index)})
        # reasoning, item_reference, hosted-tool calls and their outputs: nothing a local model can use
    return messages


def _message(item: dict[str, Any], index: int) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequest(f"input[{index}].role: must be user, assistant, system or developer", param="input")
    content = item.get("content")
    if isinstance(content, str) or content is None:
        return {"role": role, "content": content or ""}
    if not isinstance(content, list):
        raise InvalidRequest(f"input[{index}].content: must be a string or a list of parts", param="input")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part.get("image_url") or "",
                                                              "detail": part.get("detail", "auto")}})
        else:
            raise InvalidRequest(f"input[{index}].content: part type {kind!r} is not supported", param="input")
    return {"role": role, "content": parts}


def _text(output: Any, index: int) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(str(p.get("text", "")) for p in output if isinstance(p, dict))
    raise InvalidRequest(f"input[{index}].output: must be a string or a list of text parts", param="input")


# ---- the response and its items ------------------------------------------------------------------


def message_item(item_id: str, text: str, status: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
    if logprobs is not None:
        part["logprobs"] = logprobs
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [part] if status == "completed" or text else []}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def response(rid: str, body: ResponsesRequest, created: float, status: str, output: list[dict[str, Any]],
             usage: tuple[int, int] | None, incomplete: str | None = None,
             error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": rid, "object": "response", "created_at": created, "status": status,
        "completed_at": time.time() if status in ("completed", "incomplete") else None,
        "model": body.model, "output": output, "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "parallel_tool_calls": body.parallel_tool_calls, "previous_response_id": body.previous_response_id,
        "temperature": body.temperature, "top_p": body.top_p, "tool_choice": body.tool_choice or "auto",
        "tools": body.tools or [], "text": {"format": (body.text.format.model_dump(by_alias=True, exclude_none=True)
                                                      if body.text and body.text.format else {"type": "text"})},
        "truncation": "disabled", "store": body.store, "metadata": body.metadata or {}, "reasoning": None,
        "usage": None if usage is None else {
            "input_tokens": usage[0], "output_tokens": usage[1], "total_tokens": usage[0] + usage[1],
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}},
    }


class ResponseWriter:
    """Answer events -> the response's output items, and the stream events announcing them (each
    event numbered in order, as the Responses API streams them)."""

    def __init__(self, rid: str, body: ResponsesRequest, created: float):
        self.rid, self.body, self.created = rid, body, created
        self.output: list[dict[str, Any]] = []
        self.sequence = 0
        self._text: list[str] | None = None  # the open message item's text, while one is open
        self._logprobs: list[dict[str, Any]] = []

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence - 1, **fields}

    def start(self) -> list[dict[str, Any]]:
        snapshot = response(self.rid, self.body, self.created, "in_progress", [], None)
        return [self.event("response.created", response=snapshot),
                self.event("response.in_progress", response=snapshot)]

    def text(self, delta: str, logprobs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        events = []
        if self._text is None:
            self._text, self._logprobs = [], []
            item = message_item(new_id("msg", "_"), "", "in_progress", None)
            self.output.append(item)
            events.append(self.event("response.output_item.added", output_index=len(self.output) - 1, item=item))
            events.append(self.event("response.content_part.added", item_id=item["id"],
                                     output_index=len(self.output) - 1, content_index=0,
                                     part={"type": "output_text", "text": "", "annotations": []}))
        self._text.append(delta)
        self._logprobs.extend(logprobs or [])
        if delta or logprobs:
            events.append(self.event("response.output_text.delta", item_id=self.output[-1]["id"],
                                     output_index=len(self.output) - 1, content_index=0, delta=delta,
                                     logprobs=logprobs or []))
        return events

    def call(self, call_id: str, name: str, arguments: str) -> list[dict[str, Any]]:
        events = self._close_text()
        item = call_item(new_id("fc", "_"), call_id, name, "", "in_progress")
        self.output.append(item)
        index = len(self.output) - 1
        done = call_item(item["id"], call_id, name, arguments, "completed")
        self.output[index] = done
        return [*events, self.event("response.output_item.added", output_index=index, item=item),
                self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                           delta=arguments),
                self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                           name=name, arguments=arguments),
                self.event("response.output_item.done", output_index=index, item=done)]

    def finish(self, reason: str, usage: tuple[int, int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The response as it ended, and the events that end its stream."""
        events = self._close_text()
        incomplete = "max_output_tokens" if reason == "length" else None
        final = response(self.rid, self.body, self.created, "incomplete" if incomplete else "completed",
                         self.output, usage, incomplete)
        kind = "response.incomplete" if incomplete else "response.completed"
        return final, [*events, self.event(kind, response=final)]

    def failed(self, error: dict[str, Any]) -> dict[str, Any]:
        self._close_text()
        return self.event("response.failed", response=response(self.rid, self.body, self.created, "failed",
                                                               self.output, None, error=error))

    def _close_text(self) -> list[dict[str, Any]]:
        if self._text is None:
            return []
        text, index = "".join(self._text), len(self.output) - 1
        item = message_item(self.output[index]["id"], text, "completed",
                            self._logprobs if self.body.wants_logprobs() else None)
        self.output[index], self._text = item, None
        part = item["content"][0]
        return [self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                           text=text, logprobs=part.get("logprobs", [])),
                self.event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                           part=part),
                self.event("response.output_item.done", output_index=index, item=item)]

    def as_messages(self) -> list[dict[str, Any]]:
        """The output as the chat messages a later request continues from."""
        text = "".join(p["text"] for i in self.output if i["type"] == "message" for p in i["content"])
        calls = [{"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
                 for i in self.output if i["type"] == "function_call"]
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = calls
        return [message]
