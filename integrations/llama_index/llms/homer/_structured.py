"""Structured answers: the brace escaping LlamaIndex leaves in prompts, and reading JSON answers.

``PydanticOutputParser.format`` (used by ``LLMTextCompletionProgram``, hence by
``structured_predict`` and ``as_structured_llm`` on LLMs that are not function-calling models)
appends the JSON schema with every brace doubled (``{{"properties": ...}}``): the escaping a
later ``str.format`` would undo. ``PromptTemplate.format`` applies the parser *after* it has
substituted the template variables, so nothing undoes it and the model reads, and copies,
doubled braces; its answer is then not JSON. A line whose doubled-brace text is not JSON but
whose unescaped text is a JSON object is that schema, and is unescaped here. Any other text,
including deliberate ``{{ }}`` such as template snippets, is left as it is.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from homer_llm.tool_calls import decode_json, is_schema_echo

_ESCAPED_LINE = re.compile(r"^[ \t]*\{\{.*\}\}[ \t]*$", re.MULTILINE)


def _unescape(match: re.Match[str]) -> str:
    line = match.group(0)
    try:
        json.loads(line)
        return line  # already JSON (a literal "{{" inside a string value, say)
    except ValueError:
        pass
    plain = line.replace("{{", "{").replace("}}", "}")
    try:
        value = json.loads(plain)
    except ValueError:
        return line
    return plain if isinstance(value, dict) else line


def unescape_json_lines(text: str) -> str:
    """``text`` with every line that is a brace-doubled JSON object written with single braces."""
    if "{{" not in text:
        return text
    return _ESCAPED_LINE.sub(_unescape, text)


def trim_json(text: str) -> str:
    """The first complete JSON value of ``text`` (the model may keep writing after it)."""
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return text
    return text[:end]


def parse_structured(output_cls: type[BaseModel], text: str) -> Any:
    """``output_cls`` validated from the JSON object at the start of the model's answer ``text``.

    Raises:
        ValueError: the answer is not JSON, is the schema copied instead of values, or does not
            validate; the message names the class and quotes the answer.
    """
    name = output_cls.__name__
    quoted = repr(text[:300])
    try:
        value, _ = decode_json(text)
    except ValueError as err:
        raise ValueError(f"the model's answer is not a JSON object for {name}: {quoted}") from err
    if is_schema_echo(value, output_cls.model_json_schema()):
        raise ValueError(f"the model copied the {name} schema instead of filling in values: {quoted}")
    try:
        return output_cls.model_validate(value)
    except ValidationError as err:
        raise ValueError(f"the model's answer does not fit {name}: {err.errors()[0].get('msg')} "
                         f"at {'.'.join(str(p) for p in err.errors()[0].get('loc', ()))}: {quoted}") from err
