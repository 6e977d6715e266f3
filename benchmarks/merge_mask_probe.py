"""Probe: do HOMER's right children lose because, after merges, their tokens attend to a sibling
at the same position ids? (session 12)

On the drawn-depth passkey records of sessions 7-11, HOMER's answers were right on 29 of 32
samples whose needle sat in an even-numbered leaf (a left child at the first merge) and on 13 of
28 in an odd one, and at 8x most misses kept every digit of the key in the cache. In a merged
node the right child's context tokens come after the left child's, which carry the same position
ids, and attend to them; the left child's tokens see only their own leaf. This probe answers each
chosen sample of ``homer-llm eval`` from two trees:

- ``base``: the engine's tree (the eval's ``homer`` method: calibrated, question read afresh);
- ``own-leaf``: the same tree, except that in every merged node a context token attends only to
  the prefix and to the surviving tokens of its own leaf; the suffix (the question) still attends
  to everything, so pruning and the answer still see the whole document (the engine's
  ``own_leaf``, ``HomerConfig.merge_attention="own-leaf"``; this probe first carried its own copy of
  that mask, the one sample recorded in session 12 ran with it).

    .venv/bin/python benchmarks/merge_mask_probe.py --length 64k --samples 2,3,4,5
"""

from __future__ import annotations

import time

import torch
from probe_samples import load_samples, sample_parser

from homer_llm.engine import TreePass
from homer_llm.evaluation.methods import build_parts, needle_kept
from homer_llm.evaluation.tasks import QA_TASKS


def main() -> None:
    ap = sample_parser(__doc__, length="64k", samples="0", depths="random")
    ap.add_argument("--trees", default="own-leaf", help="comma-separated: base, own-leaf")
    args = ap.parse_args()
    hm, model, samples = load_samples(args)
    task = QA_TASKS["passkey"]
    bias = hm.bias_table()
    own_leaf = {"base": False, "own-leaf": True}
    for index, sample in samples:
        parts = build_parts(hm.tokenizer, sample)
        plan = hm.plan(parts)
        ids = torch.tensor(parts.ids, dtype=torch.long)
        config = model.generation_config(sample)
        cells = []
        for name in args.trees.split(","):
            start = time.perf_counter()
            with torch.inference_mode():
                context = TreePass(hm.parts, plan, ids, bias, None, None, None, reread=True,
                                   own_leaf=own_leaf[name]).finish(start)
            text = hm.generate(context, config).text
            P, C = len(parts.prefix), len(parts.context)
            kept_ctx = {int(i) - P for i in context.kept if P <= int(i) < P + C}
            kept = needle_kept(hm.tokenizer, sample.document, parts.context, sample.expected, kept_ctx)
            cells.append(f"{name}={int(task.check(sample, text))} {text[:24]!r} kept {kept} "
                         f"({time.perf_counter() - start:.0f} s)")
        print(f"sample {index} depth {sample.depth:.3f} key {sample.expected[0]} leaves {plan.num_leaves}: "
              + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
