"""Shared helpers of the LlamaIndex tests (no tests here): a tiny engine, event recorders, passkey documents."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from llama_index.core.callbacks import CallbackManager, CBEventType
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


@contextmanager
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine the spinning
    OpenMP workers make each decode step ~20x slower (measured: 236 ms vs 11 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_engine(window: int = 2048):
    """A HomerModel over a tiny llama; window 2048 (chunk 1024) so LlamaIndex's QA templates fit
    a chunk next to some document. Uncalibrated pruning: no calibration table to build."""
    from tiny import tiny_model, tiny_tokenizer

    from homer_llm import HomerConfig, HomerModel

    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab=len(tok), window=window)
    return HomerModel(model, tok, name="tiny-llama", homer=HomerConfig(pruning="uncalibrated"))


class LLMEventCounter(BaseCallbackHandler):
    """Counts CBEventType.LLM starts/ends and keeps their payloads (LlamaIndex callback system)."""

    def __init__(self) -> None:
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.starts: list[dict[str, Any]] = []
        self.ends: list[dict[str, Any]] = []

    def on_event_start(self, event_type, payload=None, event_id="", parent_id="", **kwargs: Any) -> str:
        if event_type == CBEventType.LLM:
            self.starts.append(payload or {})
        return event_id

    def on_event_end(self, event_type, payload=None, event_id="", **kwargs: Any) -> None:
        if event_type == CBEventType.LLM:
            self.ends.append(payload or {})

    def start_trace(self, trace_id=None) -> None:
        pass

    def end_trace(self, trace_id=None, trace_map=None) -> None:
        pass

    def manager(self) -> CallbackManager:
        return CallbackManager([self])


class EventRecorder(BaseEventHandler):
    """Records instrumentation events (by class name) from the root dispatcher."""

    events: list[Any] = []

    @classmethod
    def class_name(cls) -> str:
        return "EventRecorder"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)

    def names(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


class recording:
    """Context manager attaching an EventRecorder to the root dispatcher."""

    def __enter__(self) -> EventRecorder:
        self.recorder = EventRecorder(events=[])
        self.dispatcher = get_dispatcher()
        self.dispatcher.add_event_handler(self.recorder)
        return self.recorder

    def __exit__(self, *exc: Any) -> None:
        self.dispatcher.event_handlers.remove(self.recorder)


def passkey_document(target_tokens: int, count_tokens: Callable[[str], int], key: str, *,
                     depth: float = 0.5) -> str:
    """Filler text of at least ``target_tokens`` tokens (and a few sentences more at most) with one
    passkey sentence at ``depth`` (0: start, 1: end)."""
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."

    def build(repeats: int) -> str:
        lines = [FILLER] * repeats
        lines.insert(int(repeats * depth), needle)
        return " ".join(lines)

    repeats = max(2, target_tokens // max(1, count_tokens(FILLER + " ")))
    measured = count_tokens(build(repeats))
    repeats = max(2, int(repeats * target_tokens / measured))  # correct for joins between sentences
    while count_tokens(build(repeats)) < target_tokens:
        repeats += 1
    return build(repeats)
