"""Tool calling of HomerLLM with scripted model outputs: formats, parsing, forcing, agent loops."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_homer import HomerLLM
from langchain_homer.tools import (
    ToolFormat,
    ToolSpec,
    close_json,
    detect_tool_format,
    forced_prefill,
    marker_start,
    normalize_tool_choice,
    parse_tool_calls,
)
from pydantic import BaseModel, Field
from pydantic.v1 import BaseModel as BaseModelV1
from test_langchain_support import ScriptedEngine, hermes_tokenizer, shared_tiny_engine
from tiny import tiny_tokenizer
from typing_extensions import TypedDict

pytestmark = pytest.mark.usefixtures("one_thread")


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return f"It is sunny in {location}."


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Person(BaseModel):
    """A person."""

    name: str = Field(description="the name")
    age: int = Field(description="the age in years")


# ----------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', [("add", {"a": 1, "b": 2})]),
        ('<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", '
         '"arguments": {"location": "Oslo"}}]</tool_call>', [("add", {"a": 1, "b": 2}), ("get_weather", {"location": "Oslo"})]),
        ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n<tool_call>{"name": "add", '
         '"arguments": {"a": 3, "b": 4}}</tool_call>', [("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})]),
        ('{"name": "add", "parameters": {"a": 1, "b": 2}}', [("add", {"a": 1, "b": 2})]),
        ('<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}', [("add", {"a": 1, "b": 2})]),
        ('[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}]', [("add", {"a": 1, "b": 2})]),
        ('[TOOL_CALLS]add[ARGS]{"a": 1, "b": 2}', [("add", {"a": 1, "b": 2})]),
        ('[{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}]', [("add", {"a": 1, "b": 2})]),
        ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2', [("add", {"a": 1, "b": 2})]),  # truncated
        # a stray brace written by SmolLM2-135M (observed on the unicode standard test)
        ('<tool_call>[{"name": "add", "arguments": {"a": "你好"}}}]</tool_call>', [("add", {"a": "你好"})]),
        ('<tool_call>{"type": "function", "function": {"name": "add", "arguments": {"a": 5}}}</tool_call>',
         [("add", {"a": 5})]),
        ('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>', [("get_weather", {})]),
    ],
)
def test_parse_formats(text, expected):
    parsed = parse_tool_calls(text, ["add", "get_weather"])
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == expected
    assert parsed.invalid_tool_calls == []
    assert parsed.content == ""
    assert len({c["id"] for c in parsed.tool_calls}) == len(expected)


def test_parse_keeps_surrounding_text_and_ignores_plain_json():
    parsed = parse_tool_calls('Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"location": "Rome"}}'
                              "</tool_call>", ["get_weather"])
    assert parsed.content == "Let me check."
    assert parsed.tool_calls[0]["args"] == {"location": "Rome"}
    # bare JSON that does not name a bound tool is an ordinary answer
    plain = parse_tool_calls('{"name": "Alice", "age": 3}', ["get_weather"])
    assert plain.tool_calls == [] and plain.content == '{"name": "Alice", "age": 3}'
    assert parse_tool_calls("The answer is 4.", ["add"]).content == "The answer is 4."
    assert parse_tool_calls("<tool_call>[]</tool_call>", ["add"]).tool_calls == []


def test_parse_malformed_goes_to_invalid_tool_calls():
    parsed = parse_tool_calls("<tool_call>add(1, 2)</tool_call>", ["add"])
    assert parsed.tool_calls == []
    (bad,) = parsed.invalid_tool_calls
    assert bad["args"] == "add(1, 2)" and "JSON" in bad["error"]
    wrong_shape = parse_tool_calls('<tool_call>{"call": "add"}</tool_call>', ["add"])
    assert wrong_shape.invalid_tool_calls and not wrong_shape.tool_calls


def test_close_json_and_markers():
    assert json.loads(close_json('{"a": [1, 2, {"b": "x')) == {"a": [1, 2, {"b": "x"}]}
    assert json.loads(close_json('{"a": 1,')) == {"a": 1}
    assert marker_start("Sure. <tool", at_start_json=False) == (6, False)
    assert marker_start("Sure. <tool_call>{", at_start_json=False) == (6, True)
    assert marker_start('  {"name"', at_start_json=True) == (2, True)
    assert marker_start("Hello there", at_start_json=True) == (None, False)


def test_tool_choice_normalization():
    names = ["add", "get_weather"]
    assert normalize_tool_choice(None, names) is None
    assert normalize_tool_choice("required", names) == "any"
    assert normalize_tool_choice(True, names) == "any"
    assert normalize_tool_choice({"type": "function", "function": {"name": "add"}}, names) == "add"
    with pytest.raises(ValueError, match="not one of the bound tools"):
        normalize_tool_choice("multiply", names)
    with pytest.raises(ValueError):
        normalize_tool_choice(3, names)


def test_format_detection():
    plain = detect_tool_format(tiny_tokenizer())
    assert (plain.family, plain.native, plain.native_history) == ("json", False, False)
    hermes = detect_tool_format(hermes_tokenizer())
    assert (hermes.family, hermes.native, hermes.native_history) == ("hermes", True, True)


def test_default_model_template_family():
    """SmolLM2's template (as converted from the GGUF) ignores tools: the 'json' family is used."""
    smol_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>'"
        " + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok = tiny_tokenizer()
    tok.chat_template = smol_template
    assert detect_tool_format(tok).family == "json"


def test_forced_prefills():
    plain, hermes = detect_tool_format(tiny_tokenizer()), detect_tool_format(hermes_tokenizer())
    spec = ToolSpec((_tool("add", a="integer", b="integer"),), "add")
    assert forced_prefill(plain, spec) == '<tool_call>[{"name": "add", "arguments": {"a":'
    assert forced_prefill(hermes, spec) == '<tool_call>\n{"name": "add", "arguments": {"a":'
    assert forced_prefill(plain, ToolSpec((_tool("f", city="string"),), "f")).endswith('{"city": "')
    llama = ToolFormat("llama3", True, True)
    assert forced_prefill(llama, spec) == '{"name": "add", "parameters": {"a":'
    mistral_args = ToolFormat("mistral", True, True, mistral_args=True)
    assert forced_prefill(mistral_args, spec) == '[TOOL_CALLS]add[ARGS]{"a":'
    no_args = ToolSpec((_tool("ping"),), "any")  # "any" with one tool names it
    assert forced_prefill(plain, no_args) == '<tool_call>[{"name": "ping", "arguments": {}'
    two = ToolSpec((_tool("add"), _tool("sub")), "any")
    assert forced_prefill(plain, two) == '<tool_call>[{"name":'


def _tool(name, **params):
    props = {k: {"type": v} for k, v in params.items()}
    return {"type": "function", "function": {"name": name, "description": name,
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": list(params)}}}


# ----------------------------------------------------------------------------------- models
def test_invoke_parses_tool_call_and_renders_tools():
    engine = ScriptedEngine(['<tool_call>[{"name": "get_weather", "arguments": {"location": "Paris"}}]</tool_call>'])
    llm = HomerLLM(engine=engine).bind_tools([get_weather, add])
    msg = llm.invoke("What is the weather in Paris?")
    assert msg.content == ""
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"location": "Paris"})]
    assert msg.tool_calls[0]["id"]
    prompt = engine.prompt_text()
    assert "- get_weather(location: string): Get the weather at a location." in prompt
    assert "- add(a: integer, b: integer): Add two integers." in prompt
    assert any(b["type"] == "tool_call" for b in msg.content_blocks)


def test_auto_choice_plain_answer_has_no_calls():
    engine = ScriptedEngine(["Hello! How can I help?"])
    msg = HomerLLM(engine=engine).bind_tools([get_weather]).invoke("hi")
    assert msg.content == "Hello! How can I help?" and msg.tool_calls == []


def test_tool_choice_none_hides_tools():
    engine = ScriptedEngine(["Just text."])
    msg = HomerLLM(engine=engine).bind_tools([get_weather], tool_choice="none").invoke("hi")
    assert msg.content == "Just text." and "get_weather" not in engine.prompt_text()


def test_forced_named_choice_prefills_and_instructs():
    engine = ScriptedEngine([' 2, "b": 5}}]</tool_call>'])
    msg = HomerLLM(engine=engine).bind_tools([get_weather, add], tool_choice="add").invoke("Add 2 and 5")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("add", {"a": 2, "b": 5})]
    prompt = engine.prompt_text()
    assert "You must answer with a call to the function add" in prompt
    assert prompt.endswith('<|im_start|>assistant\n<tool_call>[{"name": "add", "arguments": {"a":')
    assert "</tool_call>" in engine.configs[-1].stop


def test_forced_any_with_several_tools_scores_the_names(monkeypatch):
    import langchain_homer.chat_models as chat_models

    picked = []

    def fake_choose(engine, context, texts):
        picked.append(list(texts))
        return 0  # get_weather

    monkeypatch.setattr(chat_models, "choose", fake_choose)
    engine = ScriptedEngine(['Oslo"}}]</tool_call>'], real_compress=True)
    msg = HomerLLM(engine=engine).bind_tools([get_weather, add], tool_choice="any").invoke("weather in Oslo")
    assert picked == [[' "get_weather",', ' "add",']]
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"location": "Oslo"})]
    assert engine.prompt_text().endswith('<|im_start|>assistant\n<tool_call>[{"name":')  # name written after scoring
    assert "one of these functions: get_weather, add" in engine.prompt_text()
    written = len(engine.tokenizer(' "get_weather", "arguments": {"location": "')["input_ids"])
    assert msg.usage_metadata["input_tokens"] == len(engine.prompts[-1]) + written


def test_forced_any_with_the_real_scorer_picks_a_bound_tool():
    engine = ScriptedEngine([' 1}}]</tool_call>'], real_compress=True)
    msg = HomerLLM(engine=engine).bind_tools([get_weather, add], tool_choice="any").invoke("x")
    assert msg.tool_calls and msg.tool_calls[0]["name"] in ("get_weather", "add")


def test_continuation_logprobs_match_the_plain_model():
    import torch
    from langchain_homer.scoring import continuation_logprobs

    engine = shared_tiny_engine()
    parts = engine.prepare_chat([{"role": "user", "content": "pick one"}])
    context = engine.compress(parts)  # one chunk: the plain path
    continuations = [[40, 41, 42], [40, 43], [50]]
    scores = continuation_logprobs(engine, context, continuations)
    for ids, got in zip(continuations, scores, strict=True):
        with torch.no_grad():
            logits = engine.model(torch.tensor([list(parts.ids) + ids])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        start = len(parts.ids) - 1
        expected = [float(logp[start + i, t]) for i, t in enumerate(ids)]
        assert got == pytest.approx(expected, abs=1e-4)


def test_forced_choice_without_parsable_call_is_a_clear_invalid_call():
    engine = ScriptedEngine([" I do not know"])
    msg = HomerLLM(engine=engine).bind_tools([add], tool_choice="add").invoke("Add")
    assert msg.tool_calls == []
    (bad,) = msg.invalid_tool_calls
    assert bad["name"] is None or bad["name"] == "add"
    assert bad["error"]


def test_native_template_receives_tools_and_history():
    engine = ScriptedEngine(["The sum is 3."], tokenizer=hermes_tokenizer())
    llm = HomerLLM(engine=engine).bind_tools([add])
    history = [
        HumanMessage("What is 1 + 2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}]),
        ToolMessage("3", tool_call_id="c1"),
    ]
    msg = llm.invoke(history)
    assert msg.content == "The sum is 3."
    prompt = engine.prompt_text()
    assert "# Tools" in prompt and '"name": "add"' in prompt
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}' in prompt
    assert "<|im_start|>tool\n3<|im_end|>" in prompt


def test_fallback_template_renders_history_as_text():
    engine = ScriptedEngine(["It is sunny."])
    history = [
        SystemMessage("Be brief."),
        HumanMessage("Weather in Rome?"),
        AIMessage([{"type": "text", "text": "Checking."},
                   {"type": "tool_use", "id": "c9", "name": "get_weather", "input": {"location": "Rome"}}],
                  tool_calls=[{"name": "get_weather", "args": {"location": "Rome"}, "id": "c9", "type": "tool_call"}]),
        ToolMessage("sunny", tool_call_id="c9", status="error"),
    ]
    HomerLLM(engine=engine).bind_tools([get_weather]).invoke(history)
    prompt = engine.prompt_text()
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\nYou can call these functions:\n- get_weather(")
    assert 'Checking.\n<tool_call>[{"name": "get_weather", "arguments": {"location": "Rome"}}]</tool_call>' in prompt
    assert '<tool_response>\n{"name": "get_weather", "content": "Error: sunny"}\n</tool_response>' in prompt


def test_tool_history_without_bound_tools_is_accepted():
    engine = ScriptedEngine(["3"])
    msg = HomerLLM(engine=engine).invoke([
        HumanMessage("1+2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "x", "type": "tool_call"}]),
        ToolMessage("3", tool_call_id="x", name="add"),
    ])
    assert msg.content == "3"


def test_stream_holds_tool_call_and_emits_it_last():
    out = 'Checking now. <tool_call>[{"name": "get_weather", "arguments": {"location": "Lima"}}]</tool_call>'
    engine = ScriptedEngine([out])
    chunks = list(HomerLLM(engine=engine).bind_tools([get_weather]).stream("Weather in Lima?"))
    assert len(chunks) > 2
    assert all("<tool" not in c.content for c in chunks)
    assert chunks[-1].chunk_position == "last" and chunks[-1].tool_call_chunks
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert isinstance(full, AIMessageChunk)
    assert full.content == "Checking now."
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("get_weather", {"location": "Lima"})]
    assert full.usage_metadata["input_tokens"] == len(engine.prompts[-1])


def test_stream_plain_text_with_tools_bound_streams_normally():
    engine = ScriptedEngine(["No tool needed here."])
    chunks = list(HomerLLM(engine=engine).bind_tools([get_weather]).stream("hi"))
    assert "".join(c.content for c in chunks) == "No tool needed here."
    assert len([c for c in chunks if c.content]) > 2


async def test_astream_tool_call():
    engine = ScriptedEngine(['<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 1}}]</tool_call>'])
    full = None
    async for chunk in HomerLLM(engine=engine).bind_tools([add], tool_choice="auto").astream("1+1"):
        full = chunk if full is None else full + chunk
    assert full.tool_calls[0]["args"] == {"a": 1, "b": 1}


def test_with_structured_output_via_tool():
    engine = ScriptedEngine(['Ada", "age": 36}}]</tool_call>'])
    structured = HomerLLM(engine=engine).with_structured_output(Person)
    assert structured.invoke("Ada is 36.") == Person(name="Ada", age=36)
    assert engine.prompt_text().endswith('<tool_call>[{"name": "Person", "arguments": {"name": "')
    streamed = list(structured.stream("Ada is 36."))
    assert streamed[-1] == Person(name="Ada", age=36)


def test_with_structured_output_json_schema_and_json_mode():
    engine = ScriptedEngine(['Bo", "age": 7} and some trailing words'])
    structured = HomerLLM(engine=engine).with_structured_output(Person, method="json_schema")
    assert structured.invoke("Bo is 7") == Person(name="Bo", age=7)
    prompt = engine.prompt_text()
    assert 'Its fields: {"name": string, "age": integer}' in prompt and prompt.endswith('assistant\n{"name": "')
    engine = ScriptedEngine(['"name": "Bo", "age": 7}'])
    as_dict = HomerLLM(engine=engine).with_structured_output(None, method="json_mode")
    assert as_dict.invoke("Bo is 7") == {"name": "Bo", "age": 7}
    raw = HomerLLM(engine=ScriptedEngine(["not json"])).with_structured_output(
        Person, method="json_schema", include_raw=True).invoke("x")
    assert raw["parsed"] is None and raw["parsing_error"] is not None


def test_bind_tools_rejects_bad_choices():
    llm = HomerLLM(engine=ScriptedEngine(["x"]))
    with pytest.raises(ValueError, match="not one of the bound tools"):
        llm.bind_tools([add], tool_choice="multiply")
    with pytest.raises(ValueError, match="needs at least one tool"):
        llm.bind_tools([], tool_choice="any")


def test_agent_loop_with_create_agent():
    from langchain.agents import create_agent

    engine = ScriptedEngine([
        '<tool_call>[{"name": "get_weather", "arguments": {"location": "Paris"}}]</tool_call>',
        "It is sunny in Paris today.",
    ])
    agent = create_agent(model=HomerLLM(engine=engine), tools=[get_weather])
    state = agent.invoke({"messages": [HumanMessage("What's the weather in Paris?")]})
    messages = state["messages"]
    assert isinstance(messages[1], AIMessage) and messages[1].tool_calls[0]["name"] == "get_weather"
    assert isinstance(messages[2], ToolMessage) and messages[2].content == "It is sunny in Paris."
    assert messages[-1].content == "It is sunny in Paris today."
    second_prompt = engine.prompt_text(1)
    assert '<tool_response>\n{"name": "get_weather", "content": "It is sunny in Paris."}' in second_prompt
    assert '<tool_call>[{"name": "get_weather", "arguments": {"location": "Paris"}}]</tool_call>' in second_prompt


def test_agent_loop_unknown_tool_gets_error_feedback():
    from langchain.agents import create_agent

    engine = ScriptedEngine([
        '<tool_call>[{"name": "get_wether", "arguments": {"location": "Paris"}}]</tool_call>',
        '<tool_call>[{"name": "get_weather", "arguments": {"location": "Paris"}}]</tool_call>',
        "Sunny.",
    ])
    agent = create_agent(model=HomerLLM(engine=engine), tools=[get_weather])
    state = agent.invoke({"messages": [HumanMessage("weather?")]})
    tool_messages = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert tool_messages[0].status == "error" and "get_wether" in tool_messages[0].content
    assert tool_messages[1].content == "It is sunny in Paris."
    assert state["messages"][-1].content == "Sunny."


def test_signature_listing():
    from langchain_homer.tools import signature

    tool_dict = {"type": "function", "function": {
        "name": "search", "description": "Search notes.",
        "parameters": {"type": "object", "required": ["query"], "properties": {
            "query": {"type": "string", "description": "what to look for"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "order": {"enum": ["new", "old"]},
        }},
    }}
    assert signature(tool_dict) == (
        '- search(query: string, tags?: array of string, order?: "new" | "old"): Search notes.\n'
        "    query: what to look for"
    )


# ----------------------------------------------------------------------------------- what models write
QWEN_FENCED = '```json\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n```'


@pytest.mark.parametrize("output", [
    QWEN_FENCED,
    '{"name": "get_weather", "parameters": {"location": "Paris"}}',
    'I will look it up.\n```\n{"name": "get_weather", "arguments": "{\\"location\\": \\"Paris\\"}"}\n```',
])
def test_untagged_calls_of_bound_tools_are_tool_calls(output):
    engine = ScriptedEngine([output], tokenizer=hermes_tokenizer())
    msg = HomerLLM(engine=engine).bind_tools([get_weather, add]).invoke("What's the weather in Paris?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"location": "Paris"})]
    assert "```" not in msg.content and '"name"' not in msg.content


def test_streamed_fenced_call_is_held_back_and_parsed():
    engine = ScriptedEngine([QWEN_FENCED], tokenizer=hermes_tokenizer())
    chunks = list(HomerLLM(engine=engine).bind_tools([get_weather]).stream("Weather in Paris?"))
    assert all("```" not in c.content and "{" not in c.content for c in chunks)
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("get_weather", {"location": "Paris"})]


def test_a_code_answer_with_tools_bound_is_content():
    answer = "Use this:\n```python\nprint({'a': 1})\n```"
    engine = ScriptedEngine([answer], tokenizer=hermes_tokenizer())
    msg = HomerLLM(engine=engine).bind_tools([get_weather]).invoke("Print a dict in Python")
    assert msg.tool_calls == [] and msg.content == answer
    streamed = "".join(c.content for c in HomerLLM(engine=engine).bind_tools([get_weather]).stream("again"))
    assert streamed == answer


# ----------------------------------------------------------------------------------- agents with response_format
class Forecast(BaseModel):
    """The weather report to give the user."""

    location: str = Field(description="the place")
    summary: str = Field(description="one sentence")


def test_create_agent_with_response_format_ends_with_the_structured_answer():
    """create_agent forces tool_choice="any" with the agent's tools and the answer tool bound on every turn:
    a repeated call (or prose) falls back to the answer tool, so the loop ends."""
    from langchain.agents import create_agent

    engine = ScriptedEngine([
        QWEN_FENCED,  # turn 1, the model's own reply: a new call, kept
        QWEN_FENCED,  # turn 2, the model's own reply: the same call again, not kept
        'Paris", "summary": "Sunny all day."}}\n</tool_call>',  # turn 2, the answer tool pre-written
    ], tokenizer=hermes_tokenizer(), real_compress=True)
    agent = create_agent(model=HomerLLM(engine=engine), tools=[get_weather], response_format=Forecast)
    state = agent.invoke({"messages": [HumanMessage("What's the weather in Paris?")]}, {"recursion_limit": 12})
    assert state["structured_response"] == Forecast(location="Paris", summary="Sunny all day.")
    ai = [m for m in state["messages"] if isinstance(m, AIMessage)]
    assert [c["name"] for m in ai for c in m.tool_calls] == ["get_weather", "Forecast"]
    first = engine.prompt_text(0)
    assert "Call Forecast to give your final answer" in first and first.endswith("<|im_start|>assistant\n")
    assert '"name": "Forecast"' in first and '"name": "get_weather"' in first  # both tools rendered
    assert engine.calls == 3 and len(engine.prompts) == 2  # one compression per turn
    msg = ai[-1]
    assert msg.usage_metadata["output_tokens"] > len(engine.tokenizer(engine.outputs[2])["input_ids"])


def test_forced_any_with_an_answer_tool_keeps_a_direct_answer_and_converts_prose():
    from langchain_core.tools import StructuredTool

    answer_tool = StructuredTool(name="Forecast", description="final answer",
                                 args_schema=Forecast.model_json_schema())
    llm = HomerLLM(engine=ScriptedEngine(
        ['<tool_call>\n{"name": "Forecast", "arguments": {"location": "Rome", "summary": "Warm."}}\n</tool_call>'],
        tokenizer=hermes_tokenizer(), real_compress=True))
    bound = llm.bind_tools([get_weather, answer_tool], tool_choice="any")
    assert bound.kwargs["answer_tools"] == ["Forecast"]
    msg = bound.invoke("Weather in Rome?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("Forecast", {"location": "Rome", "summary": "Warm."})]
    engine = ScriptedEngine(["It is warm in Rome.", 'Rome", "summary": "Warm."}}'], tokenizer=hermes_tokenizer(),
                            real_compress=True)
    msg = HomerLLM(engine=engine).bind_tools([get_weather, answer_tool], tool_choice="any").invoke("Rome?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("Forecast", {"location": "Rome", "summary": "Warm."})]
    assert msg.content == ""


def test_answer_tools_only_next_to_runnable_tools():
    from langchain_homer.tools import answer_tool_names

    assert answer_tool_names([get_weather, Forecast], ["get_weather", "Forecast"]) == ("Forecast",)
    assert answer_tool_names([Forecast, Person], ["Forecast", "Person"]) == ()  # nothing runnable: plain tools
    assert answer_tool_names([get_weather, add], ["get_weather", "add"]) == ()
    assert "answer_tools" not in HomerLLM(engine=ScriptedEngine(["x"])).bind_tools([get_weather, add]).kwargs


# ----------------------------------------------------------------------------------- structured output
class PersonDict(TypedDict):
    """A person."""

    name: str
    age: int


class PersonV1(BaseModelV1):
    """A person."""

    name: str
    age: int


PERSON_SCHEMA = {"title": "Person", "description": "A person.", "type": "object", "required": ["name", "age"],
                 "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
_CONTINUATIONS = {"function_calling": 'Ada", "age": 36}}]</tool_call>', "json_schema": 'Ada", "age": 36}',
                  "json_mode": 'Ada", "age": 36} That is all.'}


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
@pytest.mark.parametrize("schema", [Person, PersonV1, PersonDict, PERSON_SCHEMA],
                         ids=["pydantic", "pydantic-v1", "typeddict", "dict"])
def test_structured_output_every_method_and_schema_kind(method, schema):
    engine = ScriptedEngine([_CONTINUATIONS[method]])
    structured = HomerLLM(engine=engine).with_structured_output(schema, method=method)
    expected = schema(name="Ada", age=36) if schema in (Person, PersonV1) else {"name": "Ada", "age": 36}
    assert structured.invoke("Ada is 36.") == expected
    assert engine.prompt_text().endswith('{"name": "')  # the object's opening was written for the model
    raw = HomerLLM(engine=engine).with_structured_output(schema, method=method, include_raw=True).invoke("Ada")
    assert raw["parsed"] == expected and raw["parsing_error"] is None and isinstance(raw["raw"], AIMessage)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
@pytest.mark.parametrize("schema", [Person, PersonV1, PersonDict, PERSON_SCHEMA],
                         ids=["pydantic", "pydantic-v1", "typeddict", "dict"])
def test_structured_output_that_does_not_follow_the_schema_is_a_parsing_error(method, schema):
    from langchain_core.exceptions import OutputParserException

    # a small model writing the field types instead of values
    bad = {"function_calling": 'string", "age": "integer"}}]</tool_call>', "json_schema": 'string", "age": "integer"}',
           "json_mode": 'string", "age": "integer"}'}[method]
    llm = HomerLLM(engine=ScriptedEngine([bad]))
    with pytest.raises(OutputParserException):
        llm.with_structured_output(schema, method=method).invoke("Ada is 36.")
    raw = llm.with_structured_output(schema, method=method, include_raw=True).invoke("Ada is 36.")
    assert raw["parsed"] is None and isinstance(raw["parsing_error"], OutputParserException)


def test_a_copied_schema_is_never_the_answer():
    from langchain_core.exceptions import OutputParserException
    from langchain_homer.structured import SchemaTarget, ToolCallAnswerParser

    for schema in (PersonDict, PERSON_SCHEMA, Person):
        target = SchemaTarget.of(schema, as_tool=True)
        copied = dict(target.parameters)
        message = AIMessage("", tool_calls=[{"name": target.name, "args": copied, "id": "c1", "type": "tool_call"}])
        with pytest.raises(OutputParserException, match="copy of the schema"):
            ToolCallAnswerParser(target=target).invoke(message)
        fields = {"name": {"type": "string"}, "age": {"type": "integer"}}
        message = AIMessage("", tool_calls=[{"name": target.name, "args": fields, "id": "c2", "type": "tool_call"}])
        with pytest.raises(OutputParserException):
            ToolCallAnswerParser(target=target).invoke(message)


def test_structured_output_errors_name_the_reason():
    from langchain_core.exceptions import OutputParserException
    from langchain_homer.structured import SchemaTarget, ToolCallAnswerParser

    llm = HomerLLM(engine=ScriptedEngine([" I cannot say"]))
    with pytest.raises(OutputParserException, match="age"):  # the prefilled call lacks the required field
        llm.with_structured_output(Person).invoke("x")
    no_call = AIMessage("I cannot say", invalid_tool_calls=[
        {"name": "Person", "args": "?", "id": "c", "error": "tool call is not valid JSON", "type": "invalid_tool_call"}])
    with pytest.raises(OutputParserException, match="no readable call of Person: tool call is not valid JSON"):
        ToolCallAnswerParser(target=SchemaTarget.of(Person, as_tool=True)).invoke(no_call)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
@pytest.mark.parametrize("include_raw", [False, True])
def test_structured_output_passes_documents_to_the_model(method, include_raw):
    doc = "The lighthouse keeper, Ada Quill, turned 36 this spring."
    engine = ScriptedEngine([_CONTINUATIONS[method]])
    structured = HomerLLM(engine=engine).with_structured_output(Person, method=method, include_raw=include_raw)
    out = structured.invoke([HumanMessage("Who is the keeper?")], documents=[doc])
    assert "Ada Quill" in engine.prompt_text()
    parsed = out["parsed"] if include_raw else out
    assert parsed == Person(name="Ada", age=36)
    if include_raw:
        assert out["raw"].usage_metadata["input_tokens"] == len(engine.prompts[-1])


def test_structured_output_rejects_bad_arguments():
    llm = HomerLLM(engine=ScriptedEngine(["x"]))
    with pytest.raises(ValueError, match="method must be"):
        llm.with_structured_output(Person, method="xml")
    with pytest.raises(ValueError, match="needs a schema"):
        llm.with_structured_output(None, method="json_schema")
    with pytest.raises(ValueError, match="unsupported arguments"):
        llm.with_structured_output(Person, colour="blue")


def test_create_agent_with_provider_strategy_calls_tools_then_answers_in_json():
    from langchain.agents import create_agent
    from langchain.agents.structured_output import ProviderStrategy

    engine = ScriptedEngine([
        QWEN_FENCED,  # turn 1, free reply: a new call, kept
        "It is sunny in Paris.",  # turn 2, free reply: no call
        'Paris", "summary": "Sunny."} ',  # turn 2, the JSON answer's opening pre-written
    ], tokenizer=hermes_tokenizer(), real_compress=True)
    agent = create_agent(model=HomerLLM(engine=engine), tools=[get_weather], response_format=ProviderStrategy(Forecast))
    state = agent.invoke({"messages": [HumanMessage("What's the weather in Paris?")]}, {"recursion_limit": 12})
    assert state["structured_response"] == Forecast(location="Paris", summary="Sunny.")
    assert state["messages"][-1].content == '{"location": "Paris", "summary": "Sunny."}'
    assert "give your final answer this way" in engine.prompt_text(0)
    assert engine.prompt_text(0).endswith("<|im_start|>assistant\n")  # tools first: nothing pre-written


def test_response_format_without_tools_is_json_from_the_start():
    engine = ScriptedEngine(['Paris", "summary": "Sunny."}'])
    fmt = {"type": "json_schema", "json_schema": {"name": "Forecast", "schema": Forecast.model_json_schema()}}
    msg = HomerLLM(engine=engine).invoke("Weather?", response_format=fmt)
    assert msg.content == '{"location": "Paris", "summary": "Sunny."}'
    with pytest.raises(ValueError, match="response_format must be"):
        HomerLLM(engine=engine).invoke("x", response_format={"type": "xml"})
