"""Checking saved benchmark reports against performance targets: each one met, missed or unmeasured.

The targets (defaults: an H200, bf16, sdpa) are read off the rows ``homer-llm bench`` writes:

- ``main`` shape (Llama-3-8B): the default row at the long length within ``long_seconds`` and at
  least ``floor_fraction`` of its own FLOP floor; the default row at the mid length at most
  ``mid_ratio`` of plain's time; the default row at most ``ownleaf_ratio`` of the causal-merge
  row's time at the mid and the long length; decode on every default-row cache at most
  ``decode_ms`` and never slower than plain decode at the model's native window.
- every shape: the default row's peak memory above the weights growing by at most
  ``growth_bytes`` per doubling from the shortest to the long length.

Usage: ``python -m homer_llm.bench.targets main.json [other.json ...] [--long 1M --mid 64k]``
prints one line per target and writes ``--json`` if asked. Exit code 0 unless a file is unreadable.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .report import format_length, growth, load_json, parse_length
from .runner import BenchReport, BenchResult

GIB = 2**30


@dataclass(frozen=True)
class TargetSpec:
    """Thresholds and the lengths they are read at."""

    long_length: int = 2**20
    mid_length: int = 64 * 1024
    long_seconds: float = 13.0
    floor_fraction: float = 0.75
    mid_ratio: float = 0.33
    ownleaf_ratio: float = 1.05
    growth_bytes: int = GIB
    decode_ms: float = 10.0


@dataclass(frozen=True)
class Verdict:
    """One target: what was asked, what was measured, and ``status`` met / missed / unmeasured."""

    name: str
    shape: str
    wanted: str
    measured: str
    status: str


def _row(report: BenchReport, method: str, length: int) -> BenchResult | None:
    for r in report.results:
        if r.method == method and r.length == length and r.status == "ok":
            return r
    return None


def _why_missing(report: BenchReport, method: str, length: int) -> str:
    for r in report.results:
        if r.method == method and r.length == length:
            return f"{method} at {format_length(length)}: {r.status}" + (f" ({r.note})" if r.note else "")
    return f"{method} at {format_length(length)}: no row"


def _verdict(name: str, shape: str, wanted: str, value: float | None, ok: bool | None, text: str) -> Verdict:
    status = "unmeasured" if value is None or ok is None else ("met" if ok else "missed")
    return Verdict(name, shape, wanted, text, status)


def check_main(report: BenchReport, spec: TargetSpec) -> list[Verdict]:
    """The time, floor, ratio and decode targets on the main shape's report."""
    shape = report.meta["config"]["name"]
    long_s, mid_s = format_length(spec.long_length), format_length(spec.mid_length)
    out = []
    h_long = _row(report, "homer", spec.long_length)
    out.append(_verdict(
        f"default at {long_s}: seconds", shape, f"<= {spec.long_seconds:g} s",
        None if h_long is None else h_long.seconds,
        None if h_long is None or h_long.seconds is None else h_long.seconds <= spec.long_seconds,
        _why_missing(report, "homer", spec.long_length) if h_long is None else f"{h_long.seconds:.3f} s",
    ))
    out.append(_verdict(
        f"default at {long_s}: share of its own FLOP floor", shape, f">= {spec.floor_fraction:.0%}",
        None if h_long is None else h_long.floor_fraction,
        None if h_long is None or h_long.floor_fraction is None else h_long.floor_fraction >= spec.floor_fraction,
        _why_missing(report, "homer", spec.long_length) if h_long is None or h_long.floor_fraction is None
        else f"{h_long.floor_fraction:.1%} (floor {h_long.own_floor_seconds:.3f} s)",
    ))
    h_mid, p_mid = _row(report, "homer", spec.mid_length), _row(report, "plain", spec.mid_length)
    ratio = None if h_mid is None or p_mid is None else (h_mid.seconds or 0) / (p_mid.seconds or float("nan"))
    out.append(_verdict(
        f"default/plain time at {mid_s}", shape, f"<= {spec.mid_ratio:g}x", ratio,
        None if ratio is None else ratio <= spec.mid_ratio,
        (_why_missing(report, "homer" if h_mid is None else "plain", spec.mid_length) if ratio is None
         else f"{ratio:.3f}x ({h_mid.seconds:.3f} s / {p_mid.seconds:.3f} s)"),
    ))
    for length in (spec.mid_length, spec.long_length):
        own, causal = _row(report, "homer", length), _row(report, "homer-causal", length)
        r = None if own is None or causal is None else (own.seconds or 0) / (causal.seconds or float("nan"))
        out.append(_verdict(
            f"own-leaf/causal merges time at {format_length(length)}", shape, f"<= {spec.ownleaf_ratio:g}x", r,
            None if r is None else r <= spec.ownleaf_ratio,
            (_why_missing(report, "homer" if own is None else "homer-causal", length) if r is None
             else f"{r:.3f}x ({own.seconds:.3f} s / {causal.seconds:.3f} s)"),
        ))
    decodes = [r for r in report.results if r.method == "homer" and r.status == "ok" and r.decode_ms is not None]
    worst = max(decodes, key=lambda r: r.decode_ms or 0.0) if decodes else None
    out.append(_verdict(
        "decode on the default cache (slowest length)", shape, f"<= {spec.decode_ms:g} ms/token",
        None if worst is None else worst.decode_ms,
        None if worst is None else (worst.decode_ms or 0.0) <= spec.decode_ms,
        "no decoded default row" if worst is None else f"{worst.decode_ms:.2f} ms/token at {format_length(worst.length)}",
    ))
    window = int(report.meta["config"]["window"])
    plain_native = _row(report, "plain", window)
    ok = None
    if worst is not None and plain_native is not None and plain_native.decode_ms is not None:
        ok = (worst.decode_ms or 0.0) <= plain_native.decode_ms
    out.append(_verdict(
        f"decode on the default cache vs plain at its {format_length(window)} window", shape, "never slower",
        None if ok is None else 1.0, ok,
        (_why_missing(report, "plain", window) if plain_native is None or worst is None
         else f"slowest {worst.decode_ms:.2f} vs plain {plain_native.decode_ms:.2f} ms/token"),
    ))
    return out


def check_growth(report: BenchReport, spec: TargetSpec) -> Verdict:
    """Peak memory above the weights of the default row: the largest step per doubling up to the long length."""
    shape = report.meta["config"]["name"]
    unit = "GiB" if report.meta.get("device_type") == "cuda" else "GiB (process RSS)"
    steps = [s for s in growth(report.results, "homer", "peak_over_weights_bytes") if s[1] <= spec.long_length]
    lengths = sorted(r.length for r in report.results if r.method == "homer" and r.status == "ok")
    wanted = f"<= +{spec.growth_bytes / GIB:g} GiB per doubling up to {format_length(spec.long_length)}"
    if not steps or not lengths or lengths[-1] < spec.long_length:
        return Verdict("peak over weights growth (default)", shape, wanted,
                       _why_missing(report, "homer", spec.long_length) if not lengths or lengths[-1] < spec.long_length
                       else "fewer than two doubling rows", "unmeasured")
    worst = max(steps, key=lambda s: s[2])
    text = f"largest +{worst[2] / GIB:.3f} {unit} ({format_length(worst[0])} -> {format_length(worst[1])})"
    return Verdict("peak over weights growth (default)", shape, wanted, text,
                   "met" if worst[2] <= spec.growth_bytes else "missed")


def check(main: BenchReport | None, others: list[BenchReport], spec: TargetSpec) -> list[Verdict]:
    """Every target: the main report's, then the growth target of each report."""
    verdicts = check_main(main, spec) if main is not None else []
    verdicts += [check_growth(r, spec) for r in ([main] if main is not None else []) + others]
    return verdicts


def format_verdicts(verdicts: list[Verdict]) -> str:
    lines = []
    for v in verdicts:
        lines.append(f"[{v.status.upper():>10}] {v.shape}: {v.name}: {v.measured} (target {v.wanted})")
    counts = {s: sum(v.status == s for v in verdicts) for s in ("met", "missed", "unmeasured")}
    lines.append(f"targets: {counts['met']} met, {counts['missed']} missed, {counts['unmeasured']} unmeasured")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m homer_llm.bench.targets", description=__doc__.splitlines()[0])
    parser.add_argument("main", help="JSON of the main shape (plain, homer, homer-causal rows)")
    parser.add_argument("others", nargs="*", help="JSONs of further shapes (growth target only)")
    parser.add_argument("--long", default="1M", help="long length (default 1M)")
    parser.add_argument("--mid", default="64k", help="mid length (default 64k)")
    parser.add_argument("--json", dest="json_path", default=None, help="write the verdicts as JSON")
    args = parser.parse_args(argv)
    try:
        spec = TargetSpec(long_length=parse_length(args.long), mid_length=parse_length(args.mid))
        main_report = load_json(args.main) if Path(args.main).exists() else None
        others = [load_json(p) for p in args.others if Path(p).exists()]
    except (ValueError, OSError, KeyError, TypeError) as err:
        print(f"homer-llm targets: {err}", file=sys.stderr)
        return 2
    verdicts = check(main_report, others, spec)
    missing = [p for p in [args.main, *args.others] if not Path(p).exists()]
    for path in missing:
        print(f"[UNMEASURED] no report at {path}")
    print(format_verdicts(verdicts))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"spec": asdict(spec), "missing_reports": missing,
                                                    "verdicts": [asdict(v) for v in verdicts]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
