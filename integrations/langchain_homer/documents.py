"""Finding the long document inside an ordinary chat prompt, and joining explicit documents.

A chain such as ``ChatPromptTemplate | HomerLLM()`` stuffs the whole document into a message.
HOMER must compress only the document, never the instruction or the question around it (the
question's last token decides what is pruned). The rule, applied only when the rendered prompt
does not fit one HOMER chunk:

1. Take the message whose content is the longest (in characters; the last one on a tie).
2. Split its content into paragraphs at blank lines. If there is only one paragraph, split it
   into lines instead.
3. Walk the paragraphs from the end: each one moves into the suffix (kept verbatim, never
   compressed) while the suffix stays within ``edge_tokens`` tokens and at least one paragraph
   is left. Do the same from the start for the prefix. The walk stops at the first paragraph
   that does not fit, so a long paragraph always stays in the document.
4. What remains in the middle, from the first character of its first paragraph to the last
   character of its last one, is the document.

So ``"Answer from the text.\\n\\n<30 pages>\\n\\nQuestion: what is X?"`` compresses exactly the 30 pages.
Short paragraphs at the edges of the document itself may end up in the prefix/suffix: they are
then kept verbatim, which costs a few tokens of chunk space but loses nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
_LINES = re.compile(r"\n\s*")


@dataclass(frozen=True)
class DocumentSpan:
    """A document found inside ``contents[message_index][start:end]``."""

    message_index: int
    start: int
    end: int


def _segments(text: str, separator: re.Pattern) -> list[tuple[int, int]]:
    """(start, end) character spans of the non-empty pieces of ``text`` between separators."""
    spans, pos = [], 0
    for match in separator.finditer(text):
        if match.start() > pos:
            spans.append((pos, match.start()))
        pos = match.end()
    if pos < len(text):
        spans.append((pos, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def find_document_span(
    contents: Sequence[str], count_tokens: Callable[[str], int], edge_tokens: int
) -> DocumentSpan | None:
    """Locate the document by the module's rule; None when no message has any text.

    Args:
        contents: the text content of each message, in order.
        count_tokens: tokens of a text (the model's tokenizer).
        edge_tokens: budget of the prefix paragraphs and, separately, of the suffix paragraphs.
    """
    if not contents:
        return None
    index = max(range(len(contents)), key=lambda i: (len(contents[i]), i))
    text = contents[index]
    if not text.strip():
        return None
    segments = _segments(text, _BLANK_LINES)
    if len(segments) < 2:
        segments = _segments(text, _LINES)
    first, last = 0, len(segments) - 1
    used = 0
    while last > first:
        cost = count_tokens(text[segments[last][0]:segments[last][1]])
        if used + cost > edge_tokens:
            break
        used += cost
        last -= 1
    used = 0
    while first < last:
        cost = count_tokens(text[segments[first][0]:segments[first][1]])
        if used + cost > edge_tokens:
            break
        used += cost
        first += 1
    return DocumentSpan(index, segments[first][0], segments[last][1])


def document_text(doc: Any) -> str:
    """The text of a str or a LangChain ``Document`` (anything with ``page_content``).

    Raises:
        TypeError: anything else.
    """
    if isinstance(doc, str):
        return doc
    content = getattr(doc, "page_content", None)
    if isinstance(content, str):
        return content
    raise TypeError(f"documents must be str or langchain Document objects, got {type(doc).__name__}")


def join_documents(documents: Any, separator: str = "\n\n") -> str:
    """One context text from a str, a Document, or a sequence of them (joined by blank lines).

    Raises:
        TypeError: an element is neither str nor Document.
        ValueError: no text at all.
    """
    if isinstance(documents, str) or hasattr(documents, "page_content"):
        documents = [documents]
    if not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a list of str or Document, got {type(documents).__name__}")
    texts = [document_text(d) for d in documents]
    joined = separator.join(t.strip() for t in texts if t.strip())
    if not joined:
        raise ValueError("documents= was given but every document is empty")
    return joined
