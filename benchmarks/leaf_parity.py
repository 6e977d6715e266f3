"""Which leaf held the key, and did the method answer? Passkey verdicts by the needle's leaf (session 12).

HOMER's merges put a left child's tokens before its right sibling's, at the same position ids.
This reads joined ``homer-llm eval`` records (passkey, ``--depths random``), rebuilds every sample
with the eval's own generator and the default model's plan (no forward pass: tokenizer and plan
only), finds the leaf that holds the key's first copy, and prints per method and length the
verdicts for needles in even leaves (left children at the first merge) and odd ones (right
children), with a two-sided Fisher exact test of the pooled 2x2 table.

    .venv/bin/python benchmarks/leaf_parity.py benchmarks/results/eval-cpu-s12/records.jsonl \
        --methods homer,homer-ownleaf,homer-focus,homer-focus-leaf
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from math import comb

from homer_llm import HomerModel
from homer_llm.evaluation.cli import parse_depths
from homer_llm.evaluation.harness import EvalSettings, SampleBank
from homer_llm.evaluation.methods import EvalModel, build_parts, token_offsets, value_token_spans


def fisher_two_sided(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher exact p of the 2x2 table [[a, b], [c, d]] (sum of tables no likelier than it)."""
    n, row, col = a + b + c + d, a + b, a + c

    def p(x: int) -> float:
        return comb(row, x) * comb(n - row, col - x) / comb(n, col)

    observed = p(a)
    return sum(p(x) for x in range(max(0, col - (n - row)), min(row, col) + 1) if p(x) <= observed * (1 + 1e-9))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records")
    ap.add_argument("--methods", default="homer")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    methods = args.methods.split(",")
    if "homer-yarn" in methods:
        ap.error("homer-yarn's tree has its own, longer leaves: only methods on the default plan are read here")
    records = [json.loads(line) for line in open(args.records)]
    records = [r for r in records if r["task"] == "passkey" and r["method"] in methods and r["status"] == "ok"]
    hm = HomerModel.load(None)
    model = EvalModel(hm)
    leaf_of: dict[tuple[int, int], tuple[int, int]] = {}  # (length, index) -> (needle leaf, leaves)
    for length in sorted({r["length"] for r in records}):
        count = 1 + max(r["index"] for r in records if r["length"] == length)
        bank = SampleBank(model, EvalSettings(tasks=("passkey",), methods=("homer",), lengths=(length,),
                                              samples=count, seed=args.seed, depths=parse_depths("random")))
        for index in sorted({r["index"] for r in records if r["length"] == length}):
            sample = bank.get("passkey", length, index)
            parts = build_parts(hm.tokenizer, sample)
            plan = hm.plan(parts)
            offsets = token_offsets(hm.tokenizer, sample.document, parts.context)
            first = value_token_spans(sample.document, offsets, sample.expected[0])[0].start
            leaf = next(i for i, (lo, hi) in enumerate(plan.leaf_ranges()) if lo <= first < hi)
            leaf_of[(length, index)] = (leaf, plan.num_leaves)
    cells: dict[tuple[str, int, int], list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        leaf, leaves = leaf_of[(r["length"], r["index"])]
        if leaves > 1:
            cell = cells[(r["method"], r["length"], leaf % 2)]
            cell[0] += bool(r["correct"])
            cell[1] += 1
    print("| method | length | leaves | needle in an even leaf | in an odd leaf |")
    print("|---|---|---|---|---|")
    for method in methods:
        pooled = [0, 0, 0, 0]
        for length in sorted({key[1] for key in cells if key[0] == method}):
            even, odd = cells[(method, length, 0)], cells[(method, length, 1)]
            leaves = next(n for (ln, _), (_, n) in leaf_of.items() if ln == length)
            print(f"| {method} | {length // 1024}k | {leaves} | {even[0]}/{even[1]} | {odd[0]}/{odd[1]} |")
            pooled = [pooled[0] + even[0], pooled[1] + even[1], pooled[2] + odd[0], pooled[3] + odd[1]]
        p = fisher_two_sided(pooled[0], pooled[1] - pooled[0], pooled[2], pooled[3] - pooled[2])
        print(f"| {method} | pooled | | {pooled[0]}/{pooled[1]} | {pooled[2]}/{pooled[3]} (Fisher p = {p:.2g}) |")


if __name__ == "__main__":
    main()
