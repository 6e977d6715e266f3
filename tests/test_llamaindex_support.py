"""Shared helpers of the LlamaIndex tests (no tests here): a tiny engine, event recorders, passkey documents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llama_index.core.callbacks import CallbackManager, CBEventType
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from tiny import tiny_engine as _tiny_engine

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def tiny_engine(window: int = 2048):
    """A HomerModel over a tiny llama; window 2048 (chunk 1024) so LlamaIndex's QA templates fit
    a chunk next to some document. Uncalibrated pruning: no calibration table to build."""
    return _tiny_engine(window=window)


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


# ---------------------------------------------------------------------- scripted replies, tool templates
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>\n"
    "For each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}{% if m['role'] == 'system' and loop.first %}"
    "{% elif m['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m['content'] }}\n</tool_response><|im_end|>\n"
    "{% elif m['role'] == 'assistant' and m['tool_calls'] %}<|im_start|>assistant\n{{ m['content'] }}"
    "{% for c in m['tool_calls'] %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}'
    "<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A Qwen2.5-like (hermes) template: renders ``tools=``, assistant ``tool_calls`` and tool results."""

LLAMA3_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if tools and loop.last %}Functions: {% for t in tools %}{{ t | tojson }} {% endfor %}\n{% endif %}"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
"""A Llama-3.1-like template that renders ``tools=`` (a function-calling family without tags)."""


class ScriptedStream:
    """What ``HomerModel.stream`` returns, over a scripted text (deltas of a few characters)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.result = None

    def __iter__(self):
        from homer_llm.generation import Generation

        def deltas():
            for i in range(0, len(self.text), 5):
                yield self.text[i:i + 5]
            self.result = Generation(self.text, (0,) * max(1, len(self.text)), "stop", 0.0)

        return deltas()


def scripted_engine(replies: list[str], template: str | None = None, window: int = 2048):
    """A tiny HomerModel whose prompts are real (template, HOMER compression) and whose replies are
    ``replies``, in order. ``engine.prompts`` keeps each call's prompt text (document included),
    ``engine.leaves`` the number of HOMER leaves it was compressed in, ``engine.stops`` the stops.

    The tiny random model can not write a tool call; the scripted replies stand for a model that
    does, so the tests exercise everything around the model: prompt, tools, parsing, agents.
    """
    from homer_llm import HomerModel
    from homer_llm.generation import Generation

    class ScriptedEngine(HomerModel):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.replies = list(replies)
            self.prompts: list[str] = []
            self.stops: list[tuple[str, ...]] = []
            self.leaves: list[int] = []

        def compress(self, parts, **kwargs):
            self.prompts.append(self.tokenizer.decode(list(parts.ids)))
            context = super().compress(parts, **kwargs)
            self.leaves.append(context.stats.num_leaves)
            return context

        def _next(self, config) -> str:
            self.stops.append(tuple(config.stop) if config is not None else ())
            if not self.replies:
                raise AssertionError("the scripted engine ran out of replies")
            return self.replies.pop(0)

        def generate(self, source, config=None, **kwargs):
            if not hasattr(source, "stats"):
                source = self.compress(source)
            text = self._next(config)
            return Generation(text, (0,) * max(1, len(text)), "stop", 0.0)

        def stream(self, source, config=None, **kwargs):
            if not hasattr(source, "stats"):
                source = self.compress(source)
            return ScriptedStream(self._next(config))

    return _tiny_engine(window=window, template=template, name="tiny-scripted", engine_class=ScriptedEngine)


# ---------------------------------------------------------------------- a long report with one fact in it
_TOPICS = ("staffing", "maintenance", "training", "safety", "energy use", "customer visits", "inventory counts",
           "software updates", "supplier meetings", "quality audits", "packaging", "fleet scheduling")
_SITES = ("Aberdeen", "Bilbao", "Cork", "Dresden", "Eindhoven", "Florence", "Ghent", "Hamburg", "Innsbruck",
          "Krakow", "Lyon", "Malmo", "Nantes", "Oslo", "Porto", "Riga", "Salzburg", "Turin", "Utrecht", "Vienna")
_MONTHS = ("January", "February", "April", "May", "June", "July", "August", "September", "October")


def report_paragraph(i: int) -> str:
    """Paragraph ``i`` of a made-up operations report (no numbers about crates shipped)."""
    site, topic, month = _SITES[i % len(_SITES)], _TOPICS[(i * 7) % len(_TOPICS)], _MONTHS[(i * 5) % len(_MONTHS)]
    return (f"Section {i + 1}. In {month} the {site} site reviewed its {topic}. The team noted that the work "
            f"went as planned, that {2 + i % 9} people took part, and that the next review of {topic} at "
            f"{site} is due in the autumn. No incidents were reported and the notes were filed with head office.")


NEEDLE = "Section {n}. In March the Lisbon warehouse shipped 1284 crates of olive oil, its record month."
NEEDLE_NUMBER = 1284


def report_document(tokenizer, target_tokens: int, needle_at: float = 0.6) -> str:
    """A made-up report of about ``target_tokens`` tokens (``tokenizer``'s) with NEEDLE at ``needle_at``."""
    per = len(tokenizer(report_paragraph(0), add_special_tokens=False)["input_ids"]) + 2
    count = max(2, target_tokens // per)
    at = int(count * needle_at)
    paragraphs = [report_paragraph(i) for i in range(count)]
    paragraphs.insert(at, NEEDLE.format(n=at + 1))
    return "\n\n".join(paragraphs)
