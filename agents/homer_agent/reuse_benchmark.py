"""Measure the document-reuse modes against a fresh compression per question (HOMER.md 13).

    python -m homer_agent.reuse_benchmark --lengths 8000,16000 --samples 2 --out reuse.jsonl

Each sample is a passkey document with two needles (a pass key and a door code at mirrored
depths) and two questions about it, asked in turn. Modes (``homer_llm.reuse``):

- exact:    a fresh HOMER compression for every question (the baseline);
- agnostic: one compression behind a generic suffix, each question appended after the cache;
- leaf:     question-independent leaf states kept, suffix + upper levels recomputed per question.

Reported per mode: accuracy (the number appears in the greedy answer), the time of the first
question (includes the compression) and of the later ones, and the cached bytes. Records are
appended to ``--out`` as JSON lines as they finish, so an interrupted run keeps its results.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from homer_llm import DOCUMENT_PLACEHOLDER, GenerationConfig, HomerModel
from homer_llm.doc_cache import DocumentCache
from homer_llm.reuse import REUSE_MODES

from .passkey import build_document, door_code_needle, passkey_needle, random_key

INSTRUCTION = ("There is important information hidden inside a lot of irrelevant text. "
               "Find it and memorize it. I will quiz you about it.")


def sample(engine: HomerModel, length: int, index: int, samples: int, seed: int) -> tuple[str, list[tuple[str, str]]]:
    rng = random.Random(seed * 1_000_003 + length * 31 + index)
    key, code = random_key(rng), rng.randint(1000, 9999)
    depth = (index + 1) / (samples + 1)
    doc = build_document(engine.count_tokens, length, [(depth, passkey_needle(key)), (1 - depth, door_code_needle(code))])
    return doc, [("What is the pass key?", str(key)), ("What is the door code?", str(code))]


def prompt(engine: HomerModel, document: str, question: str):
    content = f"{INSTRUCTION}\n\n{DOCUMENT_PLACEHOLDER}\n\n{question}"
    return engine.prepare_chat([{"role": "user", "content": content}], document)


def run_mode(engine: HomerModel, mode: str, document: str, questions: list[tuple[str, str]],
             config: GenerationConfig) -> list[dict]:
    cache = DocumentCache(mode=mode) if mode != "exact" else None
    out = []
    for qi, (question, answer) in enumerate(questions):
        parts = prompt(engine, document, question)
        start = time.perf_counter()
        if cache is None:
            ctx, hit = engine.compress(parts), False
        else:
            ctx, hit = cache.get_or_compress(engine, parts)
        compress_s = time.perf_counter() - start
        gen = engine.generate(ctx, config)
        total = time.perf_counter() - start
        out.append({
            "mode": mode, "question": qi, "correct": answer in gen.text, "answer": gen.text.strip()[:80],
            "expected": answer, "seconds": round(total, 3), "compress_seconds": round(compress_s, 3),
            "generate_seconds": round(gen.seconds, 3), "hit": hit, "cache_tokens": ctx.cache_tokens,
            "input_tokens": len(parts), "cache_bytes": cache.stats()["bytes"] if cache else 0,
        })
    return out


def summarize(records: list[dict]) -> str:
    lines = ["| length | mode | accuracy | first question s | later questions s | cached MB |",
             "|---|---|---|---|---|---|"]
    keys = sorted({(r["length"], r["mode"]) for r in records}, key=lambda k: (k[0], REUSE_MODES.index(k[1])))
    for length, mode in keys:
        rs = [r for r in records if r["length"] == length and r["mode"] == mode]
        first = [r["seconds"] for r in rs if r["question"] == 0]
        later = [r["seconds"] for r in rs if r["question"] > 0]
        acc = sum(r["correct"] for r in rs)
        mb = max(r["cache_bytes"] for r in rs) / 2**20
        lines.append(f"| {length} | {mode} | {acc}/{len(rs)} | {statistics.mean(first):.1f} | "
                     f"{statistics.mean(later) if later else float('nan'):.1f} | {mb:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m homer_agent.reuse_benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="8000", help="comma-separated document lengths in tokens")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--modes", default=",".join(REUSE_MODES))
    p.add_argument("--model", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest on a busy shared CPU; default: torch's choice)")
    p.add_argument("--out", default=None, help="JSON-lines file the records are appended to")
    p.add_argument("--summary-only", action="store_true", help="only print the table of an existing --out")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in REUSE_MODES:
            p.error(f"unknown mode {m!r}; choose from {REUSE_MODES}")
    if args.summary_only:
        records = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
        print(summarize(records))
        return 0
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    engine = HomerModel.load(args.model, device=args.device)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    records: list[dict] = []
    for length in (int(x) for x in args.lengths.split(",")):
        for index in range(args.samples):
            document, questions = sample(engine, length, index, args.samples, args.seed)
            for mode in modes:
                for record in run_mode(engine, mode, document, questions, config):
                    record.update(length=length, sample=index)
                    records.append(record)
                    print(json.dumps(record), file=sys.stderr, flush=True)
                    if args.out:
                        with open(args.out, "a", encoding="utf-8") as fh:
                            fh.write(json.dumps(record) + "\n")
    print(summarize(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
