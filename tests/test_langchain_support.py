"""Fakes shared by the LangChain tests (this module holds no tests of its own).

``ScriptedEngine`` is a real ``HomerModel`` over a tiny random llama (so prompt rendering, the
document split and the HOMER plan are the real ones) whose *generated text* is scripted: each
call to ``stream`` plays the next scripted output, honouring stop strings and max_new_tokens the
way the engine does. With ``real_compress=True`` the compression runs for real too.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from types import SimpleNamespace

from tiny import tiny_engine, tiny_model, tiny_tokenizer

from homer_llm import Generation, GenerationConfig, HomerConfig, HomerModel

HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>\n"
    "Call a tool with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if not (tools and loop.first and m['role'] == 'system') %}"
    "<|im_start|>{{ m['role'] }}\n{% if m['content'] %}{{ m['content'] }}{% endif %}"
    "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}<tool_call>\n"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}\n</tool_call>"
    "{% endfor %}{% endif %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.cache
def shared_tiny_engine() -> HomerModel:
    """One tiny llama engine (window 256, chunk 128) for the whole session (uncalibrated: fast)."""
    return tiny_engine(layers=4)


class ScriptedStream:
    """Like ``homer_llm.TextStream``: deltas of a fixed text; ``result`` once exhausted."""

    def __init__(self, text: str, config: GenerationConfig, tokenizer) -> None:
        self._text, self._config, self._tok = text, config, tokenizer
        self.result: Generation | None = None
        self._iter = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._iter

    def _run(self) -> Iterator[str]:
        text, reason = self._text, "stop"
        cuts = [i for i in (text.find(s) for s in self._config.stop) if i >= 0]
        if cuts:
            text = text[: min(cuts)]
        ids = self._tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self._config.max_new_tokens:
            ids = ids[: self._config.max_new_tokens]
            text, reason = self._tok.decode(ids), "length"
        for i in range(0, len(text), 3):
            yield text[i:i + 3]
        self.result = Generation(text, tuple(ids) + ((4,) if reason == "stop" else ()), reason, 0.0)


class ScriptedEngine(HomerModel):
    """A tiny engine whose outputs are ``outputs`` in order (the last one repeats)."""

    def __init__(self, outputs: Sequence[str], *, tokenizer=None, real_compress: bool = False,
                 window: int = 4096, layers: int = 6, name: str = "scripted") -> None:
        tok = tokenizer or tiny_tokenizer()
        super().__init__(tiny_model("llama", vocab=len(tok), layers=layers, window=window), tok, name=name,
                         homer=HomerConfig(pruning="uncalibrated"))
        self.outputs = list(outputs)
        self.real_compress = real_compress
        self.prompts: list = []
        self.configs: list[GenerationConfig] = []
        self.calls = 0

    def prompt_text(self, index: int = -1) -> str:
        return self.tokenizer.decode(list(self.prompts[index].ids))

    def compress(self, parts, *, progress=None):
        self.prompts.append(parts)
        if self.real_compress:
            return super().compress(parts, progress=progress)
        plan = self.plan(parts)
        if progress is not None:
            progress(1, 1)
        return SimpleNamespace(cache_tokens=min(len(parts), self.chunk_len),
                               stats=SimpleNamespace(tree_height=plan.height), created=time.time())

    def stream(self, source, config=None, *, progress=None):
        config = config or GenerationConfig()
        self.configs.append(config)
        text = self.outputs[min(self.calls, len(self.outputs) - 1)]
        self.calls += 1
        return ScriptedStream(text, config, self.tokenizer)


def hermes_tokenizer():
    """The tiny tokenizer with a tool-aware (Hermes/Qwen-style) chat template."""
    tok = tiny_tokenizer()
    tok.chat_template = HERMES_TEMPLATE
    return tok
