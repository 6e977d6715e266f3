"""Splitting a prompt into HOMER's prefix / context / suffix token ids (HOMER.md section 1)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DOCUMENT_PLACEHOLDER = "\ue000HOMER_DOCUMENT\ue000"
"""Put this string in a message's content where the document goes (see ``split_chat``)."""


@dataclass(frozen=True)
class PromptParts:
    """Token ids of the three parts. Only ``context`` is ever compressed; ``suffix`` is non-empty."""

    prefix: tuple[int, ...]
    context: tuple[int, ...]
    suffix: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("prefix", "context", "suffix"):
            object.__setattr__(self, name, _token_ids(name, getattr(self, name)))
        if not self.suffix:
            # HOMER needs a last (query) token outside the context: borrow the context's last one.
            if self.context:
                object.__setattr__(self, "suffix", self.context[-1:])
                object.__setattr__(self, "context", self.context[:-1])
            elif self.prefix:
                object.__setattr__(self, "suffix", self.prefix[-1:])
                object.__setattr__(self, "prefix", self.prefix[:-1])
            else:
                raise ValueError("empty prompt: no tokens at all")

    @property
    def ids(self) -> tuple[int, ...]:
        return self.prefix + self.context + self.suffix

    def __len__(self) -> int:
        return len(self.prefix) + len(self.context) + len(self.suffix)


def _token_ids(name: str, ids: Any) -> tuple[int, ...]:
    """``ids`` as a tuple of non-negative ints; TypeError/ValueError naming the first bad one.

    Floats are refused, not truncated (2.7 is no token id); numpy integers are accepted."""
    if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
        try:
            import torch

            if isinstance(ids, torch.Tensor) and ids.dim() == 1 and not ids.is_floating_point():
                ids = ids.tolist()
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
    if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
        raise TypeError(f"PromptParts.{name} must be a sequence of token ids, got {type(ids).__name__}")
    if type(ids) is tuple and all(type(i) is int and i >= 0 for i in ids):
        return ids
    out = []
    for i, value in enumerate(ids):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"PromptParts.{name}[{i}] must be an int token id, got {value!r}")
        if value < 0:
            raise ValueError(f"PromptParts.{name}[{i}] is a negative token id: {value}")
        out.append(int(value))
    return tuple(out)


def check_text(name: str, text: Any) -> None:
    """TypeError if ``text`` is not a str; ValueError if it cannot be encoded as UTF-8 (a lone
    surrogate, which tokenizers reject with an unrelated error)."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{name} holds a lone surrogate {text[err.start]!r} at character {err.start}: "
                         "not encodable text") from None


def _encode(tokenizer, text: str) -> tuple[int, ...]:
    check_text("text", text)
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()


def bos_prefix(tokenizer) -> tuple[int, ...]:
    """``(bos_token_id,)`` if the tokenizer puts a BOS in front of plain text, else ``()``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return (bos,) if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else ()


SINK_TOKENS = 4
"""Context tokens :func:`anchor_prefix` moves into an empty prefix."""


def anchor_prefix(parts: PromptParts, sink_tokens: int = SINK_TOKENS) -> PromptParts:
    """``parts`` with the first ``sink_tokens`` context tokens as its prefix when it has none.

    Why: every HOMER leaf is ``prefix + chunk + suffix``, run on its own from position 0. The model
    parks attention on a sequence's first token (an attention sink). With a shared prefix (a BOS, an
    instruction, a chat template) that first token is the same in every leaf and merges into one.
    With no prefix each leaf's own first token takes that role, and the merged cache holds one
    sink per leaf at position 0, which a model never saw in training (measured: perplexity of the
    default model at 2x its window 22.83 -> 22.21 with a 4-token shared prefix; the appended
    mode 19.38 -> 18.76). Moving the document's first tokens into the prefix gives every leaf the
    same start; the token sequence is unchanged. At most half the context moves, and a prompt that
    already has a prefix is returned as is.
    """
    if sink_tokens < 0:
        raise ValueError(f"sink_tokens must be >= 0, got {sink_tokens}")
    if parts.prefix or not sink_tokens:
        return parts
    n = min(sink_tokens, len(parts.context) // 2)
    return PromptParts(parts.context[:n], parts.context[n:], parts.suffix) if n else parts


def split_text(tokenizer, prefix: str, document: str, suffix: str) -> PromptParts:
    """Raw (template-free) split; the tokenizer's BOS, if it adds one, starts the prefix.

    With neither a BOS nor prefix text, the document's first tokens become the prefix
    (:func:`anchor_prefix`)."""
    parts = PromptParts(bos_prefix(tokenizer) + _encode(tokenizer, prefix), _encode(tokenizer, document),
                        _encode(tokenizer, suffix))
    return anchor_prefix(parts)


def split_chat(
    tokenizer,
    messages: Sequence[dict[str, Any]],
    document: str | None = None,
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> PromptParts:
    """Render ``messages`` with the tokenizer's chat template and split around the document.

    One message content holds ``DOCUMENT_PLACEHOLDER`` where ``document`` goes. Everything the
    template renders before it becomes the prefix, everything after it (generation prompt
    included) the suffix. Without a document, the whole rendering is prefix + suffix and nothing
    is compressed. Tokenized with ``add_special_tokens=False``, as transformers does for chat.

    A final assistant message with text content (and no tool calls) is continued, not closed:
    it becomes the start of the answer ("prefill"), which with HOMER also steers pruning, since
    the prompt's last token is the query that scores the document.

    Raises:
        ValueError: no chat template, or the placeholder missing / repeated when a document is given.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; use split_text(prefix, document, suffix)")
    messages = list(messages)
    last = messages[-1] if messages else {}
    prefill = (add_generation_prompt and last.get("role") == "assistant" and not last.get("tool_calls")
               and isinstance(last.get("content"), str) and last["content"].strip() != "")
    if prefill and DOCUMENT_PLACEHOLDER in last["content"]:
        raise ValueError("the document cannot go in a final assistant message (it is continued as the answer)")
    rendered = tokenizer.apply_chat_template(
        messages, tools=list(tools) if tools else None, tokenize=False,
        add_generation_prompt=add_generation_prompt and not prefill, continue_final_message=prefill,
    )
    if document is None:
        if DOCUMENT_PLACEHOLDER in rendered:
            raise ValueError("messages contain the document placeholder but no document was given")
        return PromptParts(_encode(tokenizer, rendered), (), ())
    count = rendered.count(DOCUMENT_PLACEHOLDER)
    if count != 1:
        raise ValueError(f"the document placeholder must appear exactly once in the messages, found {count}")
    head, tail = rendered.split(DOCUMENT_PLACEHOLDER)
    return PromptParts(_encode(tokenizer, head), _encode(tokenizer, document), _encode(tokenizer, tail))
