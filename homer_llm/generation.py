"""Decoding on a compressed cache: greedy or sampled, stop strings, streaming text deltas.

Decoding drives the decoder layers directly (compat.run_layer with a DynamicCache as the past),
with explicit position ids that continue at ``CompressedContext.next_position``, whatever the
cache length: after HOMER the cache length and the position ids are unrelated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from . import compat
from .config import GenerationConfig
from .engine import CompressedContext, append_tokens


@dataclass(frozen=True)
class Generation:
    """A finished generation.

    Attributes:
        text: decoded output, stop string (if any) removed.
        token_ids: generated ids (including a final EOS, if one was produced).
        finish_reason: "stop" (EOS or a stop string) or "length".
        seconds: decode wall time.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    seconds: float


def check_config(config: GenerationConfig) -> None:
    """ValueError naming a setting that would make decoding meaningless: a temperature, top_p or
    top_k that is not a finite number (NaN passes ``< 0`` checks; inf samples uniformly)."""
    for name in ("temperature", "top_p"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"GenerationConfig.{name} must be a finite number, got {value!r}")
    if isinstance(config.top_k, bool) or not isinstance(config.top_k, int):
        raise ValueError(f"GenerationConfig.top_k must be an int, got {config.top_k!r}")
    if config.seed is not None and (isinstance(config.seed, bool) or not isinstance(config.seed, int)):
        raise ValueError(f"GenerationConfig.seed must be an int or None, got {config.seed!r}")


def sample_next(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> int:
    """Pick the next token from [vocab] float32 logits under ``config``."""
    if config.greedy:
        return int(torch.argmax(logits))
    logits = logits / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # drop tokens once the mass BEFORE them already reaches top_p (the top token always stays)
        drop = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= config.top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.inference_mode()
def decode_step(parts: compat.ModelParts, cache, token: int, position: int) -> torch.Tensor:
    """Append one token at ``position`` to ``cache`` (a DynamicCache); return next logits [vocab]."""
    ids = torch.tensor([token])
    hidden = compat.embed(parts, ids)
    pos_emb = compat.position_embeddings(parts, hidden, torch.tensor([position]))
    for index in range(parts.num_layers):
        hidden, _ = compat.run_layer(parts, index, hidden, pos_emb, None, past=cache)
    return compat.final_logits(parts, hidden[:, -1:])


def _stop_index(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class TextStream:
    """Iterator of text deltas; after exhaustion, ``result`` holds the Generation.

    Deltas never contain a (partial) stop string and never end inside a multi-byte character.
    """

    def __init__(
        self,
        parts: compat.ModelParts,
        tokenizer,
        context: CompressedContext,
        config: GenerationConfig,
        eos_ids: set[int],
        lock=None,
    ) -> None:
        check_config(config)
        self._iter = self._locked(lock, self._run(parts, tokenizer, context, config, eos_ids))
        self.result: Generation | None = None

    def __iter__(self) -> Iterator[str]:
        return self._iter

    def __next__(self) -> str:
        return next(self._iter)

    @staticmethod
    def _locked(lock, inner: Iterator[str]) -> Iterator[str]:
        # The lock (the model's) is held from the first delta until the stream ends or is closed.
        with lock if lock is not None else nullcontext():
            yield from inner

    def _run(self, parts, tokenizer, context, config, eos_ids) -> Iterator[str]:
        start = time.perf_counter()
        generator = None
        if not config.greedy:
            generator = torch.Generator()
            if config.seed is not None:
                generator.manual_seed(config.seed)
            else:
                generator.seed()
        cache = context.to_cache()
        logits = context.last_logits
        position = context.next_position
        tokens: list[int] = []
        emitted = 0
        holdback = max((len(s) for s in config.stop), default=1) - 1
        reason = "length"
        text = ""
        banned = torch.tensor(config.suppress_tokens, dtype=torch.long) if config.suppress_tokens else None
        for step in range(config.max_new_tokens):
            if banned is not None:
                logits = logits.index_fill(0, banned.to(logits.device), float("-inf"))
            token = sample_next(logits, config, generator)
            tokens.append(token)
            if token in eos_ids:
                reason = "stop"
                text = tokenizer.decode(tokens[:-1], skip_special_tokens=True)
                break
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            cut = _stop_index(text, config.stop) if config.stop else None
            if cut is not None:
                text = text[:cut]
                reason = "stop"
                break
            safe = len(text) - holdback
            while safe > emitted and text[safe - 1] == "\ufffd":
                safe -= 1
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            if step + 1 < config.max_new_tokens:
                logits = decode_step(parts, cache, token, position)
                position += 1
        if len(text) > emitted:
            yield text[emitted:]
        self.result = Generation(text, tuple(tokens), reason, time.perf_counter() - start)


def generate(
    parts: compat.ModelParts, tokenizer, context: CompressedContext, config: GenerationConfig, eos_ids: set[int]
) -> Generation:
    """Decode to completion; see TextStream."""
    stream = TextStream(parts, tokenizer, context, config, eos_ids)
    for _ in stream:
        pass
    assert stream.result is not None
    return stream.result


@torch.inference_mode()
def extend_context(parts: compat.ModelParts, context: CompressedContext, ids: list[int] | tuple[int, ...]) -> CompressedContext:
    """Append ``ids`` after a compressed cache (a prefill with a past) and return the longer context.

    Used to ask a new question after a question-agnostic compressed document (HOMER.md 13): the
    new tokens take position ids from ``context.next_position`` on, attend causally to the whole
    cache, and the returned logits are those of the last appended token. ``context`` is untouched.
    """
    if not ids:
        return context
    n = len(ids)
    kv, logits = append_tokens(parts, context.kv, torch.tensor(list(ids)), context.next_position)
    stats = replace(
        context.stats,
        input_tokens=context.stats.input_tokens + n,
        cache_tokens=context.stats.cache_tokens + n,
    )
    return CompressedContext(kv, context.next_position + n, logits, stats)
