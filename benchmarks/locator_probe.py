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
- ``ratio``: ``sum`` over that neutral sum;
- ``leaf-mass`` (session 12): inside each leaf's own pass, before any merge (so no sibling is
  in the way), the share of the question's last-token attention (softmax of the max-over-heads
  logits) on the leaf's context tokens rather than its prefix and suffix, averaged over the upper
  half of the leaf's layers (``focus_locator="leaf"`` since session 13: ``focus.leaf_relevance``);
  ``leaf-last``: the same at the leaf's last layer only;
- ``leaf-lse``: the logsumexp of the calibrated significance of the leaf's context tokens (the
  pruning rule's scores), averaged over the same layers (the leaf locator's rule in session 12).

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

from homer_llm import HomerConfig, compat
from homer_llm.engine import TreePass
from homer_llm.evaluation.methods import build_parts, token_offsets, value_token_spans
from homer_llm.focus import choose_leaves, focus_spans, leaf_attention, token_leaves
from homer_llm.significance import calibrated_scores, last_query_logits

RULES = ("sum", "mean", "contrast", "ratio", "leaf-mass", "leaf-last", "leaf-lse")


class RecordingPass(TreePass):
    """The engine's tree pass, recording per leaf and layer the question's attention inside the leaf."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.records: dict[tuple[int, int], tuple[float, float]] = {}  # (leaf, layer) -> (mass, lse)

    def observe(self, node, index, hidden_last, kv, state, pos_emb) -> None:
        if node.left is not None:
            return
        cos, sin = pos_emb
        query = compat.last_query(self.parts, index, hidden_last, (cos[:, -1:], sin[:, -1:]))
        logits = last_query_logits(query, kv[0], compat.attention_scaling(self.parts, index))
        body = slice(state.prefix_len, state.length - state.suffix_len)
        mass = float(torch.softmax(logits, 0)[body].sum())
        scores = calibrated_scores(logits, state.positions, self.plan.next_position - 1,
                                   None if self.bias is None else self.bias[index])
        self.records[(node.leaf_start, index)] = (mass, float(torch.logsumexp(scores[body], 0)))

    def leaf_rules(self) -> dict[str, torch.Tensor]:
        """[N] per rule: leaf-mass and leaf-lse over the upper half of each leaf's layers, leaf-last."""
        leaves = sorted({leaf for leaf, _ in self.records})
        out = {"leaf-mass": [], "leaf-last": [], "leaf-lse": []}
        for leaf in leaves:
            layers = sorted(layer for other, layer in self.records if other == leaf)
            upper = layers[len(layers) // 2:]
            out["leaf-mass"].append(sum(self.records[(leaf, i)][0] for i in upper) / len(upper))
            out["leaf-lse"].append(sum(self.records[(leaf, i)][1] for i in upper) / len(upper))
            out["leaf-last"].append(self.records[(leaf, layers[-1])][0])
        return {name: torch.tensor(values) for name, values in out.items()}


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
        tree_pass = RecordingPass(hm.parts, plan, torch.tensor(parts.ids), bias, None, None)
        with torch.inference_mode():
            tree = tree_pass.finish(time.perf_counter())
        S = len(parts.suffix)
        owner = token_leaves(plan, tree.kept[:-S])
        ctx = owner >= 0
        counts = torch.bincount(owner[ctx], minlength=plan.num_leaves).float()

        asked, background = (leaf_attention(hm.parts, plan, tree, torch.tensor(suffix), bias, cached_suffix=S)
                             for suffix in (parts.suffix, neutral.suffix))
        scores = {"sum": asked, "mean": asked / counts.clamp(min=1), "contrast": asked - background,
                  "ratio": asked / background.clamp(min=1e-6), **tree_pass.leaf_rules()}
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
        for name in ("leaf-mass", "leaf-lse"):
            print(f"  {name} " + str([round(float(x), 3) for x in scores[name]]), flush=True)


if __name__ == "__main__":
    main()
