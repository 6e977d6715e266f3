"""Tool calling for local chat templates: formats, prompts, forced-call prefills and parsing.

Local models write tool calls as text. Which text depends on the family the model was trained on;
the chat template tells which one it is (``detect_tool_format``):

- ``hermes`` (Qwen2/2.5/3, Hermes, most ChatML tool models): ``<tool_call>{"name": .., "arguments": {..}}</tool_call>``
- ``llama3`` (Llama 3.1+): a bare JSON object ``{"name": .., "parameters": {..}}``, optionally after
  ``<|python_tag|>``
- ``mistral`` (Mistral v3 templates): ``[TOOL_CALLS] [{"name": .., "arguments": {..}}, ..]``; newer
  Mistral templates (``[ARGS]``): ``[TOOL_CALLS]name[ARGS]{..}``
- ``json`` (templates that do not render tools, e.g. SmolLM2 or plain ChatML): the tools are
  described in a system message written here and the model is asked for
  ``<tool_call>[{"name": .., "arguments": {..}}]</tool_call>`` (the format of SmolLM2's
  function-calling data).

``parse_tool_calls`` accepts every one of these formats whatever the family, because small models
drift between them; control tokens such as ``[TOOL_CALLS]`` or ``<|python_tag|>`` are usually
stripped by the decoder, which leaves bare JSON, also accepted (bare JSON only when the named
tool is one of the bound tools, so an ordinary JSON answer is not mistaken for a call).
"""

from __future__ import annotations

import json
import re
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
    """

    tools: tuple[dict[str, Any], ...]
    choice: str | None = None

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


@dataclass
class ParsedOutput:
    """Text split into plain content and tool calls (LangChain ``tool_calls`` / ``invalid_tool_calls``)."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    invalid_tool_calls: list[dict[str, Any]] = field(default_factory=list)


def normalize_tool_choice(tool_choice: Any, names: Sequence[str]) -> str | None:
    """LangChain's ``tool_choice`` values to None / "auto" / "any" / "none" / a tool name.

    Accepts None, "auto", "none", "any", "required" (= "any"), True (= "any"), a tool name, or
    ``{"type": "function", "function": {"name": ...}}`` / ``{"name": ...}``.

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
def _template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates: prefer the tool-use one
        template = template.get("tool_use") or template.get("default") or ""
    return template if isinstance(template, str) else ""


_FORMATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def detect_tool_format(tokenizer) -> ToolFormat:
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


def _detect(tokenizer) -> ToolFormat:
    template = _template_text(tokenizer)
    if not template:
        return ToolFormat("json", native=False, native_history=False)
    native = False
    try:
        probe = [{"role": "user", "content": "hi"}]
        plain = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        with_tools = tokenizer.apply_chat_template(probe, tools=[_PROBE_TOOL], tokenize=False, add_generation_prompt=True)
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
        return f"You must answer with a call to one of these functions: {names}. Do not answer in prose."
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
    objects, ``{"n":`` otherwise, ``{}`` without properties: a small model then only writes values.
    """
    first = first_argument(schema)
    if first is None:
        return "{}"
    kind = ((schema or {}).get("properties") or {}).get(first, {}).get("type")
    opening = {"string": ' "', "array": " [", "object": " {"}.get(kind, "") if isinstance(kind, str) else ""
    return "{" + json.dumps(first, ensure_ascii=False) + ":" + opening


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
    parameters, so even a small model only has to write values; with several candidate tools (and no ``name`` chosen yet) it ends
    right before the name. It never ends with a bare space (BPE tokenizers attach spaces to the
    next word).
    """
    name = name or spec.forced_name
    if name is None:
        return name_prefix(fmt)
    tool = next(t for t in spec.tools if t["function"]["name"] == name)
    args = object_opening(tool["function"].get("parameters"))
    if fmt.family == "mistral" and fmt.mistral_args:
        return f"[TOOL_CALLS]{name}[ARGS]{args}"
    args_key = "parameters" if fmt.family == "llama3" else "arguments"
    return f'{_CALL_HEADS[fmt.family]} {json.dumps(name, ensure_ascii=False)}, "{args_key}": {args}'


def forced_stop(fmt: ToolFormat) -> tuple[str, ...]:
    """Stop strings that end a forced single call early (saves decoding after the call)."""
    return ("</tool_call>",) if fmt.family in ("hermes", "json") else ()


def render_calls(fmt: ToolFormat, calls: Sequence[dict[str, Any]]) -> str:
    """Assistant tool calls as text in the family format (for templates without tool_calls)."""
    objs = [{"name": c["name"], "arguments": c.get("args") or {}} for c in calls]
    if fmt.family == "hermes":
        return "\n".join(f"<tool_call>\n{json.dumps(o, ensure_ascii=False)}\n</tool_call>" for o in objs)
    if fmt.family == "llama3":
        return "\n".join(json.dumps({"name": o["name"], "parameters": o["arguments"]}, ensure_ascii=False) for o in objs)
    if fmt.family == "mistral":
        return "[TOOL_CALLS]" + json.dumps(objs, ensure_ascii=False)
    return f"<tool_call>{json.dumps(objs, ensure_ascii=False)}</tool_call>"


def render_tool_result(name: str | None, content: str) -> str:
    """A tool result as user-turn text (for templates without a tool role)."""
    payload = json.dumps({"name": name or "tool", "content": content}, ensure_ascii=False)
    return f"<tool_response>\n{payload}\n</tool_response>"


# ------------------------------------------------------------------------------------ parsing
MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")
_TAG_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_MISTRAL_ARGS_RE = re.compile(r"\s*([A-Za-z_][\w.\-]*)\[ARGS\]")
_DECODER = json.JSONDecoder()


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def close_json(text: str) -> str:
    """Close the strings, arrays and objects a truncated JSON text left open (best effort)."""
    return repair_json(text)[0]


def repair_json(text: str) -> tuple[str, int]:
    """Best-effort repair of the JSON value at the start of ``text`` written by a small model.

    Closing brackets that match nothing open are dropped (``{"a": 1}}]`` inside a list), and
    whatever is still open when the text ends (truncated output) is closed. Returns the repaired
    text of the first value and how many characters of ``text`` it used.
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


def _decode_first(text: str) -> tuple[Any, int]:
    """Decode the JSON value at the start of ``text`` (after whitespace): (value, end offset).

    A malformed or truncated value is repaired with ``repair_json`` first.

    Raises:
        ValueError: no JSON value there.
    """
    start = len(text) - len(text.lstrip())
    try:
        value, end = _DECODER.raw_decode(text, start)
        return value, end
    except ValueError:
        repaired, used = repair_json(text[start:])
        return json.loads(repaired), start + used


def _as_calls(value: Any) -> list[dict[str, Any]] | None:
    """JSON call objects -> [{"name", "args"}] (None when ``value`` is not call-shaped)."""
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("function"), dict):  # OpenAI-shaped
            item = item["function"]
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return None
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return None
        calls.append({"name": item["name"], "args": args})
    return calls


def _mk_valid(call: dict[str, Any]) -> dict[str, Any]:
    return {"name": call["name"], "args": call["args"], "id": new_call_id(), "type": "tool_call"}


def _mk_invalid(raw: str, error: str, name: str | None = None) -> dict[str, Any]:
    return {"name": name, "args": raw.strip(), "id": new_call_id(), "error": error, "type": "invalid_tool_call"}


def _parse_payload(payload: str, out: ParsedOutput) -> None:
    """One JSON payload (object or list of objects) into ``out``'s valid or invalid calls."""
    try:
        value, _ = _decode_first(payload)
    except ValueError as err:
        out.invalid_tool_calls.append(_mk_invalid(payload, f"tool call is not valid JSON: {err}"))
        return
    calls = _as_calls(value)
    if calls is None:
        out.invalid_tool_calls.append(
            _mk_invalid(payload, 'tool call must be {"name": str, "arguments": object} or a list of them')
        )
        return
    out.tool_calls.extend(_mk_valid(c) for c in calls)


def parse_tool_calls(text: str, tool_names: Sequence[str] = ()) -> ParsedOutput:
    """Split a model's output into content and tool calls, accepting every supported format.

    Args:
        text: the decoded output (for a forced call: prefill + generated text).
        tool_names: the bound tools; bare JSON counts as a call only if it names one of them.

    Returns:
        ParsedOutput: ``content`` is the text outside the calls (stripped); malformed calls go to
        ``invalid_tool_calls`` with the raw text and the reason.
    """
    out = ParsedOutput(content="")
    # 1. <tool_call> ... </tool_call> blocks (Hermes/Qwen objects, SmolLM2-style lists)
    if "<tool_call>" in text:
        pieces = []
        last = 0
        for match in _TAG_RE.finditer(text):
            pieces.append(text[last:match.start()])
            last = match.end()
            body = match.group(1).strip()
            if body in ("", "[]"):
                continue
            _parse_payload(body, out)
        pieces.append(text[last:])
        out.content = "".join(pieces).strip()
        return out
    # 2. Mistral [TOOL_CALLS]
    if "[TOOL_CALLS]" in text:
        head, _, rest = text.partition("[TOOL_CALLS]")
        out.content = head.strip()
        if _MISTRAL_ARGS_RE.match(rest):
            while (m := _MISTRAL_ARGS_RE.match(rest)) is not None:
                name, rest = m.group(1), rest[m.end():]
                try:
                    args, end = _decode_first(rest)
                except ValueError as err:
                    out.invalid_tool_calls.append(_mk_invalid(rest, f"arguments are not valid JSON: {err}", name))
                    return out
                if not isinstance(args, dict):
                    out.invalid_tool_calls.append(_mk_invalid(rest[:end], "arguments must be a JSON object", name))
                else:
                    out.tool_calls.append(_mk_valid({"name": name, "args": args}))
                rest = rest[end:].removeprefix("[TOOL_CALLS]")
            out.content = (out.content + " " + rest.strip()).strip() if rest.strip() else out.content
        else:
            _parse_payload(rest, out)
        return out
    # 3. Llama <|python_tag|> (kept only when special tokens were not skipped)
    if "<|python_tag|>" in text:
        head, _, rest = text.partition("<|python_tag|>")
        out.content = head.strip()
        for piece in (p for p in re.split(r";\s*(?=\{)", rest.strip()) if p.strip()):
            _parse_payload(piece, out)
        return out
    # 4. bare JSON naming a bound tool (Llama 3 JSON, stripped control tokens)
    stripped = text.strip()
    if tool_names and stripped[:1] in ("{", "["):
        calls, end = _bare_json_calls(stripped, tool_names)
        if calls:
            out.tool_calls.extend(_mk_valid(c) for c in calls)
            out.content = stripped[end:].strip()
            return out
    out.content = stripped
    return out


def _bare_json_calls(text: str, tool_names: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
    calls: list[dict[str, Any]] = []
    pos = 0
    while pos < len(text) and text[pos] in "{[":
        try:
            value, end = _decode_first(text[pos:])
        except ValueError:
            break
        found = _as_calls(value)
        if not found or any(c["name"] not in tool_names for c in found):
            break
        calls.extend(found)
        pos += end
        while pos < len(text) and text[pos] in " \t\r\n;":
            pos += 1
    return calls, pos


def marker_start(text: str, *, at_start_json: bool) -> tuple[int | None, bool]:
    """Where a tool call may begin in streamed ``text``.

    Returns (index, certain): ``index`` of the earliest full marker, or of a trailing partial
    marker (``certain`` False: more text decides), or None. With ``at_start_json``, text whose
    first non-space character is ``{`` or ``[`` counts as a (certain) call start.
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
