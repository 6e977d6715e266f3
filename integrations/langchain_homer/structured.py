"""Structured output for ``HomerLLM.with_structured_output``: validated objects or clear errors.

A local model asked for structured data may write JSON that does not follow the schema, or copy
the schema itself instead of answering. Every answer is therefore checked before it is returned:
decoded (small-model JSON repaired), refused when it is a copy of the schema
(``homer_llm.tool_calls.is_schema_echo``), validated against the JSON schema
(``schema_errors``), and, for pydantic classes and TypedDicts, validated by pydantic. A failure
raises ``OutputParserException``; with ``include_raw=True`` it is returned as ``parsing_error``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import BaseOutputParser
from langchain_core.outputs import ChatGeneration, Generation
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import TypeAdapter, ValidationError
from pydantic.v1 import ValidationError as ValidationErrorV1
from typing_extensions import is_typeddict

from homer_llm.tool_calls import decode_json, is_schema_echo, schema_errors

Method = Literal["function_calling", "json_schema", "json_mode"]


@dataclass(frozen=True)
class SchemaTarget:
    """What a structured answer is checked against.

    Attributes:
        schema: what the caller passed (pydantic class, TypedDict, JSON-schema or OpenAI tool dict), or None.
        name: the tool name of the schema (function calling), or None.
        parameters: the JSON schema of the answer object ({} when none is given: any object).
        kind: "pydantic", "typeddict", "json_schema" (dicts and other types) or "none".
    """

    schema: Any
    name: str | None
    parameters: dict[str, Any]
    kind: str

    @classmethod
    def of(cls, schema: Any, *, as_tool: bool) -> SchemaTarget:
        """The target for ``schema`` (a tool name is only derived when ``as_tool``).

        Raises:
            ValueError: a schema LangChain cannot convert (e.g. a JSON-schema dict without a title,
                as a tool).
        """
        if schema is None:
            return cls(None, None, {}, "none")
        if as_tool:
            tool = convert_to_openai_tool(schema)
            name, params = tool["function"]["name"], tool["function"].get("parameters") or {}
        else:
            name, params = None, convert_to_json_schema(schema)
        if isinstance(schema, type) and is_basemodel_subclass(schema):
            kind = "pydantic"
        elif isinstance(schema, type) and is_typeddict(schema):
            kind = "typeddict"
        else:
            kind = "json_schema"
        return cls(schema, name, params, kind)

    def validate(self, data: Any, raw: str) -> Any:
        """``data`` as the answer (a pydantic instance, or a dict).

        Raises:
            OutputParserException: not an object, a copy of the schema, or invalid for the schema.
        """
        if not isinstance(data, dict):
            raise OutputParserException(
                f"expected a JSON object for the structured answer, got {type(data).__name__}", llm_output=raw)
        if self.kind != "none" and is_schema_echo(data, self.parameters):
            raise OutputParserException(
                "the model wrote a copy of the schema instead of an answer that follows it", llm_output=raw)
        errors = schema_errors(data, self.parameters)
        if self.kind == "pydantic":
            # pydantic.v1 models (still accepted by LangChain) validate with parse_obj
            v2 = hasattr(self.schema, "model_validate")
            try:
                return self.schema.model_validate(data) if v2 else self.schema.parse_obj(data)
            except (ValidationError, ValidationErrorV1) as err:
                raise OutputParserException(f"the structured answer is invalid: {err}", llm_output=raw) from err
        if errors:
            raise OutputParserException("the structured answer does not follow the schema: " + "; ".join(errors[:5]),
                                        llm_output=raw)
        if self.kind == "typeddict":
            try:
                return TypeAdapter(self.schema).validate_python(data)
            except ValidationError as err:
                raise OutputParserException(f"the structured answer is invalid: {err}", llm_output=raw) from err
        return data


class ToolCallAnswerParser(BaseOutputParser[Any]):
    """The arguments of the forced structured-output tool call, validated (see ``SchemaTarget``)."""

    target: SchemaTarget

    @property
    def _type(self) -> str:
        return "homer_tool_call_answer"

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        generation = result[0]
        if not isinstance(generation, ChatGeneration) or not isinstance(generation.message, AIMessage):
            raise OutputParserException("structured output by function calling needs a chat message")
        return self.parse_message(generation.message)

    def parse_message(self, message: AIMessage) -> Any:
        raw = message.content if isinstance(message.content, str) else str(message.content)
        calls = [c for c in message.tool_calls if c["name"] == self.target.name] or list(message.tool_calls)
        if not calls:
            reasons = [str(c.get("error")) for c in message.invalid_tool_calls if c.get("error")]
            detail = f": {reasons[0]}" if reasons else ""
            raise OutputParserException(f"the model wrote no readable call of {self.target.name}{detail}",
                                        llm_output=raw or str(message.invalid_tool_calls))
        return self.target.validate(calls[0]["args"], str(calls[0]["args"]))

    def parse(self, text: str) -> Any:
        return self.target.validate(_decode(text), text)


class JsonAnswerParser(BaseOutputParser[Any]):
    """A JSON answer written as text, decoded and validated (see ``SchemaTarget``)."""

    target: SchemaTarget

    @property
    def _type(self) -> str:
        return "homer_json_answer"

    def parse(self, text: str) -> Any:
        return self.target.validate(_decode(text), text)


def _decode(text: str) -> Any:
    stripped = text.strip()
    if stripped.startswith("```"):  # a fenced answer
        stripped = stripped.strip("`").removeprefix("json").strip()
    try:
        value, _ = decode_json(stripped)
    except ValueError as err:
        raise OutputParserException(f"the answer is not valid JSON: {err}", llm_output=text) from err
    return value


def structured_parser(target: SchemaTarget, method: Method) -> BaseOutputParser[Any]:
    """The parser of ``method``'s answers for ``target``."""
    if method == "function_calling":
        return ToolCallAnswerParser(target=target)
    return JsonAnswerParser(target=target)


def with_raw(llm: Runnable[LanguageModelInput, BaseMessage], parser: BaseOutputParser[Any]) -> Runnable:
    """``llm`` then ``{"raw", "parsed", "parsing_error"}``; the model is the first step, so call
    arguments (``documents=``) reach it."""

    def parse(message: BaseMessage) -> dict[str, Any]:
        try:
            parsed = parser.invoke(message)
        except (OutputParserException, ValueError) as err:
            return {"raw": message, "parsed": None, "parsing_error": err}
        return {"raw": message, "parsed": parsed, "parsing_error": None}

    return llm | RunnableLambda(parse, name="HomerStructuredOutput")
