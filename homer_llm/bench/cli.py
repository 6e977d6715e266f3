"""``homer-llm bench``: plain prefill vs what HOMER users get, memory and speed against input length.

The main CLI imports this module lazily and calls ``add_arguments(subparser)`` then ``run(args)``
(it adds ``-v/--verbose`` itself); ``python -m homer_llm.bench`` does the same on its own.

Examples:
    homer-llm bench --device cpu --config tiny --json out.json --plot out.png     # seconds, CI
    homer-llm bench --device cuda --config llama2-7b --max-length 1M --json r.json --plot r.png
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from .configs import SHAPES, get_shape

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Benchmark plain transformers prefill against HOMER on a random-initialised model: peak memory, "
        "prefill seconds, decode ms/token and the share of the FLOP floor of each method's own work, for "
        "lengths doubling up to --max-length. Rows: plain, homer (the library's defaults: own-leaf merges "
        "on sdpa/eager, suffix re-read), homer-causal (causal merges) and homer-focus (--focus-leaves "
        "with the leaf locator). Out-of-memory is reported as OOM, not raised."
    )
    parser.add_argument("--config", choices=sorted(SHAPES), default=None,
                        help="model shape (default: llama2-7b on CUDA, tiny on the CPU); "
                        + "; ".join(f"{k}: {v.description}" for k, v in SHAPES.items()))
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", default="auto",
                        help="bf16/fp16/fp32 (default auto: bf16 on CUDA and on CPUs with AMX, else fp32)")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"),
                        help="attention backend of the model (default sdpa: PyTorch's flash kernel on CUDA)")
    parser.add_argument("--methods", default="plain,homer,homer-causal,homer-focus",
                        help="comma list of plain, homer, homer-causal, homer-focus (default all four)")
    parser.add_argument("--lengths", default=None, help="comma list of input lengths, e.g. 4k,16k,1M")
    parser.add_argument("--min-length", default=None, help="smallest length of the doubling series (e.g. 4k)")
    parser.add_argument("--max-length", default=None, help="largest length of the doubling series (e.g. 1M)")
    parser.add_argument("--prefix-len", type=int, default=None, help="HOMER prefix tokens P (default per config)")
    parser.add_argument("--suffix-len", type=int, default=None, help="HOMER suffix tokens S (default per config)")
    parser.add_argument("--chunk-len", type=int, default=None, help="HOMER chunk length M (default: window/2)")
    parser.add_argument("--warmup-layers", type=int, default=None, help="HOMER warm-up layers W (default 12/32 of L)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per length, median reported "
                        "(default 3 on CUDA, 1 on the CPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs at the first length (default 1)")
    parser.add_argument("--budget-s", type=float, default=30.0,
                        help="stop repeating a length once its runs took this many seconds (default 30)")
    parser.add_argument("--decode-tokens", type=int, default=16, help="greedy decode steps timed per cache (0: none)")
    parser.add_argument("--merge-attention", default="auto", choices=("auto", "causal", "own-leaf"),
                        help="merged-node attention of the homer row: auto (HomerConfig's default: own-leaf "
                        "on sdpa/eager, an explicit mask; causal under flash-attn), causal or own-leaf")
    parser.add_argument("--focus-leaves", type=int, default=2, metavar="K",
                        help="leaves the homer-focus row reads plainly (default 2)")
    parser.add_argument("--matmul-size", type=int, default=None, metavar="N",
                        help="side of the square matmul that measures the device's rate "
                        "(default 8192 on CUDA, 1024 on the CPU)")
    parser.add_argument("--bias", default="zero", choices=("zero", "none", "random"),
                        help="HOMER calibration table: zero (calibrated code path; default), none, random")
    parser.add_argument("--plain-logits", default="last", choices=("last", "all"),
                        help="plain prefill computes logits for the last token only (default) or all tokens")
    parser.add_argument("--max-plain-length", default=None,
                        help="do not run plain above this length (e.g. 16k on a CPU, where it takes hours)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own; 1 is steadiest on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None, metavar="LENGTH",
                        help="after the benchmark, profile one HOMER compression of LENGTH tokens "
                        "(host syncs, kernel launches, top ops)")
    parser.add_argument("--replot", default=None, metavar="JSON",
                        help="run nothing: print the table of a saved JSON (and write --plot from it)")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write the full results as JSON")
    parser.add_argument("--plot", dest="plot_path", default=None, metavar="PNG", help="write a plot against length")


def _settings(args: argparse.Namespace):
    from ..model import resolve_device, resolve_dtype
    from .report import doubling_lengths, parse_length
    from .runner import BenchSettings

    device = resolve_device(None if args.device == "auto" else args.device)
    name = args.config or ("llama2-7b" if device.startswith("cuda") else "tiny")
    shape = get_shape(name)
    if args.dtype == "auto":
        dtype = resolve_dtype("auto", device)
    elif args.dtype in _DTYPES:
        dtype = _DTYPES[args.dtype]
    else:
        raise ValueError(f"--dtype must be auto or one of {sorted(_DTYPES)}, got {args.dtype!r}")
    if args.lengths:
        lengths = tuple(parse_length(x) for x in args.lengths.split(",") if x.strip())
    elif args.min_length or args.max_length:
        lo = parse_length(args.min_length) if args.min_length else shape.lengths[0]
        hi = parse_length(args.max_length) if args.max_length else shape.lengths[-1]
        lengths = doubling_lengths(lo, hi)
    else:
        lengths = shape.lengths
    repeats = args.repeats if args.repeats is not None else (3 if device.startswith("cuda") else 1)
    return BenchSettings(
        shape=shape, device=device, dtype=dtype, attn=args.attn,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        lengths=lengths, prefix_len=args.prefix_len, suffix_len=args.suffix_len,
        chunk_len=args.chunk_len, warmup_layers=args.warmup_layers, repeats=repeats, warmup=args.warmup,
        budget_s=args.budget_s, decode_tokens=args.decode_tokens, bias=args.bias,
        plain_logits=args.plain_logits, seed=args.seed, merge_attention=args.merge_attention,
        focus_leaves=args.focus_leaves, matmul_size=args.matmul_size,
        max_plain_length=parse_length(args.max_plain_length) if args.max_plain_length else None,
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table; write JSON/plot if asked. 0 on success, 2 on bad arguments,
    1 if a row could not run for a reason other than memory (e.g. a plan that cannot fit)."""
    if getattr(args, "verbose", 0) and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    from .report import load_json, parse_length, write_json, write_plot
    from .runner import Bench

    if args.replot:
        report = load_json(args.replot)
        _print_report(report, sorted({r.length for r in report.results}))
        if args.plot_path:
            print(f"wrote {write_plot(report, args.plot_path)}")
        return 0
    if args.threads is not None:
        if args.threads < 1:
            print(f"homer-llm bench: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        settings = _settings(args)
        bench = Bench(settings)
    except ValueError as err:
        print(f"homer-llm bench: {err}", file=sys.stderr)
        return 2
    on_result = None
    if args.json_path:
        def on_result(partial) -> None:  # keep what was measured if the run is cut off
            write_json(partial, args.json_path)
    report = bench.run(on_result)
    _print_report(report, settings.lengths)
    if args.profile:
        from .profile import profile_homer

        print(profile_homer(bench, parse_length(args.profile)).format())
    errors = [r for r in report.results if r.status == "error"]
    for r in errors:
        print(f"{r.method} at {r.length}: {r.note}", file=sys.stderr)
    if args.json_path:
        print(f"wrote {write_json(report, args.json_path)}")
    if args.plot_path:
        print(f"wrote {write_plot(report, args.plot_path)}")
    return 1 if errors else 0


def _print_report(report, lengths) -> None:
    from .report import format_growth, format_header, format_table, summary_ratio

    print(format_header(report))
    if not report.complete:
        print("# PARTIAL: the run stopped before every row was measured")
    print(format_table(report))
    growth = format_growth(report)
    if growth:
        print(growth)
    for length in lengths:
        line = summary_ratio(report, length)
        if line:
            print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="homer-llm bench")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log progress to stderr")
    add_arguments(parser)
    return run(parser.parse_args(argv))
