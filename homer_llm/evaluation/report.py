"""Turn records into cells (method x length per task), a markdown table, JSON and a PNG plot."""

from __future__ import annotations

import json
import platform
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .harness import OK, Record
from .stats import mcnemar_exact, perplexity_interval, wilson_interval


@dataclass(frozen=True)
class Cell:
    """Aggregate of one (task, method, length).

    Attributes:
        n: samples that ran to completion (status ok).
        value: accuracy in [0, 1] (QA) or perplexity (ppl); None when n == 0.
        low, high: 95% interval (Wilson for accuracy; normal band on mean NLL for perplexity).
        correct: right answers (QA only).
        statuses: counts of every status seen, e.g. {"ok": 20} or {"ok": 1, "timeout": 1, "skipped": 18}.
        seconds: mean seconds per completed sample.
        note: the first failure reason, if any.
    """

    task: str
    method: str
    length: int
    n: int
    value: float | None
    low: float | None
    high: float | None
    correct: int | None
    statuses: dict[str, int]
    seconds: float | None
    used_tokens: float | None
    note: str | None


def _latest(records: Iterable[Record]) -> list[Record]:
    """One record per sample: a sample recorded twice (a resumed run retried what an earlier one
    skipped or ran out of budget on) counts once, by its latest record."""
    return list({r.key: r for r in records}.values())


def cells(records: Iterable[Record]) -> list[Cell]:
    """One cell per (task, method, length), each sample counted once by its latest record."""
    groups: dict[tuple[str, str, int], list[Record]] = defaultdict(list)
    for r in _latest(records):
        groups[(r.task, r.method, r.length)].append(r)
    out = []
    for (task, method, length), group in groups.items():
        ok = [r for r in group if r.status == OK]
        statuses = dict(Counter(r.status for r in group))
        note = next((r.error for r in group if r.status != OK and r.error), None)
        seconds = sum(r.seconds or 0.0 for r in ok) / len(ok) if ok else None
        used = sum(r.used_tokens or 0 for r in ok) / len(ok) if ok else None
        value = low = high = None
        correct = None
        if ok and task == "ppl":
            value, low, high = perplexity_interval([r.nll for r in ok if r.nll is not None])
        elif ok:
            correct = sum(bool(r.correct) for r in ok)
            value = correct / len(ok)
            low, high = wilson_interval(correct, len(ok))
        out.append(Cell(task, method, length, len(ok), value, low, high, correct, statuses, seconds, used, note))
    return out


@dataclass(frozen=True)
class Pair:
    """A reference method (HOMER) against another on the same question-answering samples.

    Only samples that both methods completed (status ok) count. ``both`` / ``neither``: right for
    both / for none; ``only_reference`` / ``only_method``: right for one of them. ``p``: exact
    two-sided McNemar p-value of the discordant split (small: the difference is unlikely to be luck).
    """

    task: str
    reference: str
    method: str
    length: int
    n: int
    both: int
    only_reference: int
    only_method: int
    neither: int
    p: float


def paired(records: Iterable[Record], reference: str = "homer") -> list[Pair]:
    """``reference`` against every other method, per (task, length), on the samples both answered;
    the latest record of a sample counts (as in ``cells``). Perplexity is not paired."""
    answers: dict[tuple[str, str, int], dict[int, bool]] = defaultdict(dict)
    for r in _latest(records):
        if r.status == OK and r.task != "ppl":
            answers[(r.task, r.method, r.length)][r.index] = bool(r.correct)
    out = []
    for (task, method, length), mine in sorted(answers.items()):
        theirs = answers.get((task, reference, length), {})
        shared = sorted(set(mine) & set(theirs))
        if method == reference or not shared:
            continue
        ref = [theirs[i] for i in shared]
        other = [mine[i] for i in shared]
        both = sum(a and b for a, b in zip(ref, other, strict=True))
        only_ref = sum(a and not b for a, b in zip(ref, other, strict=True))
        only_other = sum(b and not a for a, b in zip(ref, other, strict=True))
        out.append(Pair(task, reference, method, length, len(shared), both, only_ref, only_other,
                        len(shared) - both - only_ref - only_other, mcnemar_exact(only_ref, only_other)))
    return out


def paired_table(pairs: list[Pair], methods: list[str]) -> str:
    """Markdown: one row per (task, method, length) with the four counts and McNemar's p."""
    if not pairs:
        return ""
    order = {m: i for i, m in enumerate(methods)}
    pairs = sorted(pairs, key=lambda q: (q.task, order.get(q.method, len(order)), q.length))
    ref = pairs[0].reference
    head = (f"### paired: {ref} against each method on the same samples\n\n"
            f"| task | method | length | n | both right | only {ref} | only method | both wrong | McNemar p |\n"
            "|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {q.task} | {q.method} | {_length_label(q.length)} | {q.n} | {q.both} | {q.only_reference} | "
            f"{q.only_method} | {q.neither} | {q.p:.3g} |" for q in pairs]
    return "\n".join([head, *rows]) + "\n"


def _length_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "—"
    if cell.n == 0:
        failed = [s for s in cell.statuses if s != OK]
        return "/".join(sorted(failed)) or "—"
    extra = [f"{s} {c}" for s, c in sorted(cell.statuses.items()) if s != OK]
    tail = f" ({', '.join(extra)})" if extra else ""
    if cell.task == "ppl":
        return f"{cell.value:.2f} [{cell.low:.2f}–{cell.high:.2f}] n={cell.n}{tail}"
    return f"{100 * cell.value:.0f}% ({cell.correct}/{cell.n}) [{100 * cell.low:.0f}–{100 * cell.high:.0f}]{tail}"


def markdown_table(all_cells: list[Cell], methods: list[str], lengths: list[int], tasks: list[str]) -> str:
    """One table per task: rows are methods, columns lengths; accuracy % (right/n) [Wilson 95%]
    or perplexity [95% band] n=samples; failures (timeout, oom, skipped, n/a) are named."""
    index = {(c.task, c.method, c.length): c for c in all_cells}
    blocks = []
    for task in tasks:
        unit = "perplexity (lower is better)" if task == "ppl" else "accuracy"
        head = f"### {task}: {unit}\n\n| method | " + " | ".join(_length_label(n) for n in lengths) + " |"
        rule = "|---|" + "---|" * len(lengths)
        rows = [f"| {m} | " + " | ".join(_cell_text(index.get((task, m, n))) for n in lengths) + " |" for m in methods]
        blocks.append("\n".join([head, rule, *rows]))
    return "\n\n".join(blocks) + "\n"


def _version(distribution: str) -> str:
    """An installed distribution's version without importing it ("?" if it is not installed)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def environment(
    model_name: str, device: str, dtype: str, window: int, chunk_len: int, threads: int | None = None
) -> dict:
    """Date, device and versions for the report (``threads``: torch CPU threads of the run)."""
    import torch
    import transformers

    import homer_llm

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        hardware = torch.cuda.get_device_name(torch.device(device))
    else:
        hardware = f"{cpu}, {threads or torch.get_num_threads()} torch threads"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model": model_name,
        "window": window,
        "chunk_len": chunk_len,
        "device": device,
        "hardware": hardware,
        "dtype": dtype,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bm25s": _version("bm25s"),  # not imported for this: bm25s starts JAX at import (methods.import_bm25s)
        "homer_llm": homer_llm.__version__,
    }


def to_json(meta: dict, records: list[Record], all_cells: list[Cell], pairs: list[Pair] | None = None) -> str:
    return json.dumps({"meta": meta, "cells": [asdict(c) for c in all_cells],
                       "paired": [asdict(q) for q in pairs or []], "records": [asdict(r) for r in records]},
                      indent=1)


def plot(all_cells: list[Cell], methods: list[str], tasks: list[str], path: Path, title: str = "") -> Path:
    """Accuracy (with Wilson 95% bars) against length per QA task, and perplexity for ppl; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in tasks if any(c.task == t for c in all_cells)] or tasks
    cols = min(3, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for method in methods:
            pts = sorted((c for c in all_cells if c.task == task and c.method == method and c.n > 0),
                         key=lambda c: c.length)
            if not pts:
                continue
            xs = [c.length for c in pts]
            scale = 1.0 if task == "ppl" else 100.0
            ys = [scale * c.value for c in pts]
            err = [[scale * max(0.0, c.value - c.low) for c in pts], [scale * max(0.0, c.high - c.value) for c in pts]]
            style = "-o" if method.startswith("homer") else "--s"
            # one colour per method across every panel, so the single legend is right everywhere
            color = f"C{methods.index(method) % 10}"
            ax.errorbar(xs, ys, yerr=err, fmt=style, color=color, capsize=3, label=method, markersize=4,
                        linewidth=1.3)
        ax.set_xscale("log", base=2)
        lengths = sorted({c.length for c in all_cells if c.task == task})
        ax.set_xticks(lengths, [_length_label(n) for n in lengths])
        ax.set_xlabel("tokens")
        if task == "ppl":
            ax.set_yscale("log")
            ax.set_ylabel("perplexity")
        else:
            ax.set_ylim(-3, 103)
            ax.set_ylabel("accuracy %")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    by_label: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            by_label.setdefault(label, handle)
    labels = [m for m in methods if m in by_label]
    handles = [by_label[m] for m in labels]
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95 if title else 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
