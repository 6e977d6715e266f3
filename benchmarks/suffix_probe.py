"""Probe: does HOMER answer better when the question is read afresh after the tree?

HOMER's suffix (question + assistant tag) rides in every leaf and is averaged at each merge
(HOMER.md 9), so at the root its lower layers' K/V and the last token's hidden state are a mean
of 2^H views, most of which never saw the needle. This probe compresses each chosen passkey
sample of ``homer-llm eval`` ONCE (same generator, seed and depths) and answers from that one
compression two ways:

- ``tree``: as published (``HomerConfig(reread_suffix=False)``): the averaged suffix's cache and
  logits;
- ``reread`` (``engine.reread_suffix``, HomerConfig's default since session 8): the suffix's cache
  entries are dropped and the suffix tokens run again through every layer after the compressed
  prefix + context, at the same position ids (pruning was still chosen by the question, so the
  cache is the same; only the question's own states differ);
- ``reencode`` (with ``--reencode``): HOMER only as a token selector: the plain model prefills the
  prompt tokens that survived pruning (prefix, kept document tokens in order, suffix; at most one
  chunk) with fresh consecutive positions, and answers from that.

    .venv/bin/python benchmarks/suffix_probe.py --length 32k --depths random --samples 0,6,8

Prints one line per sample: depth, needle kept, each answer and whether it is right.
"""

from __future__ import annotations

import time

from probe_samples import load_samples, sample_parser

from homer_llm import HomerConfig, PromptParts
from homer_llm.engine import reread_suffix
from homer_llm.evaluation.methods import build_parts
from homer_llm.evaluation.tasks import QA_TASKS


def show_needle(tokenizer, parts, kept: list[int], key: str, width: int) -> None:
    """Print the document tokens around each occurrence of the key's first token, pruned ones bracketed."""
    p, ctx = len(parts.prefix), list(parts.context)
    first = tokenizer(key, add_special_tokens=False)["input_ids"][0]
    survived = {i - p for i in kept}
    for at in [i for i, t in enumerate(ctx) if t == first]:
        pieces = []
        for i in range(max(0, at - width), min(len(ctx), at + width)):
            piece = tokenizer.decode([ctx[i]])
            pieces.append(piece if i in survived else f"[{piece}]")
        print(f"  token {at}: {''.join(pieces)!r}", flush=True)


def main() -> None:
    ap = sample_parser(__doc__, length="32k", samples="0", depths="random")
    ap.add_argument("--reencode", action="store_true", help="also answer from a plain prefill of the kept tokens")
    ap.add_argument("--show-needle", type=int, default=0, metavar="N",
                    help="print the N document tokens either side of the key, pruned ones in [brackets]")
    args = ap.parse_args()
    hm, model, samples = load_samples(args, HomerConfig(reread_suffix=False))
    task = QA_TASKS["passkey"]
    for index, sample in samples:
        parts = build_parts(hm.tokenizer, sample)
        config = model.generation_config(sample)
        start = time.perf_counter()
        context = hm.compress(parts)
        seconds = time.perf_counter() - start
        answers = {"tree": hm.generate(context, config).text,
                   "reread": hm.generate(reread_suffix(hm.parts, context, parts.suffix), config).text}
        if args.show_needle:
            show_needle(hm.tokenizer, parts, context.kept.tolist(), sample.expected[0], args.show_needle)
        if args.reencode:
            p, c = len(parts.prefix), len(parts.context)
            kept = [parts.ids[i] for i in context.kept.tolist() if p <= i < p + c]
            answers["reencode"] = hm.generate(PromptParts(parts.prefix, tuple(kept), parts.suffix), config).text
        verdicts = " ".join(f"{name}={int(task.check(sample, text))} {text[:40]!r}" for name, text in answers.items())
        print(f"sample {index} depth {sample.depth:.3f} key {sample.expected[0]} ({seconds:.0f} s): {verdicts}",
              flush=True)


if __name__ == "__main__":
    main()
