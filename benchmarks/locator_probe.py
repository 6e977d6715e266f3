"""Probe: which leaf-ranking rule finds the needle's leaf? (session 11)

Focus (``HomerConfig.focus_leaves``) ranks the leaves by the attention the question, read afresh
after the tree, gives their surviving tokens (softmax shares summed over the upper half of the
layers). On a 16-leaf 32k tree with needles at the leaf boundaries that rule chose leaves 0 and 8
on two samples whose needle sat in leaf 10: the first leaves of the root's two subtrees draw
attention whatever the question (they also keep the most tokens). This probe compresses each
chosen passkey sample of ``homer-llm eval`` once (the tree exactly as focus builds it) and ranks
the leaves under several rules from that one tree:

- ``sum``: the library's rule (shares summed per leaf);
- ``mean``: the same per surviving token of the leaf;
- ``contrast``: ``sum`` less the same sum for a neutral question ("What is the text about?",
  answer prefix "The text is about") read after the same cache: attention any question gives;
- ``ratio``: ``sum`` over that neutral sum.

Per sample: the leaves holding the key's copies, each leaf's surviving tokens, and per rule the
rank of the best key leaf and whether the k chosen leaves' spans (with the margin, within the
budget, as focus reads them) contain a whole copy of the key.

    .venv/bin/python benchmarks/locator_probe.py --length 32k --depths 12.5,25,37.5,50,62.5,75,87.5 --samples 0,1,2,3,4,5,6
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from probe_samples import load_samples, sample_parser

from homer_llm import HomerConfig
from homer_llm.engine import compress
from homer_llm.evaluation.methods import build_parts, token_offsets, value_token_spans
from homer_llm.focus import choose_leaves, focus_spans, leaf_attention, token_leaves

RULES = ("sum", "mean", "contrast", "ratio")


def main() -> None:
    ap = sample_parser(__doc__, length="32k", samples="0", depths="random")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--margin", type=int, default=256)
    args = ap.parse_args()
    hm, _, samples = load_samples(args, HomerConfig(focus_leaves=args.k, focus_margin=args.margin))
    bias = hm.bias_table()
    for index, sample in samples:
        started = time.perf_counter()
        parts = build_parts(hm.tokenizer, sample)
        neutral = build_parts(hm.tokenizer, replace(sample, question="What is the text about?",
                                                    answer_prefix="The text is about"))
        assert neutral.prefix == parts.prefix and neutral.context == parts.context
        plan = hm.plan(parts)
        tree = compress(hm.parts, plan, torch.tensor(parts.ids), bias=bias, reread_suffix=False)
        S = len(parts.suffix)
        owner = token_leaves(plan, tree.kept[:-S])
        ctx = owner >= 0
        counts = torch.bincount(owner[ctx], minlength=plan.num_leaves).float()

        asked, background = (leaf_attention(hm.parts, plan, tree, torch.tensor(suffix), bias, cached_suffix=S)
                             for suffix in (parts.suffix, neutral.suffix))
        scores = {"sum": asked, "mean": asked / counts.clamp(min=1), "contrast": asked - background,
                  "ratio": asked / background.clamp(min=1e-6)}
        offsets = token_offsets(hm.tokenizer, sample.document, parts.context)
        assert offsets is not None, "the probe needs a tokenizer with character offsets"
        copies = [(t.start, t.stop) for t in value_token_spans(sample.document, offsets, sample.expected[0])]
        ranges = plan.leaf_ranges()
        key_leaves = sorted({i for lo, hi in copies for i, (a, b) in enumerate(ranges) if a <= lo < b})
        budget = hm.focus_budget - len(parts.prefix) - len(parts.suffix)
        cells = []
        for rule in RULES:
            order = torch.argsort(scores[rule], descending=True, stable=True).tolist()
            rank = min(order.index(leaf) for leaf in key_leaves) + 1
            chosen = choose_leaves(plan, scores[rule], args.k, budget)
            spans = focus_spans(plan, chosen, args.margin, budget)
            read = any(a <= lo and hi <= b for lo, hi in copies for a, b in spans)
            cells.append(f"{rule}: rank {rank} chose {chosen} read-key {int(read)}")
        print(f"sample {index} depth {sample.depth:.3f} leaves {plan.num_leaves} key copies {copies} in leaves "
              f"{key_leaves}; kept per leaf {counts.int().tolist()} ({time.perf_counter() - started:.0f} s)\n  "
              + "\n  ".join(cells), flush=True)
        print("  sum " + str([round(float(x), 2) for x in asked]) + "\n  neutral "
              + str([round(float(x), 2) for x in background]), flush=True)


if __name__ == "__main__":
    main()
