"""Command line of the document agent.

    homer-agent --document PATH --question Q [--question Q ...]
    python -m homer_agent --document PATH --question Q

Opens each ``--document`` and asks each ``--question`` in turn, on one conversation
(``--thread``). ``--agent auto`` (default) lets the model choose the tools when its chat template
renders them, else the scripted router drives them. ``--checkpoint FILE`` keeps conversations in a
SQLite file: run again with the same ``--checkpoint`` and ``--thread`` and only ``--question`` to
continue one (its documents are re-opened from their paths; their compressed states come back
from the document cache's disk folder, ``--cache-dir``, by default ``FILE.kv``).

Prints each answer, then as the last stdout line one JSON object: the document cache's counters
(hits, misses, disk_hits, ...), the mode, and per turn the seconds, tools called and cache tokens.
Progress goes to stderr. Exit status: 0 when every turn answered; 1 when a turn failed (the model
did not load, a document was refused, the last tool call of a turn failed); 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .access import DEFAULT_MAX_BYTES, DocumentAccess
from .modes import MODES

if TYPE_CHECKING:
    from .graph import Turn

logger = logging.getLogger(__name__)
PROG = "homer-agent"


class TurnFailed(Exception):
    """A turn (or the setup before the first one) failed; the message is the one-line report."""


def _int_at_least(minimum: int, kind: str):
    """An argparse type: an integer >= ``minimum``, else a one-line error naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_nonnegative_int = _int_at_least(0, "non-negative")


def _folder(text: str) -> str:
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"not an existing folder: {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--document", action="append", default=[], metavar="PATH", help="text file to open (repeatable)")
    p.add_argument("--question", action="append", default=[], metavar="Q", help="question, asked in turn (repeatable)")
    p.add_argument("--agent", choices=MODES, default="auto",
                   help="who chooses the tools: the model (when its template renders tools: auto), "
                        "the model always (model), or the scripted router (router)")
    p.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16", "auto"))
    p.add_argument("--max-tokens", type=_positive_int, default=128, help="most new tokens per model call")
    p.add_argument("--chunk-len", type=_positive_int, default=None,
                   help="HOMER chunk length in tokens (default: from the model's window)")
    p.add_argument("--focus-leaves", type=_nonnegative_int, default=None, metavar="N",
                   help="leaves of the document read in full next to its compressed cache, the best "
                        "first, a second or later one only within half the window (default: the chat model's, 3; 0: the "
                        "compressed cache alone)")
    p.add_argument("--focus-locator", choices=("leaf", "tree", "lexical"), default=None,
                   help="how those leaves are ranked (default: the chat model's, leaf; lexical: BM25 of the "
                        "question's tokens, no model pass, a later leaf only at half the best score)")
    p.add_argument("--reuse", choices=("agnostic", "leaf", "exact"), default="agnostic",
                   help="how the document cache reuses work across questions (homer_llm.reuse)")
    p.add_argument("--cache-bytes", type=_positive_int, default=2 * 1024**3, help="memory budget of the document cache")
    p.add_argument("--cache-dir", default=None,
                   help="disk folder of the document cache (default with --checkpoint: FILE.kv; else none)")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="keep conversations in this SQLite file (default: in memory, lost at exit)")
    p.add_argument("--thread", default="cli", help="conversation id")
    p.add_argument("--allow-root", action="append", default=[], type=_folder, metavar="DIR",
                   help="folder documents may be read from (repeatable; default: the current folder "
                        "and the system temp folder)")
    p.add_argument("--max-document-bytes", type=_positive_int, default=DEFAULT_MAX_BYTES,
                   help=f"largest document read (default {DEFAULT_MAX_BYTES})")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (1 is fastest on a busy shared CPU; default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--verbose", action="store_true", help="log at INFO level and show tracebacks")
    return p


class _Progress:
    """Writes the agent's events to stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        kind = event.get("event")
        if kind == "tool_call":
            args = ", ".join(f"{k}={v!r}" for k, v in (event.get("args") or {}).items())
            print(f"  -> {event['tool']}({args})", file=sys.stderr, flush=True)
        elif kind == "progress":
            end = "\n" if event["done"] >= event["total"] else ""
            print(f"\r  compressing {event['document_id']}: {event['done']}/{event['total']} layer passes",
                  end=end, file=sys.stderr, flush=True)
        elif kind == "tool_error":
            print(f"  !! {event['tool']}: {event['error']}", file=sys.stderr, flush=True)


def _load_llm(args: argparse.Namespace, cache: Any) -> Any:
    from langchain_homer import HomerLLM

    read = {} if args.focus_leaves is None else {"focus_leaves": args.focus_leaves}
    if args.focus_locator is not None:
        read["focus_locator"] = args.focus_locator
    try:
        llm = HomerLLM(model=args.model, device=args.device, dtype=args.dtype, max_tokens=args.max_tokens,
                       temperature=0.0, chunk_len=args.chunk_len, document_cache=cache, **read)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise TurnFailed(f"invalid model settings: {_first_line(err)}") from None
    try:
        llm.get_engine()
    except Exception as err:  # any load failure is reported in one line, not as an answer
        raise TurnFailed(f"cannot load model {args.model or 'default'!r}: {_first_line(err)}") from None
    return llm


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _turn_record(kind: str, text: str, turn: Turn) -> dict[str, Any]:
    details = turn.usage.get("input_token_details", {})
    return {"kind": kind, "text": text, "ok": turn.ok, "seconds": round(turn.seconds, 3), "tools": list(turn.tool_calls),
            "cache_read": int(details.get("cache_read", 0) or 0),
            "cache_creation": int(details.get("cache_creation", 0) or 0)}


def _open(graph: Any, mode: str, path: str, thread: str, show: _Progress) -> Turn:
    from .graph import run_turn

    text = f"/open {path}" if mode == "router" else f"Open the document {path}"
    turn = run_turn(graph, text, thread, show)
    if not turn.ok:
        raise TurnFailed(f"cannot open {path!r}: {turn.error}")
    opened = [m for m in turn.messages if getattr(m, "name", None) == "open_document" and m.status != "error"]
    if not opened:
        raise TurnFailed(f"the model did not open {path!r}; it replied: {(turn.answer or '')[:200]!r}")
    print(f"Opened {opened[-1].content}.", flush=True)
    return turn


def _run(args: argparse.Namespace, report: dict[str, Any]) -> None:
    from homer_llm.doc_cache import DocumentCache

    from .checkpoint import default_cache_dir, sqlite_checkpointer
    from .graph import build_agent, resolve_mode
    from .registry import DocumentRegistry

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        access = DocumentAccess.from_options(args.allow_root or None, args.max_document_bytes)
    except ValueError as err:
        raise TurnFailed(str(err)) from None
    cache_dir = args.cache_dir or (str(default_cache_dir(args.checkpoint)) if args.checkpoint else None)
    cache = DocumentCache(args.cache_bytes, disk_dir=cache_dir, mode=args.reuse)
    report["cache"] = cache
    llm = _load_llm(args, cache)
    mode = resolve_mode(args.agent, llm)
    report["mode"] = mode
    show = _Progress(args.quiet)
    with ExitStack() as stack:
        saver = None
        if args.checkpoint:
            try:
                saver = stack.enter_context(sqlite_checkpointer(args.checkpoint))
            except (ImportError, ValueError) as err:
                raise TurnFailed(str(err)) from None
        graph = build_agent(llm, DocumentRegistry(access), mode=mode, checkpointer=saver)
        for path in args.document:
            report["turns"].append(_turn_record("open", path, _open(graph, mode, path, args.thread, show)))
        if args.question:
            state = graph.get_state({"configurable": {"thread_id": args.thread}}).values
            if not state.get("documents"):
                raise TurnFailed(f"no document is open in thread {args.thread!r}: pass --document PATH")
        from .graph import run_turn

        for i, question in enumerate(args.question, start=1):
            turn = run_turn(graph, question, args.thread, show)
            report["turns"].append(_turn_record("question", question, turn))
            if not turn.ok:
                raise TurnFailed(f"question {i} failed: {turn.error}")
            record = report["turns"][-1]
            print(f"Q{i}: {question}")
            print(f"A{i}: {turn.answer}")
            print(f"   ({turn.seconds:.2f} s; tools: {', '.join(turn.tool_calls) or 'none'}; "
                  f"cache_read={record['cache_read']} cache_creation={record['cache_creation']} tokens)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (argparse exits 2 itself on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.document and not args.question:
        parser.error("nothing to do: pass --document PATH and/or --question Q")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    # the one-time calibration table (minutes on a CPU, before the first compression) announces itself
    logging.getLogger("homer_llm.calibration").setLevel(logging.INFO)
    report: dict[str, Any] = {"cache": None, "mode": None, "turns": []}
    status = 0
    try:
        _run(args, report)
    except TurnFailed as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        status = 130
    except Exception as err:
        if args.verbose:
            raise
        print(f"{PROG}: error: {type(err).__name__}: {_first_line(err)}", file=sys.stderr)
        status = 1
    if report["cache"] is not None:
        turns = report["turns"]
        print(json.dumps({**report["cache"].stats(), "mode": report["mode"], "thread": args.thread,
                          "answer_seconds": [t["seconds"] for t in turns if t["kind"] == "question"],
                          "turns": turns}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
