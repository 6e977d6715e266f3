"""Presenting a BenchReport: a text table, JSON, a plot against length, and a growth summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .runner import BenchReport, BenchResult


def format_length(n: int) -> str:
    """4096 -> '4k', 1048576 -> '1M'; other values as plain ints."""
    if n >= 2**20 and n % 2**20 == 0:
        return f"{n // 2**20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


def parse_length(text: str) -> int:
    """'4k' -> 4096, '1M' -> 1048576, '3000' -> 3000 (k and M are binary, as in '64k context')."""
    value = text.strip().lower()
    scale = 1
    if value.endswith("k"):
        scale, value = 1024, value[:-1]
    elif value.endswith("m"):
        scale, value = 2**20, value[:-1]
    try:
        n = int(float(value) * scale)
    except ValueError:
        raise ValueError(f"cannot read length {text!r}: use tokens like 4096, 4k or 1M") from None
    if n < 2:
        raise ValueError(f"length must be at least 2 tokens, got {text!r}")
    return n


def doubling_lengths(start: int, stop: int) -> tuple[int, ...]:
    if start < 2 or stop < start:
        raise ValueError(f"need 2 <= min length <= max length, got {start} and {stop}")
    out, n = [], start
    while n <= stop:
        out.append(n)
        n *= 2
    return tuple(out)


def _unit(report: BenchReport) -> tuple[str, float]:
    return ("GiB", 2.0**30) if report.meta.get("device_type") == "cuda" else ("MiB", 2.0**20)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(report: BenchReport) -> str:
    """A fixed-width table, one row per (method, length)."""
    unit, scale = _unit(report)
    mem_label = "peak" if report.meta.get("device_type") == "cuda" else "peak RSS"
    over_label = "over weights" if report.meta.get("device_type") == "cuda" else "over idle"
    header = (
        "method", "length", "status", "prefill s", "tok/s", f"{mem_label} {unit}", f"{over_label} {unit}",
        f"KV peak {unit}", "cache tok", "decode ms/tok", "x floor", "own floor %", "work", "H",
    )
    rows: list[tuple[str, ...]] = []
    for r in report.results:
        if r.status != "ok":
            label = {"oom": "OOM", "skipped": "OOM (skip)", "not_run": "not run", "error": "error"}.get(r.status, r.status)
            rows.append((r.method, format_length(r.length), label) + ("-",) * (len(header) - 3))
            continue
        rows.append((
            r.method, format_length(r.length), "ok", _num(r.seconds, ".3f"), _num(r.tokens_per_s, ",.0f"),
            _num(r.peak_bytes / scale if r.peak_bytes is not None else None, ".2f"),
            _num(r.peak_over_weights_bytes / scale if r.peak_over_weights_bytes is not None else None, ".2f"),
            _num(r.kv_peak_bytes / scale if r.kv_peak_bytes is not None else None, ".3f"),
            _num(r.cache_tokens, "d"), _num(r.decode_ms, ".2f"), _num(r.x_floor, ".2f"),
            _num(r.floor_fraction * 100 if r.floor_fraction is not None else None, ".0f"),
            _num(r.work_fraction, ".2f"), _num(r.tree_height, "d"),
        ))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def _rate(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def format_header(report: BenchReport) -> str:
    m = report.meta
    v = m["versions"]
    h = m["homer"]
    return (
        f"# homer-llm bench: {m['config']['name']} ({m['config']['description']}), {m['dtype']}, {m['attn']}\n"
        f"# {m['date']} on {m['device']}; torch {v['torch']}, transformers {v['transformers']}, homer-llm {v['homer_llm']}\n"
        f"# {_count(m['parameters'])} parameters ({m['weights_bytes'] / 2**20:,.1f} MiB), "
        f"K/V {m['kv_bytes_per_token'] / 1024:g} KiB/token, matmul probe {_rate(m['matmul_flops'])}\n"
        f"# HOMER: P={h['prefix_len']} S={h['suffix_len']} M={h['chunk_len']} T={h['cache_len']} bias={h['bias']} "
        f"homer merges={h.get('merge_attention', 'causal')} focus k={h.get('focus_leaves', '-')}; "
        f"plain logits={m['plain_logits']}; memory={m['memory_kind']}; median of <= {m['repeats']} runs"
    )


def growth(results: tuple[BenchResult, ...] | list[BenchResult], method: str, key: str) -> list[tuple[int, int, int]]:
    """(length, next length, increase in bytes of ``key``) for consecutive doublings of ``method``."""
    ok = sorted((r for r in results if r.method == method and r.status == "ok" and getattr(r, key) is not None),
                key=lambda r: r.length)
    out = []
    for a, b in zip(ok, ok[1:], strict=False):
        if b.length == 2 * a.length:
            out.append((a.length, b.length, int(getattr(b, key)) - int(getattr(a, key))))
    return out


def format_growth(report: BenchReport) -> str:
    """Per-doubling growth of peak memory and of the engine's K/V peak, per method."""
    unit, scale = _unit(report)
    lines = []
    for method in dict.fromkeys(r.method for r in report.results):
        over = "peak over weights" if unit == "GiB" else "peak over idle RSS"
        for key, label in (("peak_over_weights_bytes", over), ("kv_peak_bytes", "K/V peak")):
            steps = growth(report.results, method, key)
            if not steps:
                continue
            parts = ", ".join(f"{format_length(b)}: {d / scale:+.3f}" for _, b, d in steps)
            lines.append(f"{method} {label} per doubling ({unit}): {parts}")
    return "\n".join(lines)


def write_json(report: BenchReport, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return path


def load_json(path: str | Path) -> BenchReport:
    """A report written by ``write_json`` (complete or partial)."""
    data = json.loads(Path(path).read_text())
    rows = []
    for r in data["results"]:
        r = dict(r)
        r["runs"] = tuple(r.get("runs") or ())
        rows.append(BenchResult(**r))
    return BenchReport(data["meta"], tuple(rows), complete=bool(data.get("complete", True)))


def write_plot(report: BenchReport, path: str | Path) -> Path:
    """Three panels against length (log2 axis): memory over weights, prefill seconds, decode ms/token.

    OOM rows are drawn as an 'x' on the axis floor, labelled, so a missing point is visibly a failure.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    unit, scale = _unit(report)
    panels = (
        ("peak_over_weights_bytes", f"peak memory over {'weights' if unit == 'GiB' else 'idle RSS'} ({unit})", scale),
        ("seconds", "prefill / compression (s)", 1.0),
        ("decode_ms", "decode (ms/token)", 1.0),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    methods = list(dict.fromkeys(r.method for r in report.results))
    for ax, (key, label, div) in zip(axes, panels, strict=True):
        for method in methods:
            rows = [r for r in report.results if r.method == method]
            ok = [r for r in rows if r.status == "ok" and getattr(r, key) is not None]
            line = ax.plot([r.length for r in ok], [getattr(r, key) / div for r in ok], marker="o", label=method)
            failed = [r for r in rows if r.status in ("oom", "skipped")]
            if failed:
                ax.plot([r.length for r in failed], [0.0] * len(failed), "x", color=line[0].get_color(),
                        markersize=10, label=f"{method} OOM")
            if key == "peak_over_weights_bytes":
                kv = [r for r in ok if r.kv_peak_bytes is not None]
                ax.plot([r.length for r in kv], [r.kv_peak_bytes / div for r in kv], linestyle="--",
                        color=line[0].get_color(), alpha=0.6, label=f"{method} K/V peak (analytic)")
        ax.set_xscale("log", base=2)
        lengths = sorted({r.length for r in report.results})
        ax.set_xticks(lengths, [format_length(n) for n in lengths])
        ax.set_xlabel("input tokens")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    m = report.meta
    fig.suptitle(f"{m['config']['name']} {m['dtype']} on {m['device']} ({m['date']}, torch {m['versions']['torch']})",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_ratio(report: BenchReport, length: int) -> str | None:
    """'<method>/plain at N: memory x, time x' for every HOMER row that ran at ``length`` beside plain,
    and the default row's time over the causal-merge row's."""
    rows = {r.method: r for r in report.results if r.length == length and r.status == "ok"}
    what = "over weights" if report.meta.get("device_type") == "cuda" else "over idle RSS"
    lines = []
    if "plain" in rows:
        p = rows["plain"]
        for method, h in rows.items():
            if method == "plain":
                continue
            mem = (h.peak_over_weights_bytes or 0) / max(p.peak_over_weights_bytes or 1, 1)
            time_ratio = (h.seconds or math.nan) / (p.seconds or math.nan)
            lines.append(f"{method}/plain at {format_length(length)}: peak memory {what} x{mem:.2f}, "
                         f"time x{time_ratio:.2f}")
    if "homer" in rows and "homer-causal" in rows:
        ratio = (rows["homer"].seconds or math.nan) / (rows["homer-causal"].seconds or math.nan)
        lines.append(f"homer/homer-causal at {format_length(length)}: time x{ratio:.2f}")
    return "\n".join(lines) or None
