"""Finding the document inside a prompt that LlamaIndex has already formatted.

LlamaIndex hands an LLM finished strings (or chat messages) such as its QA template::

    Context information is below.
    ---------------------
    {context_str}
    ---------------------
    Given the context information and not prior knowledge, answer the query.
    Query: {query_str}
    Answer:

HOMER needs the long part (the context it compresses) apart from the instruction before it
(prefix) and the question after it (suffix, whose last token steers the pruning). The rule,
applied to ONE text (a completion prompt, or the longest chat message):

1. Fences. If the text has at least two fence lines (a line made only of 3+ ``-`` or 3+ ``=``,
   as every LlamaIndex QA / refine / summarize template has), the document is everything between
   the FIRST and the LAST fence line; the head (up to and including the first fence line) and the
   tail (from the last fence line) must both be short, else rule 2 applies (a markdown document
   full of ``---`` rules must not push half of itself into the prefix).
2. Paragraphs. Otherwise split the text at blank lines. If there are at least two paragraphs and
   the LAST one is short, it is the tail; then, if at least two paragraphs are left and the FIRST
   one is short, it is the head. The paragraphs in between, with their original separators, are
   the document.
3. Otherwise the whole text is the document (head and tail empty); the chat template's closing
   tokens (e.g. the assistant tag) then form HOMER's suffix.

"Short" is decided by the caller (``HomerLLM`` uses: at most a quarter of the chunk length in
tokens), so prefix and suffix always leave room for context in every HOMER chunk.
The split never changes text: ``head + document + tail == text`` always holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

FENCE = re.compile(r"^[ \t]*(?:-{3,}|={3,})[ \t]*$", re.MULTILINE)
BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


@dataclass(frozen=True)
class DocumentSplit:
    """A text cut into ``head + document + tail`` (exact concatenation).

    Attributes:
        head: instruction before the document (becomes part of HOMER's prefix).
        document: the long part HOMER compresses; never empty or whitespace-only.
        tail: question / instruction after it (becomes part of HOMER's suffix).
        rule: which rule matched: "fences", "paragraphs" or "whole".
    """

    head: str
    document: str
    tail: str
    rule: str


def _trim(head: str, body: str, tail: str) -> tuple[str, str, str]:
    """Move the body's leading / trailing whitespace into head / tail (text is unchanged)."""
    stripped = body.strip()
    if not stripped:
        return head, body, tail
    start = body.index(stripped)
    return head + body[:start], stripped, body[start + len(stripped):] + tail


def _by_fences(text: str, is_short: Callable[[str], bool]) -> DocumentSplit | None:
    fences = list(FENCE.finditer(text))
    if len(fences) < 2:
        return None
    first, last = fences[0], fences[-1]
    head, body, tail = text[: first.end()], text[first.end(): last.start()], text[last.start():]
    if not body.strip() or not is_short(head) or not is_short(tail):
        return None
    return DocumentSplit(*_trim(head, body, tail), rule="fences")


def _by_paragraphs(text: str, is_short: Callable[[str], bool]) -> DocumentSplit | None:
    # spans of paragraphs: [(start, end)] of non-blank stretches, separators between them
    cuts = list(BLANK_LINES.finditer(text))
    if not cuts:
        return None
    bounds = [0] + [c for m in cuts for c in (m.start(), m.end())] + [len(text)]
    paragraphs = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
    paragraphs = [(a, b) for a, b in paragraphs if text[a:b].strip()]
    if len(paragraphs) < 2:
        return None
    doc_start, doc_end = 0, len(text)
    if is_short(text[paragraphs[-1][0]:]):
        doc_end = paragraphs[-1][0]
        paragraphs = paragraphs[:-1]
    if len(paragraphs) >= 2 and is_short(text[: paragraphs[1][0]]):
        doc_start = paragraphs[1][0]
    if (doc_start, doc_end) == (0, len(text)):
        return None
    body = text[doc_start:doc_end]
    if not body.strip():
        return None
    return DocumentSplit(*_trim(text[:doc_start], body, text[doc_end:]), rule="paragraphs")


def split_document(text: str, is_short: Callable[[str], bool] | None = None) -> DocumentSplit:
    """Split ``text`` into head / document / tail by the rule in this module's docstring.

    Args:
        text: a formatted prompt or one chat message's content.
        is_short: predicate on a head or tail candidate (default: at most 2000 characters).

    Raises:
        TypeError: ``text`` is not a str.
        ValueError: ``text`` is empty or whitespace-only.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("the prompt is empty: there is no document to find")
    short = is_short or (lambda s: len(s) <= 2000)
    found = _by_fences(text, short) or _by_paragraphs(text, short)
    if found is not None:
        return found
    return DocumentSplit(*_trim("", text, ""), rule="whole")
