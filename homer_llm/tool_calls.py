"""Tool calls and structured answers written as text by local chat models (no framework needed).

This module is shared by the LangChain adapter (``langchain_homer``) and the LlamaIndex adapter:
it knows the tool formats of chat templates, writes the prompts and forced-call prefills, and
reads back what a model wrote. Public API (stable):

- ``detect_tool_format(tokenizer) -> ToolFormat``: the family the chat template writes calls in.
- ``parse_tool_calls(text, tool_names) -> ParsedOutput``: ``text`` (content outside the calls),
  ``tool_calls`` (dicts ``{"name", "args", "id", "type": "tool_call"}``) and
  ``invalid_tool_calls`` (dicts ``{"name", "args" (raw text), "id", "error", "type"}``).
- Prompts: ``tools_system_prompt``, ``choice_instruction``, ``forced_prefill``, ``forced_stop``,
  ``name_prefix`` / ``name_candidates`` (choosing a forced tool's name by scoring), ``render_calls``
  and ``render_tool_result`` (tool history for templates without a tool role), ``json_instruction``
  and ``object_opening`` (structured answers).
- JSON: ``repair_json`` / ``close_json`` (small models' broken JSON), ``decode_json``,
  ``schema_errors`` (validation against a JSON schema) and ``is_schema_echo`` (a model that copied
  the schema instead of answering).

Formats, by family (``detect_tool_format``):

- ``hermes`` (Qwen2/2.5/3, Hermes, most ChatML tool models): ``<tool_call>{"name": .., "arguments": {..}}</tool_call>``
- ``llama3`` (Llama 3.1+): a bare JSON object ``{"name": .., "parameters": {..}}``, optionally after
  ``<|python_tag|>``
- ``mistral`` (Mistral v3 templates): ``[TOOL_CALLS] [{"name": .., "arguments": {..}}, ..]``; newer
  Mistral templates (``[ARGS]``): ``[TOOL_CALLS]name[ARGS]{..}``
- ``json`` (templates that do not render tools, e.g. SmolLM2 or plain ChatML): the tools are
  described in a system message written here and the model is asked for
  ``<tool_call>[{"name": .., "arguments": {..}}]</tool_call>`` (the format of SmolLM2's
  function-calling data).

``parse_tool_calls`` accepts every one of these whatever the family, because small models drift
between them, and also what they write when they ignore the template's format: fenced JSON blocks
(```` ```json {..} ``` ````), bare JSON anywhere in the reply, several calls in one reply,
``arguments`` / ``parameters`` / ``args`` / ``input`` keys, arguments given as a JSON string,
Python-style literals (single quotes, ``True``/``None``) and trailing commas. Outside ``<tool_call>``
tags a JSON object is a call only when it names one of the bound tools, so an ordinary JSON
answer is never mistaken for a call.
"""

from __future__ import annotations

import ast
import json
import math
import re
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CALL_OPENINGS",
    "FAMILIES",
    "PROSE_INSTRUCTION",
    "ParsedOutput",
    "ToolFormat",
    "ToolSpec",
    "ask_again_reason",
    "call_key",
    "call_opening_tokens",
    "choice_instruction",
    "coerce_arguments",
    "coerce_calls",
    "close_json",
    "decode_json",
    "detect_tool_format",
    "first_argument",
    "forced_prefill",
    "forced_stop",
    "is_schema_echo",
    "json_instruction",
    "marker_start",
    "name_candidates",
    "name_prefix",
    "new_call_id",
    "normalize_tool_choice",
    "object_opening",
    "parse_tool_calls",
    "render_calls",
    "render_tool_result",
    "repair_json",
    "schema_errors",
    "signature",
    "tools_system_prompt",
]

FAMILIES = ("hermes", "llama3", "mistral", "json")

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "zq_probe_tool",
        "description": "probe",
        "parameters": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]},
    },
}


@dataclass(frozen=True)
class ToolFormat:
    """How a model's chat template handles tools.

    Attributes:
        family: one of FAMILIES (the text format the model writes calls in).
        native: the template renders a ``tools=`` list itself (else a system prompt is injected).
        native_history: the template renders assistant ``tool_calls`` and ``tool`` role messages
            (else they are written into message text in the family format).
        mistral_args: Mistral's ``name[ARGS]{..}`` variant.
    """

    family: str
    native: bool
    native_history: bool
    mistral_args: bool = False


@dataclass(frozen=True)
class ToolSpec:
    """Tools bound to one call.

    Attributes:
        tools: OpenAI-format tool dicts (``{"type": "function", "function": {...}}``).
        choice: None/"auto" (the model decides), "any" (must call one), "none" (tools hidden),
            or a tool name (must call that tool).
        answer_tools: names among ``tools`` that give the final answer rather than run anything
            (a structured-output tool bound next to ordinary tools, as agents do): with
            ``choice="any"`` such a tool ends the loop, see ``ToolSpec.answer_name``.
    """

    tools: tuple[dict[str, Any], ...]
    choice: str | None = None
    answer_tools: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t["function"]["name"] for t in self.tools)

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def forced_name(self) -> str | None:
        """The one tool a forced call must use (a named choice, or "any" with a single tool)."""
        if self.choice in (None, "auto", "none"):
            return None
        if self.choice == "any":
            return self.tools[0]["function"]["name"] if len(self.tools) == 1 else None
        return self.choice

    @property
    def forced(self) -> bool:
        return self.active and self.choice not in (None, "auto")

    @property
    def answer_name(self) -> str | None:
        """The answer tool a forced "any" call falls back to (None: no single one among several tools)."""
        if self.choice != "any" or len(self.tools) < 2:
            return None
        answers = [n for n in self.names if n in self.answer_tools]
        return answers[0] if len(answers) == 1 else None


@dataclass
class ParsedOutput:
    """Text split into plain content and tool calls.

    Attributes:
        content: the text outside the calls, stripped (also available as ``text``).
        tool_calls: ``{"name": str, "args": dict, "id": str, "type": "tool_call"}`` in the order written.
        invalid_tool_calls: ``{"name": str | None, "args": str (raw text), "id": str, "error": str,
            "type": "invalid_tool_call"}`` for calls that could not be read.
    """

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    invalid_tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.content


def normalize_tool_choice(tool_choice: Any, names: Sequence[str]) -> str | None:
    """Framework ``tool_choice`` values to None / "auto" / "any" / "none" / a tool name.

    Accepts None, "auto", "none", "any", "required" (= "any"), True (= "any"), False (= "none"),
    a tool name, or ``{"type": "function", "function": {"name": ...}}`` / ``{"name": ...}``.

    Raises:
        ValueError: an unknown tool name or an unsupported value.
    """
    if tool_choice is None or tool_choice is False:
        return None if tool_choice is None else "none"
    if tool_choice is True:
        return "any"
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if not isinstance(name, str):
            raise ValueError(f"tool_choice dict must name a function, got {tool_choice!r}")
        tool_choice = name
    if not isinstance(tool_choice, str):
        raise ValueError(f"tool_choice must be None, a string, a bool or a dict, got {tool_choice!r}")
    if tool_choice in ("auto", "none", "any"):
        return tool_choice
    if tool_choice == "required":
        return "any"
    if tool_choice not in names:
        raise ValueError(f"tool_choice {tool_choice!r} is not one of the bound tools {list(names)}")
    return tool_choice


# ------------------------------------------------------------------------------------ detection
def _template_text(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates: prefer the tool-use one
        template = template.get("tool_use") or template.get("default") or ""
    return template if isinstance(template, str) else ""


_FORMATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def detect_tool_format(tokenizer: Any) -> ToolFormat:
    """The ToolFormat of ``tokenizer``'s chat template (cached per tokenizer object)."""
    try:
        return _FORMATS[tokenizer]
    except (KeyError, TypeError):
        pass
    fmt = _detect(tokenizer)
    try:
        _FORMATS[tokenizer] = fmt
    except TypeError:  # not weak-referenceable
        pass
    return fmt


def _detect(tokenizer: Any) -> ToolFormat:
    template = _template_text(tokenizer)
    if not template:
        return ToolFormat("json", native=False, native_history=False)
    try:
        probe = [{"role": "user", "content": "hi"}]
        plain = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        with_tools = tokenizer.apply_chat_template(probe, tools=[_PROBE_TOOL], tokenize=False,
                                                   add_generation_prompt=True)
        native = "zq_probe_tool" in with_tools and "zq_probe_tool" not in plain
    except Exception:  # a template that cannot render tools at all
        native = False
    if not native:
        return ToolFormat("json", native=False, native_history=False)
    history = "tool_calls" in template
    if "[TOOL_CALLS]" in template:
        return ToolFormat("mistral", True, history, mistral_args="[ARGS]" in template)
    if "<tool_call>" in template:
        return ToolFormat("hermes", True, history)
    if "<|python_tag|>" in template or "<|start_header_id|>" in template:
        return ToolFormat("llama3", True, history)
    return ToolFormat("hermes", True, history)


# ------------------------------------------------------------------------------------ prompts
def _type_name(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array of {_type_name(schema['items'])}"
    if kind:
        return str(kind)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return " | ".join(_type_name(o) for o in options if isinstance(o, dict))
    return "any"


def signature(tool: dict[str, Any]) -> str:
    """One tool as a compact line: ``- name(arg: type, opt?: type): description``, then argument notes."""
    fn = tool["function"]
    params = fn.get("parameters") or {}
    props = params.get("properties") or {}
    required = set(params.get("required") or [])
    args = ", ".join(f"{k}{'' if k in required else '?'}: {_type_name(v)}" for k, v in props.items())
    line = f"- {fn['name']}({args})"
    if fn.get("description"):
        line += f": {fn['description'].strip()}"
    notes = [f"    {k}: {v['description'].strip()}" for k, v in props.items()
             if isinstance(v, dict) and v.get("description")]
    return "\n".join([line, *notes])


def tools_system_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The system text that describes ``tools`` to a model whose template cannot (family "json").

    Tools are listed as compact signatures rather than JSON schemas: small models asked to
    answer in JSON tend to copy a schema they were shown instead of filling in values.
    """
    listing = "\n".join(signature(t) for t in tools)
    return (
        f"You can call these functions:\n{listing}\n\n"
        "To call a function, answer with only:\n"
        '<tool_call>[{"name": "function name", "arguments": {"argument": value}}]</tool_call>\n'
        "If no function is needed, answer the user normally."
    )


def choice_instruction(spec: ToolSpec) -> str | None:
    """A system instruction for forced tool choices (None when the model may choose freely)."""
    if not spec.forced:
        return None
    if spec.choice == "any":
        names = ", ".join(spec.names)
        text = f"You must answer with a call to one of these functions: {names}. Do not answer in prose."
        if spec.answer_name:
            text += (f" Call {spec.answer_name} to give your final answer once you have the information "
                     "it needs.")
        return text
    return f"You must answer with a call to the function {spec.choice}. Do not answer in prose."


def first_argument(schema: dict[str, Any] | None) -> str | None:
    """The property a JSON object for ``schema`` starts with: the first required one, else the first."""
    schema = schema or {}
    props = schema.get("properties") or {}
    required = [r for r in schema.get("required") or [] if r in props]
    names = required or list(props)
    return names[0] if names else None


def object_opening(schema: dict[str, Any] | None) -> str:
    """The start of a JSON object for ``schema``, up to its first value's opening character.

    ``{"city": "`` for a string first property, ``{"tags": [`` / ``{"opts": {`` for arrays and
    objects, ``{"n":`` otherwise, ``{}`` without properties: a small model then only writes values
    (and cannot copy the schema instead of answering).
    """
    first = first_argument(schema)
    if first is None:
        return "{}"
    kind = ((schema or {}).get("properties") or {}).get(first, {}).get("type")
    opening = {"string": ' "', "array": " [", "object": " {"}.get(kind, "") if isinstance(kind, str) else ""
    return "{" + json.dumps(first, ensure_ascii=False) + ":" + opening


def json_instruction(schema: dict[str, Any] | None) -> str:
    """The system instruction for a JSON answer (following ``schema`` when given).

    The schema's fields are listed as a signature-like line with their descriptions rather than
    as the schema itself, for the reason given in ``tools_system_prompt``.
    """
    if not schema or not (schema.get("properties")):
        return "Answer with one JSON object, and nothing else."
    props = schema["properties"]
    required = set(schema.get("required") or [])
    fields = ", ".join(f'"{k}"{"" if k in required else " (optional)"}: {_type_name(v)}'
                       for k, v in props.items() if isinstance(v, dict))
    notes = [f"    {k}: {v['description'].strip()}" for k, v in props.items()
             if isinstance(v, dict) and isinstance(v.get("description"), str) and v["description"].strip()]
    lines = ["Answer with one JSON object holding the values (not a schema), and nothing else.",
             f"Its fields: {{{fields}}}", *notes]
    return "\n".join(lines)


_CALL_HEADS = {"hermes": '<tool_call>\n{"name":', "llama3": '{"name":', "mistral": '[TOOL_CALLS][{"name":',
               "json": '<tool_call>[{"name":'}


def name_prefix(fmt: ToolFormat) -> str:
    """The prefill before the tool name when several tools may be forced."""
    return "[TOOL_CALLS]" if fmt.family == "mistral" and fmt.mistral_args else _CALL_HEADS[fmt.family]


def name_candidates(fmt: ToolFormat, names: Sequence[str]) -> list[str]:
    """The text each candidate name adds after ``name_prefix`` (closing quote included)."""
    if fmt.family == "mistral" and fmt.mistral_args:
        return [f"{n}[ARGS]" for n in names]
    return [f" {json.dumps(n, ensure_ascii=False)}," for n in names]


def forced_prefill(fmt: ToolFormat, spec: ToolSpec, name: str | None = None) -> str:
    """The beginning of the assistant turn written for the model when a call is forced.

    With a known tool name the prefill runs into the arguments object up to its first value
    (``object_opening``: ``{"location": "``), or closes it (``{}``) for a tool without
    parameters, so even a small model only has to write values; with several candidate tools
    (and no ``name`` chosen yet) it ends right before the name. It never ends with a bare space
    (BPE tokenizers attach spaces to the next word).

    Raises:
        ValueError: ``name`` is not one of ``spec``'s tools.
    """
    name = name or spec.forced_name
    if name is None:
        return name_prefix(fmt)
    tool = next((t for t in spec.tools if t["function"]["name"] == name), None)
    if tool is None:
        raise ValueError(f"forced tool {name!r} is not one of the bound tools {list(spec.names)}")
    args = object_opening(tool["function"].get("parameters"))
    if fmt.family == "mistral" and fmt.mistral_args:
        return f"[TOOL_CALLS]{name}[ARGS]{args}"
    args_key = "parameters" if fmt.family == "llama3" else "arguments"
    return f'{_CALL_HEADS[fmt.family]} {json.dumps(name, ensure_ascii=False)}, "{args_key}": {args}'


PROSE_INSTRUCTION = ("Answer the user's last request in plain words from the tool results above. "
                     "Do not call a tool.")
"""The system instruction of the adapters' second reply after a repeated call or an empty reply
(``repeated_calls="answer"``: :func:`ask_again_reason`)."""


def call_key(name: str, args: Any) -> str:
    """One tool call (name and arguments) as a string, to compare calls across turns."""
    return json.dumps([name, args], sort_keys=True, ensure_ascii=False, default=str)


def ask_again_reason(text: str, calls: Sequence[dict[str, Any]], previous: frozenset[str] | set[str]) -> str | None:
    """Why a reply after tool results should be asked again in prose, or None.

    ``text``: the reply; ``calls``: its parsed valid calls; ``previous``: :func:`call_key` of the
    calls made since the user's last message (empty: no tool results yet, never asked again).
    "empty reply" when it says nothing; "repeated calls" when it opens with calls (nothing but
    space before the first) and every one of them was made already; prose, and any new call,
    stand.
    """
    if not previous:
        return None
    if not text.strip():
        return "empty reply"
    index, _ = marker_start(text, at_start_json=True)
    if index is None or text[:index].strip() or not calls:
        return None
    if all(call_key(c["name"], c.get("args")) in previous for c in calls):
        return "repeated calls"
    return None


CALL_OPENINGS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "```")
"""Texts that open a tool call in some family (a code fence may hold a JSON call)."""


def call_opening_tokens(tokenizer: Any) -> tuple[int, ...]:
    """Token ids that would open a tool call: those of :data:`CALL_OPENINGS` that ``tokenizer``
    writes as one token, then every token whose text starts with ``{`` (after leading spaces
    or newlines), where a bare JSON call begins; () when the tokenizer has no one-token opening.

    Suppressing them during decoding keeps a reply in prose (``GenerationConfig.suppress_tokens``);
    an opening spelt over several tokens is left alone, since banning its first piece would ban
    ordinary text too.
    """
    out: list[int] = []
    for marker in CALL_OPENINGS:
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] not in out:
            out.append(int(ids[0]))
    if not out:
        return ()
    # byte-level BPE writes a leading space as "Ġ" and a newline as "Ċ", sentencepiece a space as "▁"
    braces = sorted(int(i) for t, i in tokenizer.get_vocab().items()
                    if t.lstrip(" \t\nĠĊ▁").startswith("{") and int(i) not in out)
    return (*out, *braces)


_INT_RE = re.compile(r"[+-]?\d+")
_NUMBER_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _coerced(value: Any, schema: Any) -> Any:
    if not isinstance(value, str) or not isinstance(schema, dict):
        return value
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "string" in kinds:
        return value
    text = value.strip()
    if "integer" in kinds and _INT_RE.fullmatch(text):
        return int(text)
    if "number" in kinds and _NUMBER_RE.fullmatch(text):
        number = float(text)
        return int(number) if number.is_integer() and _INT_RE.fullmatch(text) else number
    if "boolean" in kinds and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


def coerce_arguments(args: dict[str, Any], parameters: dict[str, Any] | None) -> dict[str, Any]:
    """``args`` with quoted numbers and booleans read as the types ``parameters`` declares.

    Small models often write ``{"a": "3"}`` for an integer parameter. A tool that validates its
    input (LangChain's, through pydantic) converts that itself; one that does not (a LlamaIndex
    ``FunctionTool`` calls the function as it is) would multiply strings. Only top-level
    properties declared ``integer``, ``number`` or ``boolean`` (and not also ``string``) whose value
    is a string spelling exactly such a value change; everything else is returned as it was.
    """
    props = (parameters or {}).get("properties")
    if not isinstance(props, dict) or not isinstance(args, dict):
        return args
    return {k: _coerced(v, props.get(k)) for k, v in args.items()}


def coerce_calls(spec: ToolSpec, calls: Sequence[dict[str, Any]]) -> None:
    """Apply :func:`coerce_arguments` in place to parsed ``calls`` of ``spec``'s tools."""
    by_name = {t["function"]["name"]: t["function"].get("parameters") for t in spec.tools}
    for call in calls:
        if call.get("name") in by_name and isinstance(call.get("args"), dict):
            call["args"] = coerce_arguments(call["args"], by_name[call["name"]])


def forced_stop(fmt: ToolFormat) -> tuple[str, ...]:
    """Stop strings that end a forced single call early (saves decoding after the call)."""
    return ("</tool_call>",) if fmt.family in ("hermes", "json") else ()


def render_calls(fmt: ToolFormat, calls: Sequence[dict[str, Any]]) -> str:
    """Assistant tool calls (``{"name", "args"}``) as text in the family format (for templates without tool_calls)."""
    objs = [{"name": c["name"], "arguments": c.get("args") or {}} for c in calls]
    if fmt.family == "hermes":
        return "\n".join(f"<tool_call>\n{json.dumps(o, ensure_ascii=False)}\n</tool_call>" for o in objs)
    if fmt.family == "llama3":
        return "\n".join(json.dumps({"name": o["name"], "parameters": o["arguments"]}, ensure_ascii=False)
                         for o in objs)
    if fmt.family == "mistral":
        return "[TOOL_CALLS]" + json.dumps(objs, ensure_ascii=False)
    return f"<tool_call>{json.dumps(objs, ensure_ascii=False)}</tool_call>"


def render_tool_result(name: str | None, content: str) -> str:
    """A tool result as user-turn text (for templates without a tool role)."""
    payload = json.dumps({"name": name or "tool", "content": content}, ensure_ascii=False)
    return f"<tool_response>\n{payload}\n</tool_response>"


# ------------------------------------------------------------------------------------ JSON
_DECODER = json.JSONDecoder()


def close_json(text: str) -> str:
    """Close the strings, arrays and objects a truncated JSON text left open (best effort)."""
    return repair_json(text)[0]


def repair_json(text: str) -> tuple[str, int]:
    """Best-effort repair of the JSON value at the start of ``text`` written by a small model.

    Closing brackets that match nothing open are dropped (``{"a": 1}}]`` inside a list), commas
    right before a closer are dropped (``{"a": 1,}``), and whatever is still open when the text
    ends (truncated output) is closed. Returns the repaired text of the first value and how many
    characters of ``text`` it used.
    """
    stack: list[str] = []
    out: list[str] = []
    in_string = escape = False
    used = len(text)
    for i, ch in enumerate(text):
        if in_string:
            out.append(ch)
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack[-1] != ch:
                continue  # a stray closer
            stack.pop()
            _drop_trailing_comma(out)
            if not stack:
                out.append(ch)
                used = i + 1
                break
        out.append(ch)
    repaired = "".join(out)
    if stack or in_string:
        repaired += '"' if in_string else ""
        repaired = repaired.rstrip()
        if repaired.endswith(","):
            repaired = repaired[:-1]
        elif repaired.endswith(":"):
            repaired += " null"
        repaired += "".join(reversed(stack))
    return repaired, used


def _drop_trailing_comma(out: list[str]) -> None:
    j = len(out) - 1
    while j >= 0 and out[j] in " \t\r\n":
        j -= 1
    if j >= 0 and out[j] == ",":
        del out[j]


def decode_json(text: str) -> tuple[Any, int]:
    """Decode the JSON value at the start of ``text`` (after whitespace): (value, end offset).

    A malformed or truncated value is repaired with ``repair_json``; a Python-style literal
    (single quotes, True/False/None) is read with ``ast.literal_eval``.

    Raises:
        ValueError: no JSON value there.
    """
    start = len(text) - len(text.lstrip())
    try:
        return _DECODER.raw_decode(text, start)
    except ValueError:
        pass
    repaired, used = repair_json(text[start:])
    try:
        return json.loads(repaired), start + used
    except ValueError as err:
        try:
            value = ast.literal_eval(repaired)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            raise ValueError(str(err)) from err
        if not isinstance(value, dict | list):
            raise ValueError(str(err)) from err
        return value, start + used


# ------------------------------------------------------------------------------------ parsing
MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "```", '{"name"')
_TAG_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_MISTRAL_ARGS_RE = re.compile(r"\s*([A-Za-z_][\w.\-]*)\[ARGS\]")
_NAME_KEYS = ("name", "tool", "tool_name", "function", "action")
_ARG_KEYS = ("arguments", "parameters", "args", "input", "tool_input", "action_input", "params")
_SHAPE_ERROR = 'tool call must be {"name": str, "arguments": object} or a list of them'


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class _Call:
    """One call-shaped JSON object: its name, and its arguments or why they cannot be read."""

    name: str
    args: dict[str, Any] | None
    error: str | None = None
    explicit_args: bool = True


def _call_items(value: Any) -> list[Any]:
    """The candidate call objects in a decoded value (lists and ``{"tool_calls": [..]}`` unwrapped)."""
    items = value if isinstance(value, list) else [value]
    out: list[Any] = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("tool_calls"), list) and len(item) <= 2:
            out.extend(item["tool_calls"])
        elif isinstance(item, dict) and isinstance(item.get("function_call"), dict) and len(item) <= 2:
            out.append(item["function_call"])
        else:
            out.append(item)
    return out


def _as_call(item: Any) -> _Call | None:
    """A JSON object as a call (None when it has no name)."""
    if isinstance(item, dict) and isinstance(item.get("function"), dict):  # OpenAI-shaped
        item = item["function"]
    if not isinstance(item, dict):
        return None
    name_key = next((k for k in _NAME_KEYS if isinstance(item.get(k), str) and item[k].strip()), None)
    if name_key is None:
        return None
    name = item[name_key].strip()
    arg_key = next((k for k in _ARG_KEYS if k in item), None)
    if arg_key is None:  # arguments written next to the name (flattened)
        rest = {k: v for k, v in item.items() if k not in (name_key, "type", "id")}
        return _Call(name, rest, explicit_args=False)
    args = item[arg_key]
    if isinstance(args, str):
        if not args.strip():
            return _Call(name, {})
        try:
            args, _ = decode_json(args)
        except ValueError as err:
            return _Call(name, None, f"arguments of {name} are not valid JSON: {err}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return _Call(name, None, f"arguments of {name} must be a JSON object, got {type(args).__name__}")
    return _Call(name, args)


def _mk_valid(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "args": args, "id": new_call_id(), "type": "tool_call"}


def _mk_invalid(raw: str, error: str, name: str | None = None) -> dict[str, Any]:
    return {"name": name, "args": raw.strip(), "id": new_call_id(), "error": error, "type": "invalid_tool_call"}


def _add_payload(payload: str, out: ParsedOutput) -> None:
    """A tagged payload (object or list of objects, names not checked) into ``out``'s calls."""
    try:
        value, _ = decode_json(payload)
    except ValueError as err:
        out.invalid_tool_calls.append(_mk_invalid(payload, f"tool call is not valid JSON: {err}"))
        return
    items = _call_items(value)
    calls = [_as_call(i) for i in items]
    if not items or any(c is None for c in calls):
        out.invalid_tool_calls.append(_mk_invalid(payload, _SHAPE_ERROR))
        return
    for call in calls:
        assert call is not None
        if call.args is None:
            out.invalid_tool_calls.append(_mk_invalid(payload, call.error or _SHAPE_ERROR, call.name))
        else:
            out.tool_calls.append(_mk_valid(call.name, call.args))


def _untagged_calls(value: Any, tool_names: Sequence[str]) -> list[_Call] | None:
    """The calls in an untagged JSON value, or None when it is not a call of a bound tool.

    Every object must name a bound tool; with no names given, every object must carry an
    arguments key. A flattened object (arguments next to the name) counts when its name is bound.
    """
    items = _call_items(value)
    if not items:
        return None
    calls = [_as_call(i) for i in items]
    for call in calls:
        if call is None:
            return None
        if tool_names and call.name not in tool_names:
            return None
        if not tool_names and not call.explicit_args:
            return None
    return calls  # type: ignore[return-value]


def _json_spans(text: str, tool_names: Sequence[str]) -> list[tuple[int, int, list[_Call]]]:
    """(start, end, calls) of each untagged JSON value in ``text`` that is a call of a bound tool."""
    spans: list[tuple[int, int, list[_Call]]] = []
    pos = 0
    while True:
        starts = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
        if not starts:
            return spans
        start = min(starts)
        try:
            value, end = _decode_strict_or_tail(text, start)
        except ValueError:
            pos = start + 1
            continue
        calls = _untagged_calls(value, tool_names)
        if calls is not None:
            while text[end:end + 1] in ("}", "]"):  # stray closers right after a call belong to it
                end += 1
            floor = spans[-1][1] if spans else 0
            while start > floor and text[start - 1] in ("{", "["):  # and stray openers right before it
                start -= 1
            spans.append((start, end, calls))
            pos = end
        elif isinstance(value, dict | list) and end > start + 1:
            pos = end  # an ordinary JSON value: nothing inside it is a call
        else:
            pos = start + 1


def _decode_strict_or_tail(text: str, start: int) -> tuple[Any, int]:
    """Strict JSON at ``start``; repaired only when the value runs to the end of ``text`` (truncation)."""
    try:
        return _DECODER.raw_decode(text, start)
    except ValueError:
        pass
    value, used = decode_json(text[start:])
    end = start + used
    rest = text[end:].strip()
    if rest and not rest.startswith("```"):
        # repairs inside running text would swallow prose; accept them only for a value that
        # closed cleanly after the repair (stray brackets, trailing commas, Python literals)
        if not isinstance(value, dict | list):
            raise ValueError("not a JSON object")
    return value, end


def _calls_into(calls: list[_Call], raw: str, out: ParsedOutput) -> None:
    for call in calls:
        if call.args is None:
            out.invalid_tool_calls.append(_mk_invalid(raw, call.error or _SHAPE_ERROR, call.name))
        else:
            out.tool_calls.append(_mk_valid(call.name, call.args))


def parse_tool_calls(text: str, tool_names: Sequence[str] = ()) -> ParsedOutput:
    """Split a model's output into content and tool calls, accepting every supported format.

    Args:
        text: the decoded output (for a forced call: prefill + generated text).
        tool_names: the bound tools; untagged JSON (fenced or bare) counts as a call only if it
            names one of them. With no names, untagged JSON counts only with an arguments key.

    Returns:
        ParsedOutput: ``content`` is the text outside the calls (stripped); malformed calls go to
        ``invalid_tool_calls`` with the raw text and the reason.
    """
    tool_names = tuple(tool_names)
    out = ParsedOutput(content="")
    if "[TOOL_CALLS]" in text:
        return _parse_mistral(text, out)
    if "<|python_tag|>" in text and "<tool_call>" not in text:
        head, _, rest = text.partition("<|python_tag|>")
        out.content = head.strip()
        for piece in (p for p in re.split(r";\s*(?=\{)", rest.strip()) if p.strip()):
            _add_payload(piece, out)
        return out
    # 1. <tool_call> ... </tool_call> blocks (Hermes/Qwen objects, SmolLM2-style lists)
    remaining = text
    if "<tool_call>" in text:
        pieces = []
        last = 0
        for match in _TAG_RE.finditer(text):
            pieces.append(text[last:match.start()])
            last = match.end()
            body = match.group(1).strip()
            if body.startswith("```"):  # a fence inside the tag
                body = _FENCE_RE.sub(lambda m: m.group(2), body).strip()
            if body not in ("", "[]"):
                _add_payload(body, out)
        pieces.append(text[last:])
        remaining = "".join(pieces)
    # 2. fenced blocks whose whole body is calls of bound tools
    kept: list[str] = []
    last = 0
    for match in _FENCE_RE.finditer(remaining):
        body = match.group(2)
        spans = _json_spans(body, tool_names)
        outside = _cut(body, spans).strip()
        if spans:
            kept.append(remaining[last:match.start()])
            last = match.end()
            for start, end, calls in spans:
                _calls_into(calls, body[start:end], out)
            if outside:  # keep the block's other text, without the calls
                kept.append(f"```{match.group(1)}\n{outside}\n```")
    kept.append(remaining[last:])
    remaining = "".join(kept)
    # 3. bare JSON calls of bound tools anywhere in the text
    spans = _json_spans(remaining, tool_names)
    for start, end, calls in spans:
        _calls_into(calls, remaining[start:end], out)
    out.content = _cut(remaining, spans).strip()
    return out


def _cut(text: str, spans: Sequence[tuple[int, int, Any]]) -> str:
    pieces, last = [], 0
    for start, end, _ in spans:
        pieces.append(text[last:start])
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def _parse_mistral(text: str, out: ParsedOutput) -> ParsedOutput:
    head, _, rest = text.partition("[TOOL_CALLS]")
    out.content = head.strip()
    if not _MISTRAL_ARGS_RE.match(rest):
        _add_payload(rest, out)
        return out
    while (m := _MISTRAL_ARGS_RE.match(rest)) is not None:
        name, rest = m.group(1), rest[m.end():]
        try:
            args, end = decode_json(rest)
        except ValueError as err:
            out.invalid_tool_calls.append(_mk_invalid(rest, f"arguments are not valid JSON: {err}", name))
            return out
        if not isinstance(args, dict):
            out.invalid_tool_calls.append(_mk_invalid(rest[:end], "arguments must be a JSON object", name))
        else:
            out.tool_calls.append(_mk_valid(name, args))
        rest = rest[end:].removeprefix("[TOOL_CALLS]")
    if rest.strip():
        out.content = (out.content + " " + rest.strip()).strip()
    return out


def marker_start(text: str, *, at_start_json: bool) -> tuple[int | None, bool]:
    """Where a tool call may begin in streamed ``text``.

    Returns (index, certain): ``index`` of the earliest full marker, or of a trailing partial
    marker (``certain`` False: more text decides), or None. With ``at_start_json``, text whose
    first non-space character is ``{`` or ``[`` counts as a (certain) call start. A code fence
    (```` ``` ````) counts as a marker: its body may be a call, and the parse at the end decides.
    """
    if at_start_json:
        lead = len(text) - len(text.lstrip())
        if text[lead:lead + 1] in ("{", "["):
            return lead, True
    found = [i for i in (text.find(m) for m in MARKERS) if i >= 0]
    if found:
        return min(found), True
    for marker in MARKERS:
        for k in range(len(marker) - 1, 0, -1):
            if text.endswith(marker[:k]):
                return len(text) - k, False
    return None, False


# ------------------------------------------------------------------------------------ schemas
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,), "null": (type(None),),
    "integer": (int,), "number": (int, float),
}
_SCHEMA_KEYS = frozenset({"properties", "required", "$defs", "definitions", "additionalProperties", "$schema",
                          "title", "type", "description", "items", "anyOf", "allOf", "oneOf"})


def _type_ok(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return math.isfinite(value) and value.is_integer()
    return isinstance(value, _JSON_TYPES.get(kind, (object,)))


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def schema_errors(value: Any, schema: dict[str, Any] | None, *, _root: dict[str, Any] | None = None,
                  _path: str = "$") -> list[str]:
    """What in ``value`` does not follow the JSON ``schema`` (empty: it does).

    Checks the keywords structured answers use: ``type``, ``enum``, ``const``, ``properties``,
    ``required``, ``additionalProperties: false``, ``items``, ``anyOf`` / ``oneOf`` / ``allOf``,
    local ``$ref``, ``minimum`` / ``maximum``, ``minLength`` / ``maxLength`` and
    ``minItems`` / ``maxItems``; other keywords are not checked.
    """
    if not isinstance(schema, dict) or not schema:
        return []
    root = _root if _root is not None else schema
    schema = _resolve(schema, root)
    errors: list[str] = []
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if isinstance(kind, str) else []
    if kinds and not any(_type_ok(value, k) for k in kinds):
        return [f"{_path}: expected {' or '.join(kinds)}, got {type(value).__name__} {value!r:.60}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{_path}: {value!r:.60} is not one of {schema['enum']!r:.120}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{_path}: expected {schema['const']!r:.60}")
    for key, options in (("anyOf", schema.get("anyOf")), ("oneOf", schema.get("oneOf"))):
        if isinstance(options, list) and options and not any(
                not schema_errors(value, o, _root=root, _path=_path) for o in options):
            errors.append(f"{_path}: matches none of the {key} options")
    for sub in schema.get("allOf") or []:
        errors.extend(schema_errors(value, sub, _root=root, _path=_path))
    if isinstance(value, dict):
        errors.extend(_object_errors(value, schema, root, _path))
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                errors.extend(schema_errors(item, items, _root=root, _path=f"{_path}[{i}]"))
        if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
            errors.append(f"{_path}: fewer than {schema['minItems']} items")
        if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
            errors.append(f"{_path}: more than {schema['maxItems']} items")
    elif isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            errors.append(f"{_path}: shorter than {schema['minLength']} characters")
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            errors.append(f"{_path}: longer than {schema['maxLength']} characters")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(schema.get("minimum"), int | float) and value < schema["minimum"]:
            errors.append(f"{_path}: {value} is below the minimum {schema['minimum']}")
        if isinstance(schema.get("maximum"), int | float) and value > schema["maximum"]:
            errors.append(f"{_path}: {value} is above the maximum {schema['maximum']}")
    return errors


def _object_errors(value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
    errors = [f"{path}: missing required field {k!r}" for k in schema.get("required") or [] if k not in value]
    props = schema.get("properties") or {}
    for key, item in value.items():
        if key in props:
            errors.extend(schema_errors(item, props[key], _root=root, _path=f"{path}.{key}"))
        elif schema.get("additionalProperties") is False:
            errors.append(f"{path}: unexpected field {key!r}")
    return errors


def is_schema_echo(value: Any, schema: dict[str, Any] | None) -> bool:
    """Whether ``value`` is (a copy of) the schema rather than an answer that follows it.

    True when ``value`` carries schema keywords (``properties``, ``required``, ``$defs``, ...)
    that are not fields of the schema, or when the value of a field is itself that field's
    schema (``{"name": {"type": "string", ...}}`` where a string was expected).
    """
    if not isinstance(value, dict) or not isinstance(schema, dict):
        return False
    props = schema.get("properties") or {}
    if value == schema:
        return True
    structural = {"properties", "required", "$defs", "definitions", "additionalProperties", "$schema"}
    if any(k in value and k not in props for k in structural):
        return True
    if value.get("type") == "object" and "type" not in props and isinstance(value.get("properties"), dict):
        return True
    for key, sub in props.items():
        if key not in value or not isinstance(sub, dict):
            continue
        got = value[key]
        expected = _resolve(sub, schema).get("type")
        if (isinstance(got, dict) and expected not in ("object", None) and got
                and set(got) <= _SCHEMA_KEYS and ("type" in got or "description" in got)):
            return True
    return False


def tool_instructions(fmt: ToolFormat, spec: ToolSpec | None) -> str | None:
    """System text for bound tools: their description (templates without tools) and forced choice."""
    if spec is None or not spec.active:
        return None
    extra = [] if fmt.native else [tools_system_prompt(spec.tools)]
    instruction = choice_instruction(spec)
    if instruction:
        extra.append(instruction)
    return "\n\n".join(extra) or None


def add_system(dicts: Sequence[dict[str, Any]], text: str | None) -> list[dict[str, Any]]:
    """Append ``text`` to the leading system message (or insert one); a copy of ``dicts``."""
    out = [dict(m) for m in dicts]
    if not text:
        return out
    if out and out[0]["role"] == "system":
        head = out[0]["content"]
        out[0]["content"] = f"{head}\n\n{text}" if head.strip() else text
    else:
        out.insert(0, {"role": "system", "content": text})
    return out
