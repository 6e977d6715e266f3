"""The lexical locator (``homer_llm.lexical``, ``HomerConfig(focus_locator="lexical")``)."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_model

from homer_llm import HomerConfig, HomerModel, PromptParts
from homer_llm.focus import choose_leaves
from homer_llm.lexical import bm25_scores, lexical_relevance
from homer_llm.schedule import make_plan


def test_bm25_by_hand():
    docs = [[1, 2, 2, 3], [1, 4, 5, 6], [1, 7, 8, 9]]
    scores = bm25_scores(docs, [2, 1, 2, 99])  # repeated and unknown query tokens count once / nothing
    idf2 = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    idf1 = math.log(1 + (3 - 3 + 0.5) / (3 + 0.5))  # a token of every document weighs little
    tf_part = lambda tf: tf * 2.2 / (tf + 1.2)  # equal lengths: no length normalisation  # noqa: E731
    assert scores[0].item() == pytest.approx(idf2 * tf_part(2) + idf1 * tf_part(1), rel=1e-5)
    assert scores[1].item() == pytest.approx(idf1 * tf_part(1), rel=1e-5) == scores[2].item()
    assert bm25_scores(docs, [42]).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="at least one document"):
        bm25_scores([], [1])


def test_lexical_relevance_zeroes_leaves_far_below_the_best():
    plan = make_plan(2, 40, 3, chunk_len=10, cache_len=10, num_layers=8, warmup_layers=1)  # 8 leaves of 5
    context = [5] * 40
    context[17], context[18] = 30, 31  # leaf 3 holds both question words
    context[26] = 30  # leaf 5 one of them
    relevance = lexical_relevance(plan, context, [30, 31, 5])
    # equal lengths: leaf 5's score over leaf 3's is idf(30) / (idf(30) + idf(31)), under one half
    idf30, idf31 = math.log(1 + 6.5 / 2.5), math.log(1 + 7.5 / 1.5)
    assert idf30 / (idf30 + idf31) < 0.5
    assert relevance.argmax().item() == 3 and relevance[3] > 0
    assert all(relevance[i] == 0 for i in (0, 1, 2, 4, 5, 6, 7))
    unfloored = lexical_relevance(plan, context, [30, 31], floor=0.0)
    assert unfloored[5].item() == pytest.approx(unfloored[3].item() * idf30 / (idf30 + idf31), rel=1e-5)
    # a zero score is never read after the best, whatever k; without the floor leaf 5 is read too
    assert choose_leaves(plan, relevance, 3, budget=100) == [3]
    assert choose_leaves(plan, unfloored, 3, budget=100) == [3, 5]
    with pytest.raises(ValueError, match="floor must be in"):
        lexical_relevance(plan, context, [30], floor=1.5)


def _parts(n: int, key_at: int) -> PromptParts:
    gen = torch.Generator().manual_seed(1)
    ctx = torch.randint(5, 60, (n,), generator=gen).tolist()
    ctx[key_at:key_at + 3] = [90, 91, 92]  # the question's words appear once, here
    return PromptParts((1, 2, 3), tuple(ctx), (90, 91, 92, 10))


@pytest.fixture
def lexical_hm(tokenizer):
    torch.manual_seed(0)
    model = tiny_model("llama", vocab=len(tokenizer), window=1024, layers=4)
    return HomerModel(model, tokenizer, name="tiny", homer=HomerConfig(
        focus_leaves=3, focus_keep_document=True, focus_margin=8, focus_locator="lexical"))


def test_the_hybrid_reads_the_leaf_holding_the_questions_words_and_no_other(lexical_hm, monkeypatch):
    import homer_llm.hybrid as hybrid

    seen = {}
    real = hybrid.focus_spans

    def spy(plan, leaves, margin, budget):
        seen["plan"], seen["leaves"] = plan, leaves
        return real(plan, leaves, margin, budget)

    monkeypatch.setattr(hybrid, "focus_spans", spy)
    monkeypatch.setattr(hybrid, "leaf_relevance", lambda *a, **k: pytest.fail("no leaf pass for the lexical locator"))
    parts = _parts(2400, key_at=1500)
    out = lexical_hm.compress(parts)
    ranges = seen["plan"].leaf_ranges()
    holder = next(i for i, (lo, hi) in enumerate(ranges) if lo <= 1500 < hi)
    assert seen["plan"].num_leaves > 3 and seen["leaves"] == [holder]  # k=3, one leaf matches
    assert out.stats.num_leaves == seen["plan"].num_leaves


def test_cached_leaves_answer_a_new_question_as_a_fresh_read(lexical_hm):
    from homer_llm.doc_cache import DocumentCache

    parts = _parts(2400, key_at=1500)
    cache = DocumentCache(mode="leaf", suffix_budget=len(parts.suffix))
    first, hit = cache.get_or_compress(lexical_hm, parts)
    other = PromptParts(parts.prefix, parts.context, (90, 91, 92, 11))
    again, hit2 = cache.get_or_compress(lexical_hm, other)
    assert not hit and hit2
    torch.testing.assert_close(again.last_logits, lexical_hm.compress(other).last_logits, rtol=1e-4, atol=1e-4)


def test_focus_alone_with_the_lexical_locator_needs_no_model_pass_to_locate(tokenizer, monkeypatch):
    torch.manual_seed(0)
    model = tiny_model("llama", vocab=len(tokenizer), window=1024, layers=4)
    hm = HomerModel(model, tokenizer, name="tiny",
                    homer=HomerConfig(focus_leaves=2, focus_margin=0, focus_locator="lexical"))
    monkeypatch.setattr(HomerModel, "bias_table", lambda *a, **k: pytest.fail("no calibration for lexical focus"))
    parts = _parts(2400, key_at=700)
    calls = []
    context = hm.compress(parts, progress=lambda d, t: calls.append((d, t)))
    plan = hm.plan(parts)
    lo, hi = next((lo, hi) for lo, hi in plan.leaf_ranges() if lo <= 700 < hi)
    P, S = len(parts.prefix), len(parts.suffix)
    assert context.kept[P:-S].tolist() == [P + i for i in range(lo, hi)]  # the one matching leaf
    assert calls and calls[-1][0] == calls[-1][1] == hm.parts.num_layers  # the plain read only
    with torch.no_grad():
        reference = model(torch.tensor([[parts.ids[i] for i in context.kept.tolist()]])).logits[0, -1]
    torch.testing.assert_close(context.last_logits, reference, atol=1e-4, rtol=1e-4)


def test_the_adapters_and_clis_accept_the_lexical_locator():
    from homer_agent.cli import build_parser
    from langchain_homer import HomerLLM

    from homer_llm.cli import build_parser as homer_parser

    assert HomerLLM(model="unused", focus_locator="lexical").focus_locator == "lexical"
    assert build_parser().parse_args(["--focus-locator", "lexical"]).focus_locator == "lexical"
    args = homer_parser().parse_args(["ask", "-d", "doc.txt", "--focus-leaves", "1", "--focus-locator", "lexical", "x"])
    assert args.focus_locator == "lexical"
    with pytest.raises(ValueError, match="focus_locator"):
        HomerConfig(focus_locator="bm25")
