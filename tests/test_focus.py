"""Focus (``homer_llm.focus``, ``HomerConfig.focus_leaves``): the tree as a locator, then a plain read."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from homer_llm import GenerationConfig, HomerConfig, HomerModel
from homer_llm.engine import compress
from homer_llm.focus import (
    cache_positions,
    choose_leaves,
    focus_spans,
    focused_parts,
    leaf_attention,
    leaf_relevance,
    question_scores,
    token_leaves,
)
from homer_llm.prompt import PromptParts
from homer_llm.schedule import make_plan

DOC = "lorem ipsum dolor sit amet " * 60  # about 1800 tiny-tokenizer tokens: a 16- or 32-leaf tree


def small_plan():
    """P=2, C=10, S=3 in two leaves of 5: leaf 0 is context 0-4, leaf 1 context 5-9."""
    return make_plan(2, 10, 3, chunk_len=10, cache_len=10, num_layers=4, warmup_layers=1)


def test_positions_and_leaves_of_cache_tokens_by_hand():
    plan = small_plan()
    assert plan.num_leaves == 2 and plan.leaf_ranges() == [(0, 5), (5, 10)] and plan.nominal_leaf == 5
    kept = torch.tensor([0, 1, 2, 4, 8, 9, 12, 13, 14])  # prefix, ctx 0 and 2, ctx 6 and 7, suffix
    # every leaf restarts at P; the suffix sits at P + nominal leaf
    assert cache_positions(plan, kept).tolist() == [0, 1, 2, 4, 3, 4, 7, 8, 9]
    assert token_leaves(plan, kept).tolist() == [-1, -1, 0, 0, 1, 1, -1, -1, -1]


def test_choose_leaves_best_first_within_budget_in_document_order():
    plan = make_plan(2, 40, 3, chunk_len=10, cache_len=10, num_layers=8, warmup_layers=1)
    assert plan.leaf_sizes == (5,) * 8
    attention = torch.tensor([0.1, 0.9, 0.0, 0.5, 0.7, 0.0, 0.0, 0.2])
    assert choose_leaves(plan, attention, 2, budget=100) == [1, 4]
    assert choose_leaves(plan, attention, 3, budget=100) == [1, 3, 4]
    assert choose_leaves(plan, attention, 3, budget=10) == [1, 4]  # the third would overflow
    assert choose_leaves(plan, attention, 2, budget=1) == [1]  # the best leaf is always read
    with pytest.raises(ValueError, match="k must be >= 1"):
        choose_leaves(plan, attention, 0, budget=100)


def test_focus_spans_widen_leaves_within_the_budget_by_hand():
    plan = make_plan(2, 40, 3, chunk_len=10, cache_len=10, num_layers=8, warmup_layers=1)
    assert plan.leaf_ranges()[1] == (5, 10) and plan.leaf_ranges()[4] == (20, 25)
    assert focus_spans(plan, [4, 1], 2, budget=100) == [(3, 12), (18, 27)]  # document order
    # 10 leaf tokens leave 4 of a 14-token budget: one token on each of the four sides
    assert focus_spans(plan, [1, 4], 2, budget=14) == [(4, 11), (19, 26)]
    assert focus_spans(plan, [1, 4], 2, budget=9) == [(5, 10), (20, 25)]  # no room: whole leaves only
    # clipped to the context; overlapping spans merge (and neighbours' margins do not double count)
    assert focus_spans(plan, [0, 1, 7], 3, budget=100) == [(0, 13), (32, 40)]
    assert focus_spans(plan, [0, 1], 0, budget=100) == [(0, 10)]  # margin 0: the leaves themselves
    with pytest.raises(ValueError, match="margin must be >= 0"):
        focus_spans(plan, [1], -1, budget=100)
    with pytest.raises(ValueError, match="at least one leaf"):
        focus_spans(plan, [], 2, budget=100)


def test_focused_parts_keep_affixes_and_the_spans_text():
    parts = PromptParts((100, 101), tuple(range(10)), (200, 201, 202))
    focused, index = focused_parts(parts, [(5, 10)])
    assert focused == PromptParts((100, 101), (5, 6, 7, 8, 9), (200, 201, 202))
    assert [parts.ids[i] for i in index.tolist()] == list(focused.ids)
    focused, index = focused_parts(parts, [(1, 3), (6, 8)])
    assert focused.context == (1, 2, 6, 7)
    assert [parts.ids[i] for i in index.tolist()] == list(focused.ids)


def test_leaf_attention_is_a_share_of_the_upper_layers(tiny_homer):
    parts = tiny_homer.prepare_question(DOC, "which word?")
    plan = tiny_homer.plan(parts)
    assert plan.num_leaves > 2
    ids = torch.tensor(parts.ids)
    bias = tiny_homer.bias_table()
    context = compress(tiny_homer.parts, plan, ids, bias=bias, reread_suffix=True)
    attention = leaf_attention(tiny_homer.parts, plan, context, ids[-len(parts.suffix):], bias)
    upper = tiny_homer.parts.num_layers - tiny_homer.parts.num_layers // 2
    assert attention.shape == (plan.num_leaves,) and bool((attention >= 0).all())
    assert 0 < float(attention.sum()) <= upper + 1e-4  # softmax shares; the prefix takes the rest
    again = leaf_attention(tiny_homer.parts, plan, context, ids[-len(parts.suffix):], bias)
    torch.testing.assert_close(attention, again)
    # the same sums by hand: each upper layer's softmax over the cache, added up per owning leaf
    L = tiny_homer.parts.num_layers
    scores = question_scores(tiny_homer.parts, plan, context, ids[-len(parts.suffix):], bias, range(L // 2, L))
    shares = torch.softmax(scores, dim=1).sum(0).tolist()
    owners = token_leaves(plan, context.kept[: -len(parts.suffix)]).tolist()
    by_hand = [sum(s for s, o in zip(shares, owners, strict=True) if o == leaf) for leaf in range(plan.num_leaves)]
    torch.testing.assert_close(attention, torch.tensor(by_hand, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    # another question read after the same cache: the prompt's suffix is dropped, the new one runs
    suffix = ids[-len(parts.suffix):]
    same = question_scores(tiny_homer.parts, plan, context, suffix, bias, [L - 1], cached_suffix=len(suffix))
    torch.testing.assert_close(same, scores[-1:])
    other = question_scores(tiny_homer.parts, plan, context, suffix[:3], bias, [L - 1], cached_suffix=len(suffix))
    assert other.shape == same.shape and not torch.allclose(other, same)
    torch.testing.assert_close(leaf_attention(tiny_homer.parts, plan, context, suffix, bias, cached_suffix=len(suffix)),
                               attention)
    # a leaf with no token in the cache gets no attention
    owners = set(token_leaves(plan, context.kept).tolist()) - {-1}
    for leaf in set(range(plan.num_leaves)) - owners:
        assert float(attention[leaf]) == 0.0


def test_focus_answers_from_a_plain_read_of_the_chosen_leaves(tokenizer):
    model = tiny_model("llama", vocab=len(tokenizer))
    hm = HomerModel(model, tokenizer, name="tiny-llama",
                    homer=HomerConfig(focus_leaves=2, focus_margin=0, focus_locator="tree"))
    parts = hm.prepare_question(DOC, "which word?")
    plan = hm.plan(parts)
    context = hm.compress(parts)
    P, C, S = len(parts.prefix), len(parts.context), len(parts.suffix)
    kept = context.kept.tolist()
    assert kept[:P] == list(range(P)) and kept[-S:] == list(range(P + C, P + C + S))
    leaves = sorted({int(v) for v in token_leaves(plan, context.kept).tolist()} - {-1})
    assert len(leaves) == 2
    ranges = plan.leaf_ranges()
    assert kept[P:-S] == [P + i for leaf in leaves for i in range(*ranges[leaf])]  # whole leaves, in order
    assert context.cache_tokens == P + sum(plan.leaf_sizes[leaf] for leaf in leaves) + S <= hm.focus_budget
    assert context.stats.input_tokens == len(parts) and context.stats.num_leaves == plan.num_leaves
    # the read is the plain model over those tokens: the same logits as its own forward
    with torch.no_grad():
        reference = model(torch.tensor([[parts.ids[i] for i in kept]])).logits[0, -1]
    torch.testing.assert_close(context.last_logits, reference, atol=1e-4, rtol=1e-4)
    # the chosen leaves are the two the question read afresh attends to most
    bias = hm.bias_table()
    tree = compress(hm.parts, plan, torch.tensor(parts.ids), bias=bias, reread_suffix=True)
    attention = leaf_attention(hm.parts, plan, tree, torch.tensor(parts.suffix), bias)
    assert leaves == sorted(torch.argsort(attention, descending=True)[:2].tolist())
    out = hm.generate(context, GenerationConfig(max_new_tokens=3))
    assert out.token_ids[0] == int(context.last_logits.argmax())
    # the default margin reads the same leaves widened on both sides, within the same budget
    wide = HomerModel(model, tokenizer, name="tiny-llama",
                      homer=HomerConfig(focus_leaves=2, focus_locator="tree")).compress(parts)
    budget = hm.focus_budget - P - S
    spans = focus_spans(plan, leaves, 256, budget)
    assert wide.kept[P:-S].tolist() == [P + i for lo, hi in spans for i in range(lo, hi)]
    assert sum(hi - lo for lo, hi in spans) > sum(plan.leaf_sizes[leaf] for leaf in leaves)
    assert wide.cache_tokens == P + sum(hi - lo for lo, hi in spans) + S <= hm.focus_budget


def test_focus_progress_counts_the_tree_then_the_plain_read(tokenizer):
    hm = HomerModel(tiny_model("llama", vocab=len(tokenizer)), tokenizer, name="t",
                    homer=HomerConfig(focus_leaves=1, focus_locator="tree"))
    parts = hm.prepare_question(DOC, "which word?")
    hm.bias_table()  # a first build of the table is a count of its own (tests/test_calibration.py)
    calls: list[tuple[int, int]] = []
    hm.compress(parts, progress=lambda done, total: calls.append((done, total)))
    tree = sum(node.layer_end - node.layer_start for node in hm.plan(parts).nodes())
    total = tree + hm.parts.num_layers
    assert {t for _, t in calls} == {total} and calls[-1] == (total, total)
    assert [d for d, _ in calls] == list(range(1, total + 1))


def test_focus_leaves_nothing_to_do_on_one_chunk(tokenizer):
    model = tiny_model("llama", vocab=len(tokenizer))
    plain = HomerModel(model, tokenizer, name="t")
    parts = plain.prepare_question("a short document", "q?")
    a = plain.compress(parts)
    for locator in ("tree", "leaf"):
        b = HomerModel(model, tokenizer, name="t", homer=HomerConfig(focus_leaves=2, focus_locator=locator)).compress(parts)
        torch.testing.assert_close(a.last_logits, b.last_logits)
        assert a.cache_tokens == b.cache_tokens == len(parts)


@pytest.mark.parametrize(("value", "exc"), [(-1, ValueError), ("2", TypeError), (True, TypeError), (1.0, TypeError)])
def test_bad_focus_leaves(value, exc):
    with pytest.raises(exc, match="focus_leaves"):
        HomerConfig(focus_leaves=value)
    with pytest.raises(exc, match="focus_margin"):
        HomerConfig(focus_margin=value)


def _relevance_by_hand(hm, plan, ids):
    """leaf_relevance written out with compat calls: each leaf alone, the last token's attention
    share on the leaf's context tokens (softmax of the max-over-heads logits), upper-half layers."""
    from homer_llm import compat
    from homer_llm.significance import last_query_logits

    P, C, S = plan.prefix_len, plan.context_len, plan.suffix_len
    out = []
    for leaf, (lo, hi) in enumerate(plan.leaf_ranges()):
        leaf_ids = torch.cat([ids[:P], ids[P + lo : P + hi], ids[P + C :]])
        pos = torch.cat([torch.arange(P + hi - lo), torch.arange(P + plan.nominal_leaf, P + plan.nominal_leaf + S)])
        hidden = compat.embed(hm.parts, leaf_ids)
        cos, sin = compat.position_embeddings(hm.parts, hidden, pos)
        end = next(n.layer_end for n in plan.nodes() if n.is_leaf and n.leaf_start == leaf)
        values = []
        for index in range(end):
            h_last = hidden[:, -1:]
            hidden, (k, _) = compat.run_layer(hm.parts, index, hidden, (cos, sin), None)
            if index >= end // 2:
                q = compat.last_query(hm.parts, index, h_last, (cos[:, -1:], sin[:, -1:]))
                a = torch.softmax(last_query_logits(q, k, compat.attention_scaling(hm.parts, index)), 0)
                values.append(float(a[P : P + hi - lo].sum()))
        out.append(sum(values) / len(values))
    return torch.tensor(out)


@torch.inference_mode()
def test_leaf_relevance_reads_each_leaf_alone(tiny_homer):
    parts = tiny_homer.prepare_question(DOC, "which word?")
    plan = tiny_homer.plan(parts)
    ids = torch.tensor(parts.ids)
    calls = []
    relevance = leaf_relevance(tiny_homer.parts, plan, ids, lambda d, t: calls.append((d, t)))
    assert relevance.shape == (plan.num_leaves,) and plan.num_leaves > 2
    assert bool(((relevance > 0) & (relevance < 1)).all())  # shares of one softmax
    torch.testing.assert_close(relevance, _relevance_by_hand(tiny_homer, plan, ids), atol=1e-5, rtol=1e-4)
    assert calls[-1] == (plan.leaf_passes, plan.leaf_passes) and plan.leaf_passes < plan.layer_passes
    # no merges: changing the text of leaf 1 changes its number and no other leaf's
    lo, hi = plan.leaf_ranges()[1]
    other = ids.clone()
    other[len(parts.prefix) + lo : len(parts.prefix) + hi] = torch.tensor(parts.ids[len(parts.prefix) + lo:
                                                                                    len(parts.prefix) + hi]).flip(0)
    changed = leaf_relevance(tiny_homer.parts, plan, other)
    assert not torch.isclose(changed[1], relevance[1])
    keep = [i for i in range(plan.num_leaves) if i != 1]
    torch.testing.assert_close(changed[keep], relevance[keep])


def test_the_leaf_locator_needs_no_calibration_table(tokenizer, monkeypatch):
    """The leaf locator ranks by raw attention shares: focus with it never builds or loads the
    table (the tree locator does, for the pruned tree)."""
    model = tiny_model("llama", vocab=len(tokenizer))
    hm = HomerModel(model, tokenizer, name="tiny-llama", homer=HomerConfig(focus_leaves=2, focus_locator="leaf"))

    def no_table():
        raise AssertionError("bias_table called")

    monkeypatch.setattr(hm, "bias_table", no_table)
    parts = hm.prepare_question(DOC, "which word?")
    assert hm.plan(parts).num_leaves > 1
    context = hm.compress(parts)
    assert context.cache_tokens <= hm.focus_budget


def test_focus_with_the_leaf_locator_reads_the_leaves_it_ranks_first(tokenizer):
    model = tiny_model("llama", vocab=len(tokenizer))
    hm = HomerModel(model, tokenizer, name="tiny-llama",
                    homer=HomerConfig(focus_leaves=2, focus_margin=0, focus_locator="leaf"))
    parts = hm.prepare_question(DOC, "which word?")
    plan = hm.plan(parts)
    calls = []
    context = hm.compress(parts, progress=lambda d, t: calls.append((d, t)))
    relevance = leaf_relevance(hm.parts, plan, torch.tensor(parts.ids))
    best = sorted(torch.argsort(relevance, descending=True)[:2].tolist())
    P, S = len(parts.prefix), len(parts.suffix)
    ranges = plan.leaf_ranges()
    assert context.kept[P:-S].tolist() == [P + i for leaf in best for i in range(*ranges[leaf])]
    total = plan.leaf_passes + hm.parts.num_layers  # the leaves, then the plain read
    assert calls[-1] == (total, total) and all(t == total for _, t in calls)
    with torch.no_grad():
        reference = model(torch.tensor([[parts.ids[i] for i in context.kept.tolist()]])).logits[0, -1]
    torch.testing.assert_close(context.last_logits, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("value", ["root", "", None])
def test_bad_focus_locator(value):
    with pytest.raises(ValueError, match="focus_locator"):
        HomerConfig(focus_locator=value)
