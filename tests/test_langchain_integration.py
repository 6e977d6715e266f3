"""HomerLLM on real models on CPU: slow tests.

- LangChain's ChatModelIntegrationTests on the embedded default model (SmolLM2-135M-Instruct):
  everything that does not need a model able to decide on its own to call a tool passes; the
  rest is marked xfail with the observed reason.
- The same suite on Qwen2.5-Coder-1.5B-Instruct (skipped when the model is not fetched), which
  calls tools on its own: tool calling, agent loops and structured output must pass.
- A ``ChatPromptTemplate | HomerLLM() | StrOutputParser()`` chain over a ~32k-token document with
  a buried 5-digit passkey returns the passkey, by invoke and by streaming (several chunks).

Run with ``pytest tests/test_langchain_integration.py -m slow`` (minutes on a CPU).
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_homer import HomerLLM
from langchain_tests.integration_tests import ChatModelIntegrationTests
from real_models import QWEN_SKIP, qwen_path

pytestmark = pytest.mark.slow
QWEN_15B = qwen_path("1.5b")

_NO_AUTONOMOUS_TOOLS = (
    "SmolLM2-135M-Instruct does not decide on its own to call a tool: with tool_choice=None it answers "
    "in prose (observed: 'The weather in San Francisco, CA, is typically ...'); forced calls work"
)


class TestHomerLLMStandardIntegration(ChatModelIntegrationTests):
    """langchain-tests' ChatModelIntegrationTests on the default model, CPU, greedy decoding."""

    @property
    def chat_model_class(self) -> type[HomerLLM]:
        return HomerLLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"max_tokens": 48}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": ["cache_read_input", "cache_creation_input"],
                "stream": ["cache_read_input", "cache_creation_input"]}

    def _cached(self, *, stream: bool, hit: bool) -> AIMessage:
        from homer_llm.doc_cache import DocumentCache

        llm = HomerLLM(max_tokens=8, document_cache=DocumentCache(mode="exact"))
        doc = "The museum opens at nine and closes at five. Tickets cost twelve euros."
        for _ in range(2 if hit else 1):
            if stream:
                full = None
                for chunk in llm.stream("When does the museum open?", documents=[doc]):
                    full = chunk if full is None else full + chunk
                message = full
            else:
                message = llm.invoke("When does the museum open?", documents=[doc])
        details = message.usage_metadata["input_token_details"]
        assert (details["cache_read"] > 0) if hit else (details["cache_creation"] > 0)
        return message

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        return self._cached(stream=stream, hit=True)

    def invoke_with_cache_creation_input(self, *, stream: bool = False) -> AIMessage:
        return self._cached(stream=stream, hit=False)

    @pytest.mark.xfail(reason=_NO_AUTONOMOUS_TOOLS, strict=False)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model) -> None:
        super().test_agent_loop(model)


@pytest.mark.skipif(QWEN_15B is None, reason=QWEN_SKIP)
class TestHomerLLMQwen15BIntegration(ChatModelIntegrationTests):
    """langchain-tests' ChatModelIntegrationTests on Qwen2.5-Coder-1.5B-Instruct, CPU, float32, greedy."""

    @property
    def chat_model_class(self) -> type[HomerLLM]:
        return HomerLLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # the suite's prompts are short: a 4096-token chunk keeps them on the plain path
        return {"model": str(QWEN_15B), "dtype": "float32", "max_tokens": 96, "chunk_len": 4096}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": ["cache_read_input", "cache_creation_input"],
                "stream": ["cache_read_input", "cache_creation_input"]}

    def _cached(self, *, stream: bool, hit: bool) -> AIMessage:
        from homer_llm.doc_cache import DocumentCache

        llm = HomerLLM(**{**self.chat_model_params, "max_tokens": 8}, document_cache=DocumentCache(mode="exact"))
        doc = "The museum opens at nine and closes at five. Tickets cost twelve euros."
        for _ in range(2 if hit else 1):
            if stream:
                full = None
                for chunk in llm.stream("When does the museum open?", documents=[doc]):
                    full = chunk if full is None else full + chunk
                message = full
            else:
                message = llm.invoke("When does the museum open?", documents=[doc])
        details = message.usage_metadata["input_token_details"]
        assert (details["cache_read"] > 0) if hit else (details["cache_creation"] > 0)
        return message

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        return self._cached(stream=stream, hit=True)

    def invoke_with_cache_creation_input(self, *, stream: bool = False) -> AIMessage:
        return self._cached(stream=stream, hit=False)


# --------------------------------------------------------------------------------- passkey
_SUBJECTS = ("A farmer", "The river", "An old clock", "The wind", "A small boat", "The teacher", "A grey cat",
             "The market", "A lamp", "The garden")
_ACTIONS = ("waited near", "moved past", "looked at", "rested beside", "hummed about", "wandered toward",
            "listened to", "drifted by")
_OBJECTS = ("the quiet hill", "the wooden gate", "the long road", "the open field", "the stone wall",
            "the bright window", "the narrow lane", "the sleeping town")


def passkey_document(tokens: int, key: int, depth: float, count, seed: int = 0) -> str:
    """Filler sentences (no digits) of about ``tokens`` tokens with the passkey line at ``depth``."""
    rng = random.Random(seed)
    sentences: list[str] = []
    total = 0
    while total < tokens:
        batch = [f"{rng.choice(_SUBJECTS)} {rng.choice(_ACTIONS)} {rng.choice(_OBJECTS)}." for _ in range(200)]
        sentences.extend(batch)
        total += count(" ".join(batch))
    while count(" ".join(sentences)) > tokens:
        sentences = sentences[:-20]
    sentences.insert(int(len(sentences) * depth), f"The pass key is {key}. Remember it. {key} is the pass key.")
    return " ".join(sentences)


PASSKEY_PROMPT = ChatPromptTemplate.from_messages([
    ("human",
     "There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
     "memorize it.\n\n{document}\n\nWhat is the pass key? Answer with the number only."),
])


@pytest.fixture(scope="module")
def passkey_case(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # the same temp cache dir as conftest's per-test fixture
        patch.setenv("HOMER_LLM_CACHE", str(tmp_path_factory.getbasetemp() / "homer-cache"))
        llm = HomerLLM(max_tokens=12)
        start = time.perf_counter()
        engine = llm.get_engine()
        loaded = time.perf_counter()
        engine.bias_table()  # the one-time calibration, kept out of the timings below
        print(f"\ndefault model: load {loaded - start:.1f} s, calibration {time.perf_counter() - loaded:.1f} s")
        key = 48213
        document = passkey_document(32000, key, depth=0.37, count=llm.get_num_tokens)
        yield llm, key, document


class _Metadata(BaseCallbackHandler):
    """Keeps the chat model's response metadata (the chain's parser drops it)."""

    def __init__(self) -> None:
        self.metadata: dict = {}

    def on_llm_end(self, response, **kwargs) -> None:
        self.metadata = response.generations[0][0].message.response_metadata


def _report(kind: str, seconds: float, meta: dict, answer: str) -> None:
    homer = meta["homer"]
    print(f"\npasskey {kind}: {homer['document_tokens']} document tokens -> {homer['cache_tokens']} cache tokens "
          f"(tree height {homer['tree_height']}), compress {homer['compress_seconds']:.1f} s, generate "
          f"{homer['generate_seconds']:.1f} s, total {seconds:.1f} s, answer {answer!r}")


def test_passkey_chain_invoke_32k(passkey_case):
    llm, key, document = passkey_case
    chain = PASSKEY_PROMPT | llm | StrOutputParser()
    handler = _Metadata()
    start = time.perf_counter()
    answer = chain.invoke({"document": document}, config={"callbacks": [handler]})
    _report("invoke", time.perf_counter() - start, handler.metadata, answer)
    assert str(key) in answer
    assert handler.metadata["homer"]["document_tokens"] > 30000  # the whole document was the context


def test_passkey_chain_stream_32k(passkey_case):
    llm, key, document = passkey_case
    chain = PASSKEY_PROMPT | llm | StrOutputParser()
    handler = _Metadata()
    start = time.perf_counter()
    chunks = list(chain.stream({"document": document}, config={"callbacks": [handler]}))
    text = "".join(chunks)
    _report(f"stream ({len(chunks)} chunks)", time.perf_counter() - start, handler.metadata, text)
    assert str(key) in text
    assert len([c for c in chunks if c]) >= 3


# --------------------------------------------------------------------------------- agents on the 1.5B model
@pytest.fixture(scope="module")
def qwen_llm():
    if QWEN_15B is None:
        pytest.skip(QWEN_SKIP)
    llm = HomerLLM(model=str(QWEN_15B), dtype="float32", max_tokens=96, chunk_len=4096)
    llm.get_engine()
    return llm



def test_qwen_tool_call_round_trip():
    """One real round trip, load included: the model calls the tool, reads its result, answers.

    Slow (module mark): about 1 to 3 minutes on a 2-core CPU, most of it the two generations."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    if QWEN_15B is None:
        pytest.skip(QWEN_SKIP)

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"It is sunny and 24 degrees Celsius in {city}."

    start = time.perf_counter()
    llm = HomerLLM(model=str(QWEN_15B), dtype="float32", max_tokens=64, chunk_len=4096).bind_tools([get_weather])
    question = HumanMessage("What's the weather in Paris?")
    call = llm.invoke([question])
    assert [c["name"] for c in call.tool_calls] == ["get_weather"]
    assert call.tool_calls[0]["args"]["city"].strip().lower() == "paris"
    result = ToolMessage(get_weather.invoke(call.tool_calls[0]["args"]), tool_call_id=call.tool_calls[0]["id"])
    answer = llm.invoke([question, call, result])
    print(f"\nround trip (load included): {time.perf_counter() - start:.0f} s; answer {answer.content!r}, "
          f"asked again: {answer.response_metadata['homer'].get('asked_again')}")
    assert not answer.tool_calls and "sunny" in answer.content.lower()


def _lookup_and_convert_tools():
    from langchain_core.tools import tool

    @tool
    def get_temperature(city: str) -> str:
        """Get the current temperature of a city, in degrees Celsius."""
        return f"The temperature in {city} is 30 degrees Celsius."

    @tool
    def celsius_to_fahrenheit(celsius: float) -> str:
        """Convert a temperature from degrees Celsius to degrees Fahrenheit."""
        return f"{celsius * 9 / 5 + 32:g} degrees Fahrenheit"

    return [get_temperature, celsius_to_fahrenheit]


_TWO_STEP_TASK = ("What is the temperature in Lisbon right now, in degrees Fahrenheit? Look up the temperature "
                  "first, then convert it with the conversion tool.")


def _trace(messages) -> str:
    parts = []
    for m in messages:
        calls = [f"{c['name']}({c['args']})" for c in getattr(m, "tool_calls", [])]
        parts.append(f"{type(m).__name__}: {str(m.content)[:80]!r} {' '.join(calls)}".rstrip())
    return "\n  ".join(parts)


_AGENT_SYSTEM = ("You are a helpful assistant. Call a tool only when you still need its result. "
                 "As soon as a tool result answers the user's question, reply to the user in one sentence.")


def test_qwen_create_agent_uses_both_tools(qwen_llm):
    """With a system prompt that says when to stop (without one the 1.5B chained the converter
    on its own results: docs/tool-calling.md)."""
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage, ToolMessage

    agent = create_agent(qwen_llm, tools=_lookup_and_convert_tools(), system_prompt=_AGENT_SYSTEM)
    start = time.perf_counter()
    state = agent.invoke({"messages": [HumanMessage(_TWO_STEP_TASK)]}, {"recursion_limit": 12})
    messages = state["messages"]
    print(f"\ncreate_agent, two tools: {len(messages)} messages in {time.perf_counter() - start:.0f} s\n  "
          + _trace(messages))
    used = [m.name for m in messages if isinstance(m, ToolMessage)]
    assert "get_temperature" in used and "celsius_to_fahrenheit" in used
    assert "86" in str(messages[-1].content) and not messages[-1].tool_calls


def test_qwen_create_agent_with_response_format_terminates(qwen_llm):
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from pydantic import BaseModel, Field

    class Temperature(BaseModel):
        """The final answer: a city's temperature in degrees Fahrenheit."""

        city: str = Field(description="the city")
        fahrenheit: float = Field(description="the temperature in degrees Fahrenheit")

    agent = create_agent(qwen_llm, tools=_lookup_and_convert_tools(), response_format=Temperature)
    start = time.perf_counter()
    state = agent.invoke({"messages": [HumanMessage(_TWO_STEP_TASK)]}, {"recursion_limit": 16})
    messages = state["messages"]
    answer = state["structured_response"]
    print(f"\ncreate_agent(response_format=Temperature): {len(messages)} messages in "
          f"{time.perf_counter() - start:.0f} s, structured_response={answer!r}\n  " + _trace(messages))
    # the loop ends with a structured answer (the code's job); whether the model looked the value up
    # first is its own quality: observed, the 1.5B answered at once with an invented 22.2
    assert isinstance(answer, Temperature) and answer.city.lower() == "lisbon"
    assert messages[-1].content.startswith("Returning structured response")
