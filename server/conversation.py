"""One chat request, whichever API it came through (Chat Completions, Responses, Anthropic Messages):
what the model is asked, and the engine params that ask it.

Each front door translates its wire request into a Conversation at the edge; from here on there is
one path: the engine call (params), then one stream of answer events (server/answer.py), which each
front door turns back into its own wire format.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from backends.contract import ChatParams
from backends.tools import ToolFormat
from server.protocol import tools


@dataclass
class Conversation:
    """Messages in OpenAI chat form (role, content as text or parts, tool_calls, tool_call_id);
    tools as OpenAI function tools; tool_choice None | "none" | "auto" | "required" |
    {"type": "function", "function": {"name": ...}}; response_format normalised (contract form)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True  # False: at most one call
    response_format: dict[str, Any] | None = None
    max_tokens: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, stop, seed, penalties, bias
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    images: list[str] = field(default_factory=list)  # base64 PNGs the messages' ImageParts point at
    adapter: str | None = None  # the model's LoRA adapter the request names (`<model>:<adapter>`)

    def tool_plan(self) -> tools.ToolPlan:
        """What the engine is asked when tools are in play (ValueError for a tool_choice naming a
        function that is not among the tools)."""
        return tools.plan(self.tools, self.tool_choice)

    def params(self, plan: tools.ToolPlan, tool_format: ToolFormat) -> list[ChatParams]:
        """One engine call per choice; with a seed, each choice gets its own so they differ yet
        stay reproducible. Tools go to the engine in the model's own syntax (rendered by its
        template, calls held to their schemas), or for a template with none as our JSON wrapper."""
        base = ChatParams(messages=self.messages, max_tokens=self.max_tokens, logprobs=self.logprobs,
                          top_logprobs=self.top_logprobs if self.logprobs else 0, response_format=self.response_format,
                          images=self.images, adapter=self.adapter, **self.sampling)
        if plan.schema is not None and tool_format is not ToolFormat.JSON:
            base.tools, base.tool_choice, base.tool_format = self.tools, self.tool_choice, tool_format.value
            base.parallel_tool_calls = self.parallel_tool_calls
        elif plan.schema is not None:
            base.response_format = {"type": "json_schema", "schema": plan.schema}
            base.tools = self.tools
        if self.n == 1 or base.seed is None:
            return [base] * self.n
        return [dataclasses.replace(base, seed=base.seed + i) for i in range(self.n)]
