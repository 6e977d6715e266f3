"""Tool-call round trip: 20 single-tool prompts, four tools bound each time, greedy decoding.

For each prompt ``HomerLLM(model=...).bind_tools(tools).invoke(prompt)`` runs once and the first
tool call is compared with the expected one. What counts as right:

- right tool: the first valid tool call names the expected tool;
- right arguments: every expected argument is present and equal after normalisation (strings:
  case-folded, whitespace collapsed, surrounding spaces and final ``.`` dropped; numbers, and
  strings that read as numbers, compare as floats; ``calculator`` expressions compare with all
  spaces removed, against a short list of equivalent spellings), and no argument outside the
  tool's schema was written. Optional arguments the prompt does not mention may be present.

Usage (the model is a local transformers folder; nothing is fetched):

    python benchmarks/tool_call_roundtrip.py --model ~/.cache/homer-llm/models/Qwen2.5-Coder-1.5B-Instruct-bf16 \
        --label after --out benchmarks/results/tool-calls

It only uses ``HomerLLM``, ``bind_tools`` and ``invoke``, so it also runs against older code
(``PYTHONPATH=<checkout>:<checkout>/integrations``). Each row records the raw text the model
wrote and a digest of the prompt tokens. ``--start``/``--limit`` run a slice (the file is
rewritten after every prompt), ``--merge`` joins slices, and ``--reparse FILE`` scores the raw
outputs of FILE again with the parser on the import path, without running the model: with
``tool_choice=None`` the prompt does not depend on the parser, so under greedy decoding this is
what the other code's parser makes of the same generation.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from langchain_core.tools import tool


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather in a city. unit is "celsius" or "fahrenheit"."""
    return f"Sunny, 21 degrees {unit} in {city}."


@tool
def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a quantity from one unit to another (e.g. km to miles, kg to pounds)."""
    return f"{value} {from_unit} in {to_unit}"


@tool
def create_event(title: str, date: str, time: str = "") -> str:
    """Add an event to the user's calendar. date is written as the user said it."""
    return f"Created {title} on {date} {time}".strip()


@tool
def web_search(query: str) -> str:
    """Search the web and return the top results for a query."""
    return f"Results for {query}"


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as "12 * (3 + 4)"."""
    return expression


@tool
def get_stock_price(symbol: str) -> str:
    """Get the latest stock price for a ticker symbol such as AAPL."""
    return f"{symbol}: 100.0"


@tool
def translate(text: str, target_language: str) -> str:
    """Translate text into another language."""
    return text


@tool
def send_email(to: str, subject: str, body: str) -> str:
    """Send an email."""
    return "sent"


TOOLS = {t.name: t for t in (get_weather, convert_units, create_event, web_search, calculator, get_stock_price,
                             translate, send_email)}
ORDER = list(TOOLS)

# (prompt, expected tool, expected arguments); calculator expressions may list equivalent spellings
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("What's the weather in Paris?", "get_weather", {"city": "Paris"}),
    ("Is it raining in Tokyo right now?", "get_weather", {"city": "Tokyo"}),
    ("Tell me the temperature in Chicago in fahrenheit.", "get_weather", {"city": "Chicago", "unit": "fahrenheit"}),
    ("How many miles is 42 kilometers?", "convert_units", {"value": 42, "from_unit": "kilometers", "to_unit": "miles"}),
    ("Convert 5 kg to pounds.", "convert_units", {"value": 5, "from_unit": "kg", "to_unit": "pounds"}),
    ("What is 100 fahrenheit in celsius?", "convert_units", {"value": 100, "from_unit": "fahrenheit",
                                                              "to_unit": "celsius"}),
    ("Add a meeting called Budget review on March 3 to my calendar.", "create_event",
     {"title": "Budget review", "date": "March 3"}),
    ("Put 'Dentist' on my calendar for 2027-01-15 at 10:00.", "create_event",
     {"title": "Dentist", "date": "2027-01-15", "time": "10:00"}),
    ("Schedule Team lunch on Friday.", "create_event", {"title": "Team lunch", "date": "Friday"}),
    ("Search the web for the tallest building in Europe.", "web_search", {"query": "tallest building in Europe"}),
    ("Look up reviews of the Framework laptop online.", "web_search", {"query": "Framework laptop reviews"}),
    ("What is 17 * 23?", "calculator", {"expression": ["17*23", "17x23"]}),
    ("Calculate (45 + 55) / 4.", "calculator", {"expression": ["(45+55)/4"]}),
    ("What's 2 to the power of 10? Use the calculator.", "calculator", {"expression": ["2**10", "2^10", "pow(2,10)"]}),
    ("What is Apple's stock price? The ticker is AAPL.", "get_stock_price", {"symbol": "AAPL"}),
    ("How is MSFT trading today?", "get_stock_price", {"symbol": "MSFT"}),
    ("Translate 'good morning' into Spanish.", "translate", {"text": "good morning", "target_language": "Spanish"}),
    ("How do you say 'thank you' in Japanese? Use the translator.", "translate",
     {"text": "thank you", "target_language": "Japanese"}),
    ("Email bob@example.com with the subject Lunch and the body 'See you at noon'.", "send_email",
     {"to": "bob@example.com", "subject": "Lunch", "body": "See you at noon"}),
    ("Send an email to ann@example.org, subject Report, saying 'The report is attached'.", "send_email",
     {"to": "ann@example.org", "subject": "Report", "body": "The report is attached"}),
]


def bound_tools(index: int, expected: str) -> list[Any]:
    """The expected tool and the next three tools in a fixed rotation (four in all, order varied)."""
    start = ORDER.index(expected)
    names = [ORDER[(start + k) % len(ORDER)] for k in range(1, 4)]
    names.insert(index % 4, expected)
    return [TOOLS[n] for n in names]


def _norm_str(value: Any) -> str:
    text = re.sub(r"\s+", " ", str(value)).strip().casefold()
    return text.strip("'\"").rstrip(".").strip()


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def argument_ok(tool_name: str, key: str, expected: Any, got: Any) -> bool:
    """Whether one argument matches (the rules in the module docstring)."""
    if tool_name == "calculator" and key == "expression":
        return re.sub(r"\s+", "", str(got)) in expected
    if isinstance(expected, int | float):
        number = _as_number(got)
        return number is not None and abs(number - float(expected)) < 1e-6
    return _norm_str(got) == _norm_str(expected)


def score(tool_name: str, expected: dict[str, Any], call: dict[str, Any] | None) -> dict[str, Any]:
    if call is None:
        return {"right_tool": False, "right_args": False, "wrong": ["no tool call"]}
    if call["name"] != tool_name:
        return {"right_tool": False, "right_args": False, "wrong": [f"tool {call['name']}"]}
    args = call.get("args") or {}
    allowed = set(TOOLS[tool_name].args)
    wrong = [k for k, v in expected.items() if k not in args or not argument_ok(tool_name, k, v, args[k])]
    wrong += [f"extra {k}" for k in args if k not in allowed]
    return {"right_tool": True, "right_args": not wrong, "wrong": wrong}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "langchain-core", "langchain", "langgraph"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


class _Recorder:
    """Keeps each generation's raw text and a digest of the prompts (wraps the engine's methods)."""

    def __init__(self, engine: Any) -> None:
        self.texts: list[str] = []
        self.prompts: list[list[int]] = []
        stream, compress = engine.stream, engine.compress
        recorder = self

        class _Stream:
            def __init__(self, inner: Any) -> None:
                self.inner = inner
                recorder.texts.append("")

            def __iter__(self) -> Any:
                for delta in self.inner:
                    recorder.texts[-1] += delta
                    yield delta

            @property
            def result(self) -> Any:
                return self.inner.result

        def recording_compress(parts: Any, **kwargs: Any) -> Any:
            self.prompts.append(list(parts.ids))
            return compress(parts, **kwargs)

        engine.stream = lambda source, config=None, **kwargs: _Stream(stream(source, config, **kwargs))
        engine.compress = recording_compress

    def clear(self) -> None:
        self.texts.clear()
        self.prompts.clear()

    def digest(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.prompts).encode()).hexdigest()[:16]


def run(model: str, label: str, out_dir: Path, max_tokens: int, start_at: int, limit: int | None,
        chunk_len: int) -> dict[str, Any]:
    from langchain_homer import HomerLLM

    llm = HomerLLM(model=model, dtype="float32", max_tokens=max_tokens, chunk_len=chunk_len)
    start = time.perf_counter()
    engine = llm.get_engine()
    load_seconds = time.perf_counter() - start
    recorder = _Recorder(engine)
    rows = []
    stop_at = len(CASES) if limit is None else min(len(CASES), start_at + limit)
    for i in range(start_at, stop_at):
        prompt, name, expected = CASES[i]
        recorder.clear()
        tools = bound_tools(i, name)
        began = time.perf_counter()
        try:
            message = llm.bind_tools(tools).invoke(prompt)
            error = None
        except Exception as err:  # noqa: BLE001 - a failure is a result here
            message, error = None, f"{type(err).__name__}: {err}"
        seconds = time.perf_counter() - began
        calls = list(message.tool_calls) if message is not None else []
        result = score(name, expected, calls[0] if calls else None)
        rows.append({
            "index": i, "prompt": prompt, "prompt_digest": recorder.digest(),
            "raw_outputs": list(recorder.texts), "bound": [t.name for t in tools], "expected_tool": name, "expected_args": expected,
            "calls": [{"name": c["name"], "args": c["args"]} for c in calls],
            "invalid_calls": len(message.invalid_tool_calls) if message is not None else 0,
            "content": (message.content if message is not None else "")[:300], "error": error,
            "seconds": round(seconds, 2), **result,
        })
        mark = "ok" if result["right_args"] else ("tool" if result["right_tool"] else "--")
        print(f"{i:2d} {mark:4s} {seconds:5.1f}s  {prompt[:52]:52s} {json.dumps(rows[-1]['calls'])[:90]}",
              flush=True)
        summary = _summary(rows)
        summary.update({
            "label": label, "model": Path(model).name, "date": "2026-12-02",
            "machine": "2-core AMD EPYC, no AMX, CPU only (other agents' light jobs shared the CPU)",
            "versions": _versions(), "decoding": f"greedy, max_tokens={max_tokens}, float32",
            "chunk_len": chunk_len, "load_seconds": round(load_seconds, 1), "rows": rows,
        })
        _write(summary, out_dir, label, quiet=True)  # after every prompt: a cut-off run keeps its rows
    return _write(summary, out_dir, label)


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "prompts": len(rows),
        "any_call": sum(bool(r["calls"]) for r in rows),
        "right_tool": sum(r["right_tool"] for r in rows),
        "right_tool_and_args": sum(r["right_args"] for r in rows),
        "seconds_total": round(sum(r["seconds"] for r in rows), 1),
    }


def _write(summary: dict[str, Any], out_dir: Path, label: str, *, quiet: bool = False) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{label}.json"
    path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    if quiet:
        return summary
    print(f"\n{label}: {summary['prompts']} prompts, any call {summary['any_call']}, right tool "
          f"{summary['right_tool']}, right tool + arguments {summary['right_tool_and_args']}; "
          f"prompts {summary['seconds_total']} s -> {path}")
    return summary


def merge(paths: list[Path], label: str, out_dir: Path) -> dict[str, Any]:
    """One result file from the files of several slices of the prompts (rows in prompt order)."""
    parts = [json.loads(p.read_text()) for p in paths]
    rows = sorted((r for part in parts for r in part["rows"]), key=lambda r: r["index"])
    summary = {k: v for k, v in parts[0].items() if k not in ("rows", "label", "load_seconds")}
    summary.update(_summary(rows))
    summary.update({"label": label, "load_seconds": [p.get("load_seconds") for p in parts], "rows": rows})
    table = [f"{r['index']:2d} {'ok' if r['right_args'] else ('tool' if r['right_tool'] else '--'):4s} "
             f"{r['prompt'][:52]:52s} {json.dumps(r['calls'])[:80]}" for r in rows]
    print("\n".join(table))
    return _write(summary, out_dir, label)


def reparse(path: Path, label: str, out_dir: Path) -> dict[str, Any]:
    """Score the raw outputs recorded in ``path`` again with the parser on the import path (no model run).

    Only meaningful for calls made with ``tool_choice=None`` (one generation per prompt, as here).
    """
    from langchain_homer.tools import parse_tool_calls

    source = json.loads(path.read_text())
    rows = []
    for row in source["rows"]:
        text = row["raw_outputs"][-1] if row["raw_outputs"] else ""
        parsed = parse_tool_calls(text, row["bound"])
        calls = [{"name": c["name"], "args": c["args"]} for c in parsed.tool_calls]
        result = score(row["expected_tool"], row["expected_args"], calls[0] if calls else None)
        rows.append({**row, "calls": calls, "invalid_calls": len(parsed.invalid_tool_calls),
                     "content": parsed.content[:300], **result})
    summary = {k: v for k, v in source.items() if k != "rows"}
    summary.update(_summary(rows))
    summary.update({"label": label, "reparsed_from": path.name, "rows": rows})
    return _write(summary, out_dir, label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local transformers folder of a chat model")
    parser.add_argument("--merge", nargs="+", type=Path, help="merge these result files into LABEL.json (no model run)")
    parser.add_argument("--reparse", type=Path, help="score a result file's raw outputs with the parser on the "
                        "import path into LABEL.json (no model run)")
    parser.add_argument("--chunk-len", type=int, default=4096, help="HOMER chunk length (prompts here are shorter)")
    parser.add_argument("--label", default="run", help="name of the result file (LABEL.json)")
    parser.add_argument("--out", default="benchmarks/results/tool-calls", help="folder for the result file")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--start", type=int, default=0, help="index of the first prompt to run")
    parser.add_argument("--limit", type=int, default=None, help="run at most N prompts")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w.-]+", args.label):
        print(f"error: --label {args.label!r} must be letters, digits, '.', '_' or '-'", file=sys.stderr)
        return 2
    if args.reparse:
        if not args.reparse.is_file():
            print(f"error: --reparse file {str(args.reparse)!r} does not exist", file=sys.stderr)
            return 2
        reparse(args.reparse, args.label, Path(args.out))
        return 0
    if args.merge:
        missing = [str(p) for p in args.merge if not p.is_file()]
        if missing:
            print(f"error: --merge file {missing[0]!r} does not exist", file=sys.stderr)
            return 2
        merge(args.merge, args.label, Path(args.out))
        return 0
    if not args.model or not Path(args.model).expanduser().is_dir():
        print(f"error: --model {args.model!r} is not a folder", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit {args.limit} must be at least 1", file=sys.stderr)
        return 2
    if not 0 <= args.start < len(CASES):
        print(f"error: --start {args.start} must be in [0, {len(CASES)})", file=sys.stderr)
        return 2
    run(str(Path(args.model).expanduser()), args.label, Path(args.out), args.max_tokens, args.start, args.limit,
        args.chunk_len)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
