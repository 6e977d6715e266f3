"""After tool results, a reply that only repeats calls already made, or an empty one, is asked again in prose."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("langchain_core", reason="needs the langchain extra installed")

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_homer import HomerLLM  # noqa: E402
from test_langchain_support import ScriptedEngine, hermes_tokenizer  # noqa: E402
from tiny import tiny_model  # noqa: E402

from homer_llm import GenerationConfig, HomerModel  # noqa: E402
from homer_llm.tool_calls import call_opening_tokens  # noqa: E402

CALL_PARIS = '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>'
CALL_OSLO = '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Oslo"}}\n</tool_call>'


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return f"It is sunny in {location}."


def _engine(outputs):
    tok = hermes_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]})
    return ScriptedEngine(outputs, tokenizer=tok)


def _history():
    return [HumanMessage("What is the weather in Paris?"),
            AIMessage("", tool_calls=[{"name": "get_weather", "args": {"location": "Paris"}, "id": "c1"}]),
            ToolMessage("It is sunny in Paris.", tool_call_id="c1", name="get_weather")]


def test_the_opening_tokens_are_those_written_as_one_token():
    tok = hermes_tokenizer()
    assert call_opening_tokens(tok) == ()  # "<tool_call>" is several pieces there: nothing is banned
    tok.add_special_tokens({"additional_special_tokens": ["<tool_call>"]})
    banned = call_opening_tokens(tok)
    assert banned[0] == tok.convert_tokens_to_ids("<tool_call>")
    braces = {tok.convert_ids_to_tokens(i) for i in banned[1:]}
    assert braces and all(t.lstrip(" Ġ▁").startswith("{") for t in braces)
    assert tok.convert_tokens_to_ids("{") in banned[1:] or "{" not in tok.get_vocab()


def test_a_repeated_call_is_answered_in_prose():
    engine = _engine([CALL_PARIS, "It is sunny in Paris."])
    msg = HomerLLM(engine=engine).bind_tools([get_weather]).invoke(_history())
    assert msg.content == "It is sunny in Paris." and msg.tool_calls == []
    banned = engine.tokenizer.convert_tokens_to_ids("<tool_call>")
    assert engine.configs[0].suppress_tokens == () and banned in engine.configs[1].suppress_tokens
    assert msg.response_metadata["homer"]["asked_again"] == "repeated calls"
    # asked again: the tools hidden, the instruction added, the history kept
    from langchain_homer.chat_models import PROSE_INSTRUCTION

    first_prompt, second = engine.prompt_text(0), engine.prompt_text(1)
    assert "<tools>" in first_prompt and "<tools>" not in second
    assert PROSE_INSTRUCTION in second and "It is sunny in Paris." in second
    assert msg.usage_metadata["input_tokens"] == len(engine.prompts[0]) + len(engine.prompts[1])
    # both decodes are counted
    first = len(engine.tokenizer(CALL_PARIS, add_special_tokens=False)["input_ids"])
    assert msg.usage_metadata["output_tokens"] > first


def test_the_guard_streams_the_second_reply():
    engine = _engine([CALL_PARIS, "It is sunny in Paris."])
    chunks = list(HomerLLM(engine=engine).bind_tools([get_weather]).stream(_history()))
    assert "".join(str(c.content) for c in chunks) == "It is sunny in Paris."
    assert not any(c.tool_call_chunks for c in chunks)


def test_a_new_call_prose_and_allow_pass_through():
    engine = _engine([CALL_OSLO])
    msg = HomerLLM(engine=engine).bind_tools([get_weather]).invoke(_history())
    assert [c["args"] for c in msg.tool_calls] == [{"location": "Oslo"}] and len(engine.configs) == 1
    engine = _engine(["", "It is sunny in Paris."])  # an empty reply after the results: asked again
    msg = HomerLLM(engine=engine).bind_tools([get_weather]).invoke(_history())
    assert msg.content == "It is sunny in Paris." and msg.response_metadata["homer"]["asked_again"] == "empty reply"
    engine = _engine(["Sunny, as the tool said."])
    msg = HomerLLM(engine=engine).bind_tools([get_weather]).invoke(_history())
    assert msg.content == "Sunny, as the tool said." and len(engine.configs) == 1
    engine = _engine([CALL_PARIS, "unused"])
    msg = HomerLLM(engine=engine, repeated_calls="allow").bind_tools([get_weather]).invoke(_history())
    assert [c["args"] for c in msg.tool_calls] == [{"location": "Paris"}] and len(engine.configs) == 1
    # no earlier call since the user's message: nothing to repeat
    engine = _engine([CALL_PARIS])
    msg = HomerLLM(engine=engine).bind_tools([get_weather]).invoke("What is the weather in Paris?")
    assert msg.tool_calls and len(engine.configs) == 1


def test_suppressed_tokens_are_never_generated(tokenizer):
    torch.manual_seed(0)
    hm = HomerModel(tiny_model("llama", vocab=len(tokenizer)), tokenizer, name="tiny")
    parts = hm.prepare_question("Some words here.", "What?")
    first = hm.generate(parts, GenerationConfig(max_new_tokens=4)).token_ids
    again = hm.generate(parts, GenerationConfig(max_new_tokens=4, suppress_tokens=(first[0],))).token_ids
    assert again[0] != first[0] and first[0] not in again
    with pytest.raises(ValueError, match=r"suppress_tokens must be token ids \(ints >= 0\), got \(-1,\)"):
        GenerationConfig(suppress_tokens=(-1,))
