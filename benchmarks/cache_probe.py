"""Probe: does a smaller, better-chosen final cache help the question copy the key at 8x?

Session 9 found that at 64k (16 leaves) HOMER often keeps the whole needle in its 4096-token
cache and still answers "1." or the key's first digit. After the merges, tokens of 16 leaves
share every position id, so each needle token sits among ~16 others at the same distance from
the question. This probe compresses each chosen passkey sample of ``homer-llm eval`` ONCE (same
generator, seed and depths; question read afresh, the default) and answers from several caches
cut from that one compression, all with the question read afresh after the cut:

- ``base``: the engine's cache as is (what ``homer-llm eval`` answers from);
- ``rootN``: only the N best context tokens by the root's own significance (the averaged
  question's last token at the root's last layer): exactly what ``cache_len = P + N + S``
  would give, since the root prunes after its last layer;
- ``freshN``: only the N best context tokens by the significance of the question read afresh
  (its last token's calibrated logits at the last layer, against the whole cache);
- ``leaf`` (diagnostic, uses the answer's position): only the context tokens from the leaf that
  holds the needle: no other leaf's tokens at the same positions;
- ``best-mass-all`` / ``best-mass-upper``: only the tokens of the one leaf that draws the most
  attention from the question read afresh (softmax of its calibrated logits, max over heads,
  summed over all layers / the upper half), and ``top2-mass-upper``: the two best leaves;
- ``reread-topK``: the plain model (no HOMER) over the prefix, the WHOLE text of the K best leaves
  by that upper-half mass (in document order) and the question: the tree used as a retriever.

The line also gives the rank of the needle's leaf (1 = first) under each leaf score: the max
token significance at the root or for the fresh question, and the attention masses.

    .venv/bin/python benchmarks/cache_probe.py --length 64k --samples 2,3 --keep 2048,1024

Prints one line per sample: depth, needle kept, and each cache's answer and verdict.
"""

from __future__ import annotations

import time

import torch
from probe_samples import int_list, load_samples, sample_parser

from homer_llm.engine import CompressedContext, TreePass, append_tokens, drop_last
from homer_llm.evaluation.methods import EvalModel, build_parts
from homer_llm.evaluation.runner import plain_context
from homer_llm.evaluation.tasks import QA_TASKS
from homer_llm.focus import focus_spans, focused_parts, question_scores
from homer_llm.generation import generate
from homer_llm.model import HomerModel


class RecordingPass(TreePass):
    """A TreePass that also keeps the root's significance of every token it held before its cut."""

    root_scores: dict[int, float]

    def prune_node(self, state, node, hidden_last, pos_emb):
        if node is self.plan.root:
            scores = self.scores(state, node.layer_end - 1, hidden_last, pos_emb)
            origin = state.origin.tolist()
            self.root_scores = dict(zip(origin, scores.tolist(), strict=True))
        return super().prune_node(state, node, hidden_last, pos_emb)


def subset(kv, keep: torch.Tensor):
    return tuple((k[:, :, keep], v[:, :, keep]) for k, v in kv)


@torch.inference_mode()
def probe(hm: HomerModel, model: EvalModel, bias, sample, keeps: list[int]):
    """One compression of ``sample``, answered from every cut cache.

    Returns (answers by cache name, rank of the needle's leaf by leaf score, seconds, needle leaf, leaves).
    """
    parts = build_parts(hm.tokenizer, sample)
    config = model.generation_config(sample)
    ids = torch.tensor(parts.ids, dtype=torch.long)
    plan = hm.plan(parts)
    P, C, S = len(parts.prefix), len(parts.context), len(parts.suffix)
    start = time.perf_counter()
    tree = RecordingPass(hm.parts, plan, ids, bias, None, None, None, reread=True)
    context = tree.finish(start)
    seconds = time.perf_counter() - start
    kept = context.kept.tolist()  # prompt index of every cache token
    body = drop_last(context.kv, S)
    n_body = len(kept) - S
    ctx_rows = [i for i in range(n_body) if P <= kept[i] < P + C]
    suffix = ids[-S:]
    fresh_all = question_scores(hm.parts, plan, context, suffix, bias, range(hm.parts.num_layers))
    fresh = fresh_all[-1]
    mass = torch.softmax(fresh_all, dim=1)  # [L, F']: each layer's attention share of every token
    # needle's leaf: the leaf range holding the answer's first occurrence in the document
    at = sample.document.find(sample.expected[0])
    enc = hm.tokenizer(sample.document, add_special_tokens=False, return_offsets_mapping=True)
    token_at = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > at)
    leaf = next((lo, hi) for lo, hi in plan.leaf_ranges() if lo <= token_at < hi)

    def answer(rows: list[int]) -> str:
        keep = torch.tensor(sorted(set(range(P)) | set(rows)), dtype=torch.long)
        kv, logits = append_tokens(hm.parts, subset(body, keep), suffix, plan.next_position - S)
        cut = CompressedContext(kv, plan.next_position, logits, context.stats, None)
        return hm.generate(cut, config).text

    answers = {"base": hm.generate(context, config).text}
    picks: dict[str, int] = {}
    for n in keeps:
        by_root = sorted(ctx_rows, key=lambda i: tree.root_scores[kept[i]], reverse=True)[:n]
        answers[f"root{n}"] = answer(by_root)
        by_fresh = sorted(ctx_rows, key=lambda i: float(fresh[i]), reverse=True)[:n]
        answers[f"fresh{n}"] = answer(by_fresh)
    answers["leaf"] = answer([i for i in ctx_rows if leaf[0] <= kept[i] - P < leaf[1]])
    ranges = plan.leaf_ranges()

    def leaf_of(i: int) -> int:
        return next(j for j, (lo, hi) in enumerate(ranges) if lo <= kept[i] - P < hi)

    needle_leaf = ranges.index(leaf)
    owner = torch.tensor([leaf_of(i) for i in ctx_rows])
    rows_t = torch.tensor(ctx_rows)
    leaf_scores = {
        "max-root": torch.zeros(len(ranges)).index_reduce_(
            0, owner, torch.tensor([tree.root_scores[kept[i]] for i in ctx_rows]), "amax", include_self=False),
        "max-fresh": torch.zeros(len(ranges)).index_reduce_(0, owner, fresh[rows_t], "amax", include_self=False),
        "mass-last": torch.zeros(len(ranges)).index_add_(0, owner, mass[-1, rows_t]),
        "mass-all": torch.zeros(len(ranges)).index_add_(0, owner, mass[:, rows_t].sum(0)),
        "mass-upper": torch.zeros(len(ranges)).index_add_(0, owner, mass[mass.shape[0] // 2:, rows_t].sum(0)),
    }
    for name, per_leaf in leaf_scores.items():
        order = torch.argsort(per_leaf, descending=True).tolist()
        picks[name] = order.index(needle_leaf) + 1  # rank of the needle's leaf, 1 = best
    for name in ("mass-all", "mass-upper"):
        best = int(torch.argmax(leaf_scores[name]))
        answers[f"best-{name}"] = answer([i for i in ctx_rows if leaf_of(i) == best])
    order = torch.argsort(leaf_scores["mass-upper"], descending=True).tolist()
    answers["top2-mass-upper"] = answer([i for i in ctx_rows if leaf_of(i) in order[:2]])
    for k in (1, 2):
        # the plain model over the located leaves' whole text (not just their kept tokens), in
        # document order, with the same prefix and question: HOMER's tree as a retriever
        focused, _ = focused_parts(parts, focus_spans(plan, order[:k], 0, 0))  # whole leaves, as in s10
        plain = plain_context(hm.parts, focused.ids)
        answers[f"reread-top{k}"] = generate(hm.parts, hm.tokenizer, plain, config, hm.eos_ids).text
    return answers, picks, seconds, needle_leaf, len(ranges)


def main() -> None:
    ap = sample_parser(__doc__, length="64k", samples="0", depths="random")
    ap.add_argument("--keep", default="2048,1024", help="context tokens kept by rootN / freshN")
    args = ap.parse_args()
    hm, model, samples = load_samples(args)
    keeps = int_list(args.keep)
    task = QA_TASKS["passkey"]
    bias = hm.bias_table()
    for index, sample in samples:
        answers, picks, seconds, needle_leaf, leaves = probe(hm, model, bias, sample, keeps)
        verdicts = " ".join(f"{name}={int(task.check(sample, text))} {text[:24]!r}" for name, text in answers.items())
        ranks = ",".join(f"{k}={v}" for k, v in picks.items())
        print(f"sample {index} depth {sample.depth:.3f} key {sample.expected[0]} ({seconds:.0f} s) needle leaf "
              f"{needle_leaf}/{leaves} ranked {ranks}: {verdicts}",
              flush=True)


if __name__ == "__main__":
    main()
