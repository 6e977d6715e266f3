"""Plain (uncompressed) forward passes and per-token scoring, driven layer by layer through compat.

The baselines run the same layer loop as the engine (``homer_llm.compat``), so every method in a run
shares one code path for embeddings, masks and decoding, and a time budget can be checked between
layers: a 64k-token prefill on a CPU can take far longer than a run allows, and it must stop cleanly.

``score_continuation`` is the perplexity helper: teacher-force target tokens after any
``CompressedContext`` (HOMER's compressed cache, or a plain prefill) and return the negative
log-likelihood of every target token. ``generation.extend_context`` keeps only the last token's
logits, which is right for a question but not for perplexity, hence this helper.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from homer_llm import compat
from homer_llm.engine import CompressedContext, CompressionStats


class TimeBudgetExceeded(RuntimeError):
    """A method ran past its time budget (raised between layers or layer passes)."""


class Deadline:
    """A wall-clock deadline; ``check()`` raises TimeBudgetExceeded once it has passed.

    ``progress`` has the engine's progress signature, so it can be handed to ``HomerModel.compress``.
    """

    def __init__(
        self, seconds: float | None, heartbeat: Callable[[int, int], None] | None = None, every: float = 60.0
    ) -> None:
        """``heartbeat(done, total)``, if given, is called from ``progress`` at most every ``every`` s."""
        if seconds is not None and seconds <= 0:
            raise ValueError(f"deadline seconds must be positive or None, got {seconds}")
        self.seconds = seconds
        self.start = time.perf_counter()
        self.end = None if seconds is None else self.start + seconds
        self.heartbeat, self.every = heartbeat, every
        self._last_beat = self.start

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def check(self) -> None:
        if self.end is not None and time.perf_counter() > self.end:
            raise TimeBudgetExceeded(f"time budget of {self.seconds:.0f} s exceeded after {self.elapsed():.0f} s")

    def progress(self, done: int, total: int) -> None:
        self.check()
        if self.heartbeat is not None and time.perf_counter() - self._last_beat >= self.every:
            self._last_beat = time.perf_counter()
            self.heartbeat(done, total)


def _logits(parts: compat.ModelParts, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits [n, vocab] for hidden states [1, n, hidden]."""
    h = parts.norm(hidden.to(next(parts.norm.parameters()).device))
    return parts.lm_head(h.to(parts.head_device))[0].float()


@torch.inference_mode()
def prefill(
    parts: compat.ModelParts,
    ids: Sequence[int],
    *,
    keep_kv: bool = True,
    logits_last: int = 1,
    deadline: Deadline | None = None,
) -> tuple[list[compat.KV], torch.Tensor]:
    """Run the plain model over ``ids`` (positions 0..n-1, causal), layer by layer.

    Args:
        keep_kv: keep every layer's (K, V) ([1, n_kv, n, d] each) for decoding afterwards.
        logits_last: return logits for this many final positions.
    Returns:
        (kv per layer, or [] without keep_kv; float32 logits [logits_last, vocab]).
    """
    n = len(ids)
    if n == 0:
        raise ValueError("prefill of an empty sequence")
    if not 1 <= logits_last <= n:
        raise ValueError(f"logits_last must be in [1, {n}], got {logits_last}")
    hidden = compat.embed(parts, torch.tensor(list(ids), dtype=torch.long))
    pos_emb = compat.position_embeddings(parts, hidden, torch.arange(n))
    mask = compat.attention_mask(parts, n, 0, hidden.dtype, hidden.device)
    kv: list[compat.KV] = []
    for index in range(parts.num_layers):
        hidden, layer_kv = compat.run_layer(parts, index, hidden, pos_emb, mask)
        if keep_kv:
            assert layer_kv is not None
            kv.append(layer_kv)
        del layer_kv
        if deadline is not None:
            deadline.progress(index + 1, parts.num_layers)
    return kv, _logits(parts, hidden[:, -logits_last:])


def plain_context(parts: compat.ModelParts, ids: Sequence[int], *, deadline: Deadline | None = None) -> CompressedContext:
    """A plain prefill packaged as a CompressedContext, so the engine's decoding can continue it."""
    start = time.perf_counter()
    kv, logits = prefill(parts, ids, keep_kv=True, deadline=deadline)
    kv_bytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
    stats = CompressionStats(
        input_tokens=len(ids), cache_tokens=len(ids), tree_height=0, num_leaves=1,
        peak_kv_bytes=kv_bytes, seconds=time.perf_counter() - start,
    )
    return CompressedContext(tuple(kv), len(ids), logits[-1], stats)


@torch.inference_mode()
def score_continuation(
    parts: compat.ModelParts,
    context: CompressedContext,
    target: Sequence[int],
    *,
    deadline: Deadline | None = None,
) -> torch.Tensor:
    """Negative log-likelihood [N] (nats, float32) of ``target`` teacher-forced after ``context``.

    target[0] is scored by ``context.last_logits``; target[1:] by running target[:-1] through the
    layers with the context's cache as the past, at position ids ``next_position`` onwards.
    ``context`` is not modified.
    """
    if len(target) < 1:
        raise ValueError("empty target")
    tgt = torch.tensor(list(target), dtype=torch.long)
    first = torch.log_softmax(context.last_logits.float(), dim=-1)[tgt[0]]
    nll = [(-first).reshape(1).cpu()]
    if len(target) > 1:
        feed = tgt[:-1]
        n = feed.numel()
        cache = context.to_cache()
        hidden = compat.embed(parts, feed)
        positions = torch.arange(context.next_position, context.next_position + n)
        pos_emb = compat.position_embeddings(parts, hidden, positions)
        mask = compat.attention_mask(parts, n, context.cache_tokens, hidden.dtype, hidden.device)
        for index in range(parts.num_layers):
            hidden, _ = compat.run_layer(parts, index, hidden, pos_emb, mask, past=cache)
            if deadline is not None:
                deadline.check()
        logp = torch.log_softmax(_logits(parts, hidden), dim=-1).cpu()
        nll.append(-logp.gather(1, tgt[1:, None])[:, 0])
    return torch.cat(nll)


@torch.inference_mode()
def score_plain(
    parts: compat.ModelParts, context: Sequence[int], target: Sequence[int], *, deadline: Deadline | None = None
) -> torch.Tensor:
    """NLL [N] of ``target`` after ``context`` with one plain causal pass over both."""
    if not context:
        raise ValueError("score_plain needs at least one context token")
    n = len(target)
    _, logits = prefill(parts, list(context) + list(target), keep_kv=False, logits_last=n + 1, deadline=deadline)
    logp = torch.log_softmax(logits[:-1], dim=-1).cpu()
    return -logp.gather(1, torch.tensor(list(target), dtype=torch.long)[:, None])[:, 0]
