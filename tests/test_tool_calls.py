"""homer_llm.tool_calls: reading the tool calls local models write, prompts, JSON repair, schemas."""

from __future__ import annotations

import json

import pytest

from homer_llm.tool_calls import (
    ToolFormat,
    ToolSpec,
    choice_instruction,
    decode_json,
    forced_prefill,
    is_schema_echo,
    json_instruction,
    marker_start,
    normalize_tool_choice,
    parse_tool_calls,
    repair_json,
    schema_errors,
)

NAMES = ("get_weather", "convert_units", "add")


def calls(text: str, names=NAMES) -> list[tuple[str, dict]]:
    parsed = parse_tool_calls(text, names)
    assert parsed.invalid_tool_calls == []
    return [(c["name"], c["args"]) for c in parsed.tool_calls]


# ------------------------------------------------------------------ shapes models write
@pytest.mark.parametrize("text", [
    # what Qwen2.5-Coder-1.5B-Instruct writes for "What's the weather in Paris?" with tools bound
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
    '```\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
    '```JSON {"name": "get_weather", "arguments": {"city": "Paris"}} ```',
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '{"name": "get_weather", "args": {"city": "Paris"}}',
    '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    '<tool_call>\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n</tool_call>',
    '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}',
    '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}',
    '{"action": "get_weather", "action_input": {"city": "Paris"}}',
    '{"name": "get_weather", "city": "Paris"}',  # arguments flattened next to the name
    "{'name': 'get_weather', 'arguments': {'city': 'Paris'}}",  # a Python literal
    '{"name": "get_weather", "arguments": {"city": "Paris",}}',  # a trailing comma
    '{"name": "get_weather", "arguments": {"city": "Paris"}}}',  # a stray brace
    '{{"name": "get_weather", "arguments": {"city": "Paris"}}}',  # doubled braces (written by the 1.5B)
])
def test_one_call_in_every_shape(text):
    parsed = parse_tool_calls(text, NAMES)
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert parsed.invalid_tool_calls == [] and parsed.content == "" and parsed.text == ""
    assert parsed.tool_calls[0]["id"].startswith("call_") and parsed.tool_calls[0]["type"] == "tool_call"


def test_calls_with_text_around_them_keep_the_text():
    parsed = parse_tool_calls('Sure, let me check.\n```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                              "\n```\nOne moment.", NAMES)
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert parsed.content == "Sure, let me check.\n\nOne moment."
    inline = parse_tool_calls('I will call {"name": "add", "arguments": {"a": 1, "b": 2}} now.', NAMES)
    assert [(c["name"], c["args"]) for c in inline.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert inline.content == "I will call  now."


@pytest.mark.parametrize("text", [
    '```json\n[{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]\n```',
    '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```\n```json\n{"name": "add", "arguments": '
    '{"a": 1, "b": 2}}\n```',
    '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n{"name": "add", "arguments": {"a": 1, "b": 2}}',
    '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n```',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n'
    '{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
])
def test_several_calls_in_one_reply_in_order(text):
    assert calls(text) == [("get_weather", {"city": "Oslo"}), ("add", {"a": 1, "b": 2})]


@pytest.mark.parametrize("text", [
    '{"name": "Alice", "age": 3}',  # an answer that happens to have a "name" key
    '```json\n{"city": "Paris", "temperature": 21}\n```',
    '```json\n{"name": "lookup_user", "arguments": {"id": 3}}\n```',  # not a bound tool
    '[1, 2, 3]',
    'The forecast: {sunny} and {"warm": true}.',
    '```python\nweather = {"city": "Paris"}\nprint(weather)\n```',
])
def test_ordinary_json_and_code_are_not_calls(text):
    parsed = parse_tool_calls(text, NAMES)
    assert parsed.tool_calls == [] and parsed.invalid_tool_calls == []
    assert parsed.content == text.strip()


def test_without_tool_names_untagged_json_needs_an_arguments_key():
    assert parse_tool_calls('{"name": "f", "arguments": {"x": 1}}').tool_calls[0]["args"] == {"x": 1}
    assert parse_tool_calls('{"name": "Alice", "age": 3}').tool_calls == []


def test_unreadable_arguments_of_a_bound_tool_are_an_invalid_call():
    parsed = parse_tool_calls('{"name": "add", "arguments": "a=1, b=2"}', NAMES)
    (bad,) = parsed.invalid_tool_calls
    assert parsed.tool_calls == [] and bad["name"] == "add" and "not valid JSON" in bad["error"]
    tagged = parse_tool_calls('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', NAMES)
    assert tagged.invalid_tool_calls[0]["name"] == "add" and "JSON object" in tagged.invalid_tool_calls[0]["error"]


def test_truncated_call_at_the_end_is_closed():
    assert calls('```json\n{"name": "get_weather", "arguments": {"city": "Par') == [("get_weather", {"city": "Par"})]


def test_every_call_gets_its_own_id():
    parsed = parse_tool_calls('{"name": "add", "arguments": {"a": 1}}\n{"name": "add", "arguments": {"a": 1}}', NAMES)
    assert len({c["id"] for c in parsed.tool_calls}) == 2


# ------------------------------------------------------------------ JSON repair
def test_repair_json():
    assert json.loads(repair_json('{"a": [1, 2, {"b": "x')[0]) == {"a": [1, 2, {"b": "x"}]}
    assert json.loads(repair_json('{"a": 1,}')[0]) == {"a": 1}
    assert json.loads(repair_json('{"a": [1, 2,], "b": 3}')[0]) == {"a": [1, 2], "b": 3}
    text, used = repair_json('{"a": {"b": 1}}} trailing')
    assert json.loads(text) == {"a": {"b": 1}} and used == len('{"a": {"b": 1}}')
    assert decode_json("  {'a': True, 'b': None}") == ({"a": True, "b": None}, len("  {'a': True, 'b': None}"))
    with pytest.raises(ValueError):
        decode_json("not json")


# ------------------------------------------------------------------ prompts
def _tool(name, **params):
    props = {k: {"type": v} for k, v in params.items()}
    return {"type": "function", "function": {"name": name, "description": name,
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": list(params)}}}


def test_answer_tool_of_a_forced_any_choice():
    tools = (_tool("get_weather", city="string"), _tool("Report", summary="string"))
    spec = ToolSpec(tools, "any", answer_tools=("Report",))
    assert spec.answer_name == "Report" and spec.forced_name is None
    assert "Call Report to give your final answer" in choice_instruction(spec)
    assert ToolSpec(tools, "any").answer_name is None  # no answer tool declared
    assert ToolSpec(tools, None, answer_tools=("Report",)).answer_name is None  # not forced
    assert ToolSpec(tools[1:], "any", answer_tools=("Report",)).answer_name is None  # the only tool: forced_name
    hermes = ToolFormat("hermes", True, True)
    assert forced_prefill(hermes, spec, "Report") == '<tool_call>\n{"name": "Report", "arguments": {"summary": "'
    with pytest.raises(ValueError, match="not one of the bound tools"):
        forced_prefill(hermes, spec, "nope")


def test_json_instruction_lists_fields_not_the_schema():
    schema = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "description": "the name"}, "age": {"type": "integer"}}}
    text = json_instruction(schema)
    assert 'Its fields: {"name": string, "age" (optional): integer}' in text
    assert "name: the name" in text and '"properties"' not in text
    assert json_instruction(None) == "Answer with one JSON object, and nothing else."


def test_markers_include_fences_and_name_objects():
    assert marker_start("Here:\n```", at_start_json=False) == (6, True)
    assert marker_start('Calling {"name"', at_start_json=False) == (8, True)
    assert marker_start("Calling {", at_start_json=False) == (8, False)
    assert marker_start("Plain words", at_start_json=True) == (None, False)


def test_normalize_tool_choice():
    assert normalize_tool_choice(False, NAMES) == "none"
    assert normalize_tool_choice({"name": "add"}, NAMES) == "add"
    with pytest.raises(ValueError, match="must name a function"):
        normalize_tool_choice({"type": "function"}, NAMES)


# ------------------------------------------------------------------ schemas
PERSON = {"title": "Person", "type": "object", "required": ["name", "age"], "properties": {
    "name": {"type": "string", "description": "the name"},
    "age": {"type": "integer", "minimum": 0},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
    "role": {"$ref": "#/$defs/Role"},
}, "$defs": {"Role": {"enum": ["admin", "user"]}}}


def test_schema_errors():
    assert schema_errors({"name": "Ada", "age": 36, "tags": ["x"], "role": "user"}, PERSON) == []
    assert schema_errors({"name": "Ada"}, PERSON) == ["$: missing required field 'age'"]
    assert schema_errors({"name": "Ada", "age": "36"}, PERSON) == ["$.age: expected integer, got str '36'"]
    assert schema_errors({"name": "Ada", "age": True}, PERSON)  # a bool is not an integer
    assert schema_errors({"name": "Ada", "age": 36.0}, PERSON) == []
    assert schema_errors({"name": "Ada", "age": -1}, PERSON) == ["$.age: -1 is below the minimum 0"]
    assert schema_errors({"name": "Ada", "age": 1, "tags": ["a", "b", 3]}, PERSON) == [
        "$.tags[2]: expected string, got int 3", "$.tags: more than 2 items"]
    assert schema_errors({"name": "Ada", "age": 1, "role": "root"}, PERSON)[0].startswith("$.role: 'root' is not one")
    closed = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}
    assert schema_errors({"a": 1, "b": 2}, closed) == ["$: unexpected field 'b'"]
    optional = {"type": "object", "properties": {"a": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}
    assert schema_errors({"a": None}, optional) == [] and schema_errors({"a": "x"}, optional)
    assert schema_errors([1], {"type": "object"}) == ["$: expected object, got list [1]"]


@pytest.mark.parametrize("echo", [
    PERSON,
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}},
    {"name": {"type": "string", "description": "the name"}, "age": {"type": "integer"}},
    {"title": "Person", "required": ["name", "age"], "properties": {}},
])
def test_a_copied_schema_is_recognised(echo):
    assert is_schema_echo(echo, PERSON)


def test_answers_are_not_echoes():
    assert not is_schema_echo({"name": "Ada", "age": 36}, PERSON)
    assert not is_schema_echo({"name": "string", "age": 3}, PERSON)
    nested = {"type": "object", "properties": {"address": {"type": "object", "properties": {
        "type": {"type": "string"}}}}}
    assert not is_schema_echo({"address": {"type": "home"}}, nested)  # an object field holding a "type" key
    with_type = {"type": "object", "properties": {"type": {"type": "string"}, "properties": {"type": "array"}}}
    assert not is_schema_echo({"type": "flat", "properties": ["garden"]}, with_type)


def test_quoted_numbers_and_booleans_take_the_declared_type():
    from homer_llm.tool_calls import ToolSpec, coerce_arguments, coerce_calls

    params = {"type": "object", "properties": {"a": {"type": "integer"}, "x": {"type": "number"},
                                               "on": {"type": "boolean"}, "name": {"type": "string"},
                                               "either": {"type": ["string", "integer"]}}}
    got = coerce_arguments({"a": " 3", "x": "2.5", "on": "True", "name": "7", "either": "7", "extra": "1"}, params)
    assert got == {"a": 3, "x": 2.5, "on": True, "name": "7", "either": "7", "extra": "1"}
    assert coerce_arguments({"a": "3.5", "x": "1e3", "on": "yes"}, params) == {"a": "3.5", "x": 1000.0, "on": "yes"}
    assert coerce_arguments({"x": "12"}, params) == {"x": 12} and coerce_arguments({"a": 3}, None) == {"a": 3}
    spec = ToolSpec(({"type": "function", "function": {"name": "multiply", "parameters": params}},))
    calls = [{"name": "multiply", "args": {"a": "4"}}, {"name": "other", "args": {"a": "4"}}]
    coerce_calls(spec, calls)
    assert calls == [{"name": "multiply", "args": {"a": 4}}, {"name": "other", "args": {"a": "4"}}]


def test_both_adapters_hand_tools_the_declared_types():
    pytest.importorskip("llama_index.core", reason="needs the llamaindex extra installed")
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.homer.base import _tool_message, _Tools

    from homer_llm.tool_calls import ToolFormat, ToolSpec

    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    tool = FunctionTool.from_defaults(multiply)
    spec = ToolSpec(({"type": "function", "function": {"name": "multiply",
                                                      "parameters": tool.metadata.get_parameters_dict()}},))
    message = _tool_message(_Tools(spec, ToolFormat("hermes", True, True, False)),
                            '<tool_call>\n{"name": "multiply", "arguments": {"a": "3", "b": "41"}}\n</tool_call>')
    (block,) = [b for b in message.blocks if getattr(b, "tool_kwargs", None)]
    assert block.tool_kwargs == {"a": 3, "b": 41} and tool.call(**block.tool_kwargs).raw_output == 123
