"""Perplexity diagnostics: HOMER settings against plain last-K-token baselines, on the same samples.

Issue 3's perplexity target compares HOMER at 8x the window with scoring on the last window only.
This script asks *why* HOMER is above that, one knob at a time (warm-up layers, chunk length,
recent tokens kept whole, calibration), and how much plain context the last window actually needs
(last 1024 / 2048 / 4096 / window tokens). Every row scores the very same ``ppl`` samples of
``homer-llm eval`` (same seed: sample 0 here is sample 0 there).

    .venv/bin/python benchmarks/ppl_variants.py --length 16k --samples 3 \
        --rows last1024,last2048,last4096,window,homer,homer-w6,homer-w18,homer-uncal,append3840 \
        --out results/ppl-variants-16k.jsonl

Rows already in ``--out`` (same row, length, sample) are skipped, so a run can be resumed.
Prints a table: row -> perplexity (exp of the mean NLL over all scored tokens of all samples),
the ratio to ``window``, and seconds per sample.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from homer_llm import HomerModel
from homer_llm.evaluation.cli import parse_lengths
from homer_llm.evaluation.methods import EvalModel, HomerMethod
from homer_llm.evaluation.perplexity import PerplexityTask
from homer_llm.evaluation.runner import Deadline, score_plain
from homer_llm.prompt import bos_prefix

# row name -> what it runs. "last<K>": the plain model over only the last K context tokens;
# "window": the last window minus the scored tokens (= eval's truncate); HOMER rows: HomerConfig
# overrides and the number of most recent context tokens kept whole as the suffix.
ROWS = {
    "last1024": {"kind": "last", "keep": 1024},
    "last2048": {"kind": "last", "keep": 2048},
    "last4096": {"kind": "last", "keep": 4096},
    "window": {"kind": "last", "keep": None},
    "homer": {"kind": "homer", "recent": 0, "config": {}},
    "homer-w0": {"kind": "homer", "recent": 0, "config": {"warmup_layers": 0}},
    "homer-w6": {"kind": "homer", "recent": 0, "config": {"warmup_layers": 6}},
    "homer-w18": {"kind": "homer", "recent": 0, "config": {"warmup_layers": 18}},
    "homer-uncal": {"kind": "homer", "recent": 0, "config": {"pruning": "uncalibrated"}},
    "recent2048": {"kind": "homer", "recent": 2048, "config": {}},
    # HOMER compresses all but the last N context tokens (its own last token is the query); the last
    # N are then run whole AFTER the compressed cache, like a continuation, and the target after
    # them. append3840 fills the window exactly: 4096 cache + 3840 + 256 scored = 8192 positions.
    "last3840": {"kind": "last", "keep": 3840},
    "append2048": {"kind": "append", "recent": 2048, "config": {}},
    "append3840": {"kind": "append", "recent": 3840, "config": {}},
    "append3840-word": {"kind": "append", "recent": 3840, "config": {"prune_unit": "word"}},
    # the document's first N tokens as the shared prefix of every chunk (an attention sink that all
    # chunks share, as a BOS is for Llama; SmolLM2's tokenizer adds none). Rows without "sink" run
    # with none, as their records were made before prompt.anchor_prefix existed.
    "homer-sink4": {"kind": "homer", "recent": 0, "sink": 4, "config": {}},
    "append3840-sink4": {"kind": "append", "recent": 3840, "sink": 4, "config": {}},
}


def run_row(name: str, base: HomerModel, sample, variants: dict) -> tuple[list[float], int]:
    """NLL of the sample's target under row ``name``, and the tokens the model attended to."""
    spec = ROWS[name]
    if spec["kind"] == "last":
        bos = bos_prefix(base.tokenizer)
        keep = spec["keep"] if spec["keep"] is not None else base.window - len(sample.target) - len(bos)
        ids = bos + sample.context[-keep:]
        return score_plain(base.parts, ids, sample.target).tolist(), len(ids)
    # HOMER rows go through the eval's own HOMER scorer (suffix or appended recent tokens)
    key = (name, tuple(sorted(spec["config"].items())))
    if key not in variants:
        hm = HomerModel(base.model, base.tokenizer, name=base.name, homer=replace(base.homer, **spec["config"]))
        mode = {"ppl_append" if spec["kind"] == "append" else "ppl_recent": spec["recent"]}
        variants[key] = HomerMethod(EvalModel(hm, **mode, ppl_sink=spec.get("sink", 0)), name, hm.homer.pruning)
    result = variants[key].score(sample, Deadline(None))
    return result.nll, result.used_tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", default="16k")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", default="last2048,window,homer")
    parser.add_argument("--ppl-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="JSONL of per-sample rows (resumable)")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    torch.set_num_threads(args.threads)
    base = HomerModel.load()
    (length,) = parse_lengths(args.length, base.window)
    task = PerplexityTask(base.tokenizer, target_tokens=args.ppl_tokens)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            done[(rec["row"], rec["length"], rec["sample"])] = rec
    variants: dict = {}
    for index in range(args.samples):
        sample = task.make(length, index, args.seed)
        for row in rows:
            if (row, length, index) in done:
                continue
            start = time.perf_counter()
            nll, used = run_row(row, base, sample, variants)
            rec = {"row": row, "length": length, "sample": index, "nll": nll, "used_tokens": used,
                   "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            done[(row, length, index)] = rec
            with out.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(f"{row} sample {index}: ppl {math.exp(sum(nll) / len(nll)):.2f} "
                  f"({used} tokens, {rec['seconds']} s)", file=sys.stderr, flush=True)
    print(table(done, rows, length, args.samples))
    return 0


def table(done: dict, rows: list[str], length: int, samples: int) -> str:
    def ppl(row):
        nll = [x for i in range(samples) for x in done.get((row, length, i), {}).get("nll", [])]
        return math.exp(sum(nll) / len(nll)) if nll else None

    ref = ppl("window")
    lines = [f"length {length}, {samples} samples", "", "| row | ppl | / window | per-sample ppl | tokens used | s/sample |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        recs = [done[(row, length, i)] for i in range(samples) if (row, length, i) in done]
        value = ppl(row)
        if value is None:
            continue
        per = " / ".join(f"{math.exp(sum(r['nll']) / len(r['nll'])):.2f}" for r in recs)
        ratio = f"{value / ref:.3f}x" if ref else ""
        secs = sorted(r["seconds"] for r in recs)[len(recs) // 2]
        lines.append(f"| {row} | {value:.2f} | {ratio} | {per} | {recs[0]['used_tokens']} | {secs:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
