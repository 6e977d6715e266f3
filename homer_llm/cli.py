"""The ``homer-llm`` command.

    homer-llm ask --document PATH "QUESTION" [--json] [--plain] [options]

``ask`` puts the whole document into the model's context with HOMER and prints the answer on
stdout (a progress bar of the compression goes to stderr). ``--json`` prints one JSON object with
the answer, token counts, timings and peak memory instead. ``--plain`` runs the plain model on the
whole prompt (no HOMER, even beyond its window) for comparison.

Before any model work, a prompt over ``--max-input-tokens`` (default 2,097,152; a document over
16 characters a token of it is refused before tokenizing), or a compression estimated over
``--max-compress-seconds`` (default 24 hours) or over the memory the device has available, is
refused with the numbers (exit 2); ``--no-size-limit`` turns all three off.

``eval`` and ``bench`` come from ``homer_llm.evaluation.cli`` and ``homer_llm.bench.cli`` (each
exposes ``add_arguments(parser)`` and ``run(args) -> int``); they are imported only when chosen.

Exit codes: 0 success, 2 bad input (arguments, document, question, a prompt that cannot fit),
1 runtime failure (out of memory, default model missing or corrupted, model cannot be loaded),
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROG = "homer-llm"
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("homer_llm.evaluation.cli", "evaluate HOMER against baselines on long-document tasks"),
    "bench": ("homer_llm.bench.cli", "measure speed and memory of HOMER against the plain model"),
}


class CommandError(Exception):
    """A failure reported as one ``homer-llm: error: ...`` line with exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------- parser
def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. ``selected``: the chosen subcommand, so only its lazy module is imported.

    Raises:
        CommandError: ``selected`` is a lazy command whose module cannot be imported.
    """
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-v: info, -vv: debug) on stderr")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="HOMER hierarchical context merging: whole long documents in a local LLM's context.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ask = sub.add_parser("ask", parents=[common], help="answer a question about a whole document",
                         description="Answer QUESTION about the whole document at PATH.")
    add_ask_arguments(ask)
    ask.set_defaults(func=run_ask)

    for name, (module_name, help_text) in LAZY_COMMANDS.items():
        if name == selected:
            try:
                module = importlib.import_module(module_name)
            except ImportError as err:
                raise CommandError(
                    f"the '{name}' command is unavailable ({module_name} cannot be imported: {_one_line(err)})", code=1
                ) from None
            cmd = sub.add_parser(name, parents=[common], help=help_text)
            module.add_arguments(cmd)
            cmd.set_defaults(func=module.run)
        else:  # listed in --help; the real parser is built only when the command is chosen
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def add_ask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", metavar="QUESTION", help="the question to answer")
    parser.add_argument("--document", "-d", required=True, metavar="PATH", help="UTF-8 text file to read whole")
    parser.add_argument("--json", action="store_true", help="print one JSON object (answer, tokens, times, memory)")
    parser.add_argument("--plain", action="store_true",
                        help="no HOMER: run the plain model on the whole prompt, even beyond its window")
    parser.add_argument("--system", default=None, metavar="TEXT", help="system prompt")
    parser.add_argument("--instruction", default=None, metavar="TEXT",
                        help="task text placed before the document in the user turn (every HOMER chunk sees it)")
    parser.add_argument("--answer-prefix", default=None, metavar="TEXT",
                        help="start the answer with TEXT (printed as part of it). HOMER prunes by the "
                             "attention of the prompt's last token, so a prefix naming what is sought "
                             "(e.g. 'The pass key is') steers what survives compression")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, metavar="PATH_OR_ID",
                       help="local model folder or hub id (default: embedded SmolLM2-135M-Instruct)")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    model.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="weights dtype (auto: bfloat16 on CUDA and on CPUs with AMX tiles, float32 on "
                            "other CPUs)")
    model.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"],
                       help="attention backend")
    model.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    homer = parser.add_argument_group("HOMER")
    homer.add_argument("--chunk-len", type=_positive_int, default=None, metavar="M",
                       help="longest chunk any forward pass sees (default: half the model window)")
    homer.add_argument("--pruning", default="calibrated", choices=["calibrated", "uncalibrated", "random"],
                       help="token pruning rule")
    homer.add_argument("--prune-unit", default="token", choices=["token", "word"],
                       help="prune single tokens (the paper) or whole words/numbers (default: token)")
    homer.add_argument("--merged-suffix", action="store_true",
                       help="keep the tree's averaged question states, as published (default: read the question "
                            "afresh after the merged document)")
    homer.add_argument("--rope-scaling", default=None, choices=["yarn", "linear"],
                       help="run HOMER on a RoPE-scaled view (HOMER + YaRN): chunks --rope-factor times longer, "
                            "a shallower tree (default: off)")
    homer.add_argument("--rope-factor", type=float, default=2.0, metavar="F",
                       help="scaling factor with --rope-scaling (default: 2)")
    homer.add_argument("--focus-leaves", type=int, default=0, metavar="K",
                       help="locate the K leaves (document slices) the question attends to most and answer from "
                            "a plain read of their whole text (default 0: answer from the compressed cache)")
    homer.add_argument("--focus-margin", type=int, default=256, metavar="N",
                       help="with --focus-leaves: tokens of neighbouring text also read on each side of a chosen "
                            "leaf, as the read's budget allows (default 256; 0: whole leaves only)")
    homer.add_argument("--focus-locator", default="leaf", choices=["tree", "leaf", "lexical"],
                       help="with --focus-leaves: rank leaves inside each leaf's own pass, without running the "
                            "merges (leaf, default), by the question's attention after the whole tree (tree), or by "
                            "BM25 of the question's tokens in each leaf, no model pass (lexical)")
    homer.add_argument("--focus-keep-document", action="store_true",
                       help="with --focus-leaves: read the chosen leaves in full after HOMER's compressed cache of "
                            "the whole document (the hybrid read) instead of alone")
    homer.add_argument("--merge-attention", default="auto", choices=["auto", "causal", "own-leaf"],
                       help="in merged nodes every token reads all before it (causal, as published) or only its "
                            "own leaf's, the question still reading everything (own-leaf); auto (default): own-leaf "
                            "without --focus-leaves on sdpa/eager attention, else causal")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=_positive_int, default=256, metavar="N")
    gen.add_argument("--temperature", type=_finite_float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    limits = parser.add_argument_group("size limits (checked before any model work)")
    limits.add_argument("--max-input-tokens", type=_positive_int, default=1 << 21, metavar="N",
                        help="refuse a prompt of more than N tokens, or a document of more than 16 N characters "
                             "(default 2097152)")
    limits.add_argument("--max-compress-seconds", type=_positive_float, default=24 * 3600.0, metavar="S",
                        help="refuse a compression estimated to take more than S seconds on this device "
                             "(default 86400)")
    limits.add_argument("--no-size-limit", action="store_true",
                        help="no token, time or memory limit (the memory limit is what the device has available)")


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# ---------------------------------------------------------------------------- inputs
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_document(path: str, max_bytes: int | None = None) -> str:
    """The document's text; CommandError (one line) if missing, empty, binary, too large or not
    UTF-8 (UTF-16 with a byte-order mark is decoded). ``max_bytes``: larger files are refused unread."""
    file = Path(path)
    if not file.exists():
        raise CommandError(f"document not found: {path}")
    if not file.is_file():
        raise CommandError(f"document is not a regular file: {path}")
    try:
        size = file.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise CommandError(f"document {path} is {size:,} bytes, more than --max-input-tokens allows "
                               f"({max_bytes:,} bytes); raise it or pass --no-size-limit")
        data = file.read_bytes()
    except OSError as err:
        raise CommandError(f"cannot read document {path}: {err.strerror or err}") from None
    if data.startswith(_UTF16_BOMS):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as err:
            raise CommandError(f"document {path} starts with a UTF-16 byte-order mark but is not valid UTF-16 "
                               f"(offset {err.start})") from None
        if "\x00" in text:
            raise CommandError(f"document {path} contains NUL characters: it looks binary, not text")
        if not text.strip():
            raise CommandError(f"document {path} is empty")
        return text
    if b"\x00" in data:
        raise CommandError(f"document {path} contains NUL bytes: it looks binary, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CommandError(f"document {path} is not UTF-8 text (invalid byte at offset {err.start})") from None
    if not text.strip():
        raise CommandError(f"document {path} is empty")
    return text


# ---------------------------------------------------------------------------- ask
class _Progress:
    """HOMER's progress(done, total) callback driving a tqdm bar on stderr (created on first call).

    A new total starts a new bar: a first use of a model and chunk length reports the calibration
    table's build (its own count) before the tree's layer passes.
    """

    def __init__(self, enabled: bool, desc: str = "HOMER") -> None:
        self.enabled, self.desc, self.bar = enabled, desc, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is not None and self.bar.total != total:
            self.close()
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="layer", file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_ask(args: argparse.Namespace) -> int:
    if not args.question or not args.question.strip():
        raise CommandError("the question is empty")
    if args.temperature < 0:
        raise CommandError(f"--temperature must be >= 0, got {args.temperature}")
    # a character is at most 4 UTF-8 bytes: a file over this many bytes is over the character bound too
    max_bytes = None if args.no_size_limit else args.max_input_tokens * 16 * 4
    document = read_document(args.document, max_bytes)

    import torch

    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _ask(args, document)
    finally:
        torch.set_num_threads(threads)  # main() may run in-process (tests, notebooks)


def _ask(args: argparse.Namespace, document: str) -> int:
    import torch

    from .config import GenerationConfig, HomerConfig
    from .model import HomerModel, SizeLimits, resolve_device

    device = resolve_device(args.device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    if args.focus_keep_document and args.focus_leaves < 1:
        raise ValueError(f"--focus-keep-document needs --focus-leaves K with K >= 1, got --focus-leaves {args.focus_leaves}")
    homer = HomerConfig(chunk_len=args.chunk_len, pruning=args.pruning, prune_unit=args.prune_unit,
                        reread_suffix=not args.merged_suffix, rope_scaling=args.rope_scaling,
                        rope_factor=args.rope_factor, focus_leaves=args.focus_leaves,
                        focus_margin=args.focus_margin, focus_locator=args.focus_locator,
                        focus_keep_document=args.focus_keep_document, merge_attention=args.merge_attention)
    started = time.perf_counter()
    limits = SizeLimits.off() if args.no_size_limit else SizeLimits(max_input_tokens=args.max_input_tokens,
                                                                    max_seconds=args.max_compress_seconds)
    hm = HomerModel.load(args.model, device=device, dtype=args.dtype, attn_implementation=args.attn, homer=homer,
                         limits=limits)
    load_seconds = time.perf_counter() - started
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    parts = hm.prepare_question(document, args.question, system=args.system, instruction=args.instruction,
                                answer_prefix=args.answer_prefix)

    progress = _Progress(enabled=not args.no_progress)
    started = time.perf_counter()
    try:
        if args.plain:
            if limits.max_input_tokens is not None and len(parts) > limits.max_input_tokens:
                raise CommandError(f"the prompt has {len(parts):,} tokens, more than --max-input-tokens "
                                   f"{limits.max_input_tokens:,}; raise it or pass --no-size-limit")
            result = plain_answer(hm, parts.ids, config)
            result["answer"] = ((args.answer_prefix or "") + result.pop("raw_text")).strip()
        else:
            answer = hm.answer(parts, config, progress=progress, answer_prefix=args.answer_prefix)
            result = {
                "answer": answer.text,
                "input_tokens": answer.input_tokens,
                "cache_tokens": answer.cache_tokens,
                "output_tokens": answer.output_tokens,
                "finish_reason": answer.finish_reason,
                "compress_seconds": answer.compress_seconds,
                "generate_seconds": answer.generate_seconds,
                "peak_kv_bytes": answer.peak_kv_bytes,
                "tree_height": answer.tree_height,
            }
    finally:
        progress.close()
    seconds = time.perf_counter() - started

    if not args.json:
        print(result["answer"])
        return 0
    from . import __version__

    report: dict[str, Any] = {
        "answer": result["answer"],
        "mode": "plain" if args.plain else "homer",
        "input_tokens": result["input_tokens"],
        "cache_tokens": result["cache_tokens"],
        "output_tokens": result["output_tokens"],
        "finish_reason": result["finish_reason"],
        "seconds": round(seconds, 4),
        "compress_seconds": round(result["compress_seconds"], 4),
        "generate_seconds": round(result["generate_seconds"], 4),
        "load_seconds": round(load_seconds, 4),
        "peak_memory_bytes": peak_memory_bytes(device),
        "peak_memory_kind": "cuda_max_memory_allocated" if device.startswith("cuda") else "process_max_rss",
        "peak_kv_bytes": result["peak_kv_bytes"],
        "tree_height": result["tree_height"],
        "model": hm.name,
        "window": hm.window,
        "chunk_len": None if args.plain else hm.chunk_len,
        "pruning": None if args.plain else hm.homer.pruning,
        "prune_unit": None if args.plain else hm.homer.prune_unit,
        "rope_scaling": None if hm.homer.rope_scaling is None else f"{hm.homer.rope_scaling}:{hm.homer.rope_factor:g}",
        "focus_leaves": None if args.plain else hm.homer.focus_leaves,
        "focus_margin": None if args.plain or not hm.homer.focus_leaves else hm.homer.focus_margin,
        "focus_locator": None if args.plain or not hm.homer.focus_leaves else hm.homer.focus_locator,
        "focus_keep_document": None if args.plain or not hm.homer.focus_leaves else hm.homer.focus_keep_document,
        "merge_attention": None if args.plain else hm.homer.merge_attention,
        "device": str(hm.device),
        "dtype": str(next(hm.model.parameters()).dtype).removeprefix("torch."),
        "attn": args.attn,
        "threads": torch.get_num_threads(),
        "versions": _versions(__version__),
    }
    print(json.dumps(report))
    return 0


def _versions(homer_version: str) -> dict[str, str]:
    import torch
    import transformers

    return {"homer_llm": homer_version, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0]}


def peak_memory_bytes(device: str) -> int | None:
    """CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak resident set size (bytes)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes


def plain_answer(hm, ids: Sequence[int], config) -> dict[str, Any]:
    """No HOMER: one prefill of the whole prompt with the transformers model, then cached decoding.

    Positions run 0..len(ids)-1 even past the model's window (that is the point of the comparison).
    Only the last position's logits are computed (a [len, vocab] tensor would not fit at 32k).
    """
    import torch

    from . import compat
    from .generation import sample_next

    model, tokenizer = hm.model, hm.tokenizer
    generator = None
    if not config.greedy:
        generator = torch.Generator()
        generator.manual_seed(config.seed) if config.seed is not None else generator.seed()
    with hm.lock, torch.inference_mode():
        input_ids = torch.tensor([list(ids)], device=hm.device)
        start = time.perf_counter()
        try:
            out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        except torch.OutOfMemoryError as err:
            raise MemoryError(f"out of memory running the plain model on {len(ids)} tokens") from err
        prefill = time.perf_counter() - start
        cache = compat.output_cache(out)
        kv_bytes = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)
        logits = out.logits[0, -1].float()
        position = len(ids)
        tokens: list[int] = []
        reason = "length"
        start = time.perf_counter()
        for step in range(config.max_new_tokens):
            token = sample_next(logits, config, generator)
            tokens.append(token)
            if token in hm.eos_ids:
                reason = "stop"
                break
            if step + 1 == config.max_new_tokens:
                break
            out = model(
                input_ids=torch.tensor([[token]], device=hm.device),
                position_ids=torch.tensor([[position]], device=hm.device),
                use_cache=True,
                **compat.cache_kwargs(model, cache),
            )
            cache = compat.output_cache(out)
            logits = out.logits[0, -1].float()
            position += 1
        decode = time.perf_counter() - start
    text_ids = tokens[:-1] if reason == "stop" else tokens
    return {
        "raw_text": tokenizer.decode(text_ids, skip_special_tokens=True),
        "input_tokens": len(ids),
        "cache_tokens": len(ids),
        "output_tokens": len(tokens),
        "finish_reason": reason,
        "compress_seconds": prefill,
        "generate_seconds": decode,
        "peak_kv_bytes": kv_bytes,
        "tree_height": 0,
    }


# ---------------------------------------------------------------------------- main
def _setup_logging(verbose: int) -> Callable[[], None]:
    """Send homer_llm's log records to stderr at the chosen level; returns a function undoing it.

    The undo matters when ``main`` runs in-process (tests, notebooks): loggers are process-wide.
    """
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s" if verbose < 2 else
                                           f"{PROG}: %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("homer_llm")
    # the one-off slow steps (default model conversion, calibration table) always announce themselves
    noisy = [logging.getLogger(name) for name in ("homer_llm.default_model", "homer_llm.calibration")]
    saved = [(lg, lg.level) for lg in [package, *noisy]]
    package.addHandler(handler)
    package.setLevel(level)
    for lg in noisy:
        lg.setLevel(min(level, logging.INFO))
    restore_hf: Callable[[], None] = lambda: None  # noqa: E731
    if verbose == 0:
        try:
            from transformers.utils import logging as hf_logging

            hf_level, hf_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()

            def restore_hf() -> None:
                hf_logging.set_verbosity(hf_level)
                if hf_bars:
                    hf_logging.enable_progress_bar()
        except ImportError:  # pragma: no cover
            pass

    def restore() -> None:
        package.removeHandler(handler)
        for lg, old in saved:
            lg.setLevel(old)
        restore_hf()

    return restore


def _selected_command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``homer-llm``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_selected_command(argv))
    except CommandError as err:  # an eval/bench module that cannot be imported
        return _error(str(err), err.code)
    args = parser.parse_args(argv)  # argparse errors exit 2 with a usage line
    verbose = getattr(args, "verbose", 0)
    restore = _setup_logging(verbose)
    try:
        return int(args.func(args) or 0)
    except CommandError as err:
        return _error(str(err), err.code)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except MemoryError as err:
        return _error(f"out of memory: {_one_line(err)}", 1, err)
    except (ValueError, TypeError) as err:  # bad input, incl. UnsupportedModelError and prompts that cannot fit
        return _error(_one_line(err), 2, err)
    except (RuntimeError, OSError) as err:  # DefaultModelError, torch runtime failures, I/O
        return _error(_one_line(err), 1, err)
    except Exception as err:  # noqa: BLE001 - anything else still ends in one line, its traceback under -vv
        return _error(f"{type(err).__name__}: {_one_line(err)} (run with -vv for the traceback)", 1, err)
    finally:
        restore()


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _error(message: str, code: int, err: BaseException | None = None) -> int:
    if err is not None:  # the traceback, for -vv
        logging.getLogger(__name__).debug("%s failed", PROG, exc_info=err)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
