"""Tool calls held to the tools' schemas in each model syntax (backends/tools.py), over a real
byte-level BPE vocabulary: free text until the opener, then only a valid call; from the first token
for tool_choice "required" or a named function; calls or the response schema when both are asked."""

from __future__ import annotations

import json

import pytest

from backends.contract import InvalidInput
from backends.guidance import lark_matcher
from backends.hf.tokens import token_bytes
from backends.tools import ToolConstraint, ToolFormat, grammar, special_markers
from tinymodels import hf as tiny_hf

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "boolean"}},
    "required": ["city", "celsius"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["utc", "local"]}}, "required": ["zone"]}}}
TOOLS = [WEATHER, TIME]


@pytest.fixture(scope="module")
def vocab():
    import llguidance.hf

    tokenizer = tiny_hf._byte_bpe_tokenizer()  # the demo HF model's tokenizer, built in memory
    return tokenizer, llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))


def constraint(vocab, fmt: ToolFormat, tool_choice=None, tools=TOOLS, **kwargs) -> ToolConstraint:
    tokenizer, lltokenizer = vocab
    tool_grammar = grammar(fmt, tools, tool_choice, specials=special_markers(lltokenizer), **kwargs)
    assert tool_grammar is not None
    return ToolConstraint(tool_grammar, lltokenizer, lark_matcher, lambda t: token_bytes(tokenizer, t), len(tokenizer))


def write(vocab, held: ToolConstraint, text: str) -> list[bool]:
    """Feed `text` token by token as a model would sample it; per token, whether the constraint was
    active (and then, that it allowed the token: a refused token fails the test)."""
    tokenizer, _ = vocab
    active = []
    for token in tokenizer(text, add_special_tokens=False).input_ids:
        allowed = held.allowed()
        active.append(allowed is not None)
        assert allowed is None or allowed[token], f"{tokenizer.decode([token])!r} refused in {text!r}"
        held.accept(token)
    return active


def refused(vocab, held: ToolConstraint, text: str) -> bool:
    """Whether the constraint refuses `text` somewhere (it takes the tokens before the refused one)."""
    tokenizer, _ = vocab
    for token in tokenizer(text, add_special_tokens=False).input_ids:
        allowed = held.allowed()
        if allowed is not None and not allowed[token]:
            return True
        held.accept(token)
    return False


CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "celsius": true}}'


def test_hermes_text_is_free_until_the_opener_then_only_a_valid_call(vocab):
    held = constraint(vocab, ToolFormat.HERMES)
    assert not any(write(vocab, held, "Let me look that up. "))
    write(vocab, held, "<tool_call>")
    assert held.active
    write(vocab, held, "\n" + CALL + "\n</tool_call>")
    assert held.allowed()[tiny_hf.SPECIALS.index("</s>")]  # the end may follow a complete call
    unknown = constraint(vocab, ToolFormat.HERMES)
    write(vocab, unknown, "<tool_call>")
    assert refused(vocab, unknown, '{"name": "delete_everything"')


def test_hermes_call_arguments_must_match_the_functions_parameters(vocab):
    held = constraint(vocab, ToolFormat.HERMES)
    write(vocab, held, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "celsius": ')
    assert refused(vocab, held, '"yes"')  # a boolean, not a string
    write(vocab, held, "false}}")


def test_hermes_required_holds_from_the_first_token(vocab):
    held = constraint(vocab, ToolFormat.HERMES, "required")
    assert held.active and refused(vocab, held, "Sure")
    assert all(write(vocab, held, "<tool_call>\n" + CALL + "\n</tool_call>"))


def test_without_parallel_calls_the_answer_ends_after_one_call(vocab):
    held = constraint(vocab, ToolFormat.HERMES, "required", parallel=False)
    write(vocab, held, "<tool_call>\n" + CALL + "\n</tool_call>")
    assert held.finished
    several = constraint(vocab, ToolFormat.HERMES, "required")
    write(vocab, several, "<tool_call>\n" + CALL + "\n</tool_call>")
    assert not several.finished  # another call may follow


def test_a_named_tool_choice_allows_that_function_only(vocab):
    held = constraint(vocab, ToolFormat.HERMES, {"type": "function", "function": {"name": "get_time"}})
    write(vocab, held, '<tool_call>\n{"name": "get_time", "arguments": {"zone": "utc"}}\n</tool_call>')
    other = constraint(vocab, ToolFormat.HERMES, {"type": "function", "function": {"name": "get_time"}})
    assert refused(vocab, other, '<tool_call>\n{"name": "get_weather"')


def test_a_named_tool_choice_not_among_the_tools_is_refused():
    with pytest.raises(InvalidInput) as caught:
        grammar(ToolFormat.HERMES, TOOLS, {"type": "function", "function": {"name": "nope"}})
    assert caught.value.param == "tool_choice"


@pytest.mark.parametrize("choice", ["none"])
def test_nothing_is_held_for_tool_choice_none_or_the_json_fallback(choice):
    assert grammar(ToolFormat.HERMES, TOOLS, choice) is None
    assert grammar(ToolFormat.JSON, TOOLS, None) is None
    assert grammar(ToolFormat.HERMES, [], None) is None


def test_llama3_prose_stays_free_and_a_leading_brace_becomes_a_call(vocab):
    prose = constraint(vocab, ToolFormat.LLAMA3)
    assert not any(write(vocab, prose, 'The answer is {"a": 1} in JSON.'))
    call = constraint(vocab, ToolFormat.LLAMA3)
    write(vocab, call, "{")
    assert call.active
    write(vocab, call, '"name": "get_time", "parameters": {"zone": "local"}}')
    wrong = constraint(vocab, ToolFormat.LLAMA3)
    assert refused(vocab, wrong, '{"city": "Paris"}')
    assert call.finished or call.allowed()[tiny_hf.SPECIALS.index("</s>")]


def test_mistral_v3_array_and_v11_name_args_forms(vocab):
    v3 = constraint(vocab, ToolFormat.MISTRAL)
    write(vocab, v3, "Calling. [TOOL_CALLS]")
    assert v3.active
    write(vocab, v3, '[{"name": "get_time", "arguments": {"zone": "utc"}}]')
    v11 = constraint(vocab, ToolFormat.MISTRAL, template="[TOOL_CALLS]{{ name }}[ARGS]")
    write(vocab, v11, "[TOOL_CALLS]")
    write(vocab, v11, 'get_weather[ARGS]{"city": "Oslo", "celsius": false}')
    assert refused(vocab, constraint(vocab, ToolFormat.MISTRAL, template="[ARGS]"), "[TOOL_CALLS]get_date[ARGS]")


def test_with_a_response_schema_the_answer_is_a_call_or_that_json(vocab):
    schema = {"type": "object", "properties": {"verdict": {"enum": ["yes", "no"]}}, "required": ["verdict"],
              "additionalProperties": False}
    answer = constraint(vocab, ToolFormat.HERMES, answer_schema=schema)
    assert answer.active and refused(vocab, answer, "Sure")
    write(vocab, answer, '{"verdict": "no"}')
    call = constraint(vocab, ToolFormat.HERMES, answer_schema=schema)
    write(vocab, call, "<tool_call>\n" + CALL + "\n</tool_call>")


def test_grammar_accepts_what_the_tool_syntax_parser_reads_back(vocab):
    """The call the grammar lets through is one server/tool_syntax.py parses, arguments intact."""
    from server.tool_syntax import ToolCall, parser_for

    held = constraint(vocab, ToolFormat.HERMES)
    text = "Checking. <tool_call>\n" + CALL + "\n</tool_call>"
    write(vocab, held, text)
    parser = parser_for(ToolFormat.HERMES)
    events = parser.feed(text) + parser.finish()
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris", "celsius": True})]
