"""Span-aware pruning: word spans, span pooling, the lexicographic keep rule, and the engine path."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from homer_llm import HomerConfig, HomerModel
from homer_llm.engine import TreePass, compress
from homer_llm.schedule import make_plan
from homer_llm.significance import keep_indices, pool_by_span
from homer_llm.spans import word_spans
from homer_llm.state import ChunkState, merge, prune


class PieceTokenizer:
    """Decodes ids to fixed multi-character pieces, like a subword vocabulary."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


def test_word_spans_on_subword_pieces():
    pieces = [" The", " pass", " key", " is", " 74", "367", "14", ".", " gr", "ass", "\n", "x", "", "é", "\ufffd"]
    tok = PieceTokenizer(pieces)
    ids = list(range(len(pieces)))
    spans = word_spans(tok, ids).tolist()
    # " 74" "367" "14" is one number; "." its own span; " gr" "ass" one word; "\n" ends a span;
    # an empty piece (special token) is its own span; a non-ASCII letter and a byte piece join
    assert spans == [0, 1, 2, 3, 4, 4, 4, 5, 6, 6, 7, 8, 9, 10, 10]
    assert spans == sorted(spans)


def test_word_spans_on_a_character_tokenizer(tokenizer):
    ids = tokenizer("ab 12.5 c!d", add_special_tokens=False)["input_ids"]
    #        a  b  ' ' 1  2  .  5  ' ' c  !  d
    assert word_spans(tokenizer, ids).tolist() == [0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 8]


def test_pool_by_span_takes_the_best_score_of_each_span():
    scores = torch.tensor([1.0, 5.0, 2.0, -1.0, 3.0, 0.5])
    spans = torch.tensor([7, 7, 7, 2, 9, 9])  # any ids; equal ids form one span
    assert pool_by_span(scores, spans).tolist() == [5.0, 5.0, 5.0, -1.0, 3.0, 3.0]


def test_keep_indices_breaks_ties_by_the_second_key():
    # prefix 1, context 6, suffix 1; pooled context scores tie within spans
    pooled = torch.tensor([0.0, 5.0, 5.0, 5.0, 3.0, 3.0, 1.0, 0.0])
    own = torch.tensor([0.0, 5.0, 1.0, 2.0, 3.0, 0.0, 1.0, 0.0])
    assert keep_indices(pooled, 1, 1, 3, own).tolist() == [0, 1, 2, 3, 7]  # the whole top span
    # 4 kept: the top span, then the better token of the span cut at the boundary
    assert keep_indices(pooled, 1, 1, 4, own).tolist() == [0, 1, 2, 3, 4, 7]
    # without a tiebreak the rule is the plain top-k
    assert keep_indices(own, 1, 1, 2).tolist() == [0, 1, 4, 7]


class _FixedScores(TreePass):
    def __init__(self, scores, spans, n):
        plan = make_plan(1, n - 2, 1, chunk_len=16, cache_len=16, num_layers=2)
        super().__init__(None, plan, torch.zeros(n, dtype=torch.long), None, None, None, spans)
        self.fixed = scores

    def scores(self, state, layer, hidden_last, pos_emb):
        return self.fixed[state.origin]


def _state(n, p, s):
    return ChunkState(torch.arange(n, dtype=torch.float32).view(1, n, 1), torch.arange(n), (), p, s, torch.arange(n))


def test_prune_node_keeps_or_drops_whole_words():
    # prefix 1 | context: words [1,2,3] [4,5] [6] [7,8] | suffix 1
    spans = torch.tensor([0, 1, 1, 1, 2, 2, 3, 4, 4, 5])
    own = torch.tensor([0.0, 0.1, 4.0, 0.2, 1.0, 1.5, 3.0, 0.3, 0.4, 0.0])
    node = SimpleNamespace(keep_ctx=4, layer_end=1)
    by_word = _FixedScores(own, spans, 10).prune_node(_state(10, 1, 1), node, None, None)
    assert by_word.origin.tolist() == [0, 1, 2, 3, 6, 9]  # word [1,2,3] (best 4.0) and word [6] (3.0)
    by_token = _FixedScores(own, None, 10).prune_node(_state(10, 1, 1), node, None, None)
    assert by_token.origin.tolist() == [0, 2, 4, 5, 6, 9]


def test_origin_follows_prune_and_merge():
    left, right = _state(6, 1, 1), _state(6, 1, 1)
    right = ChunkState(right.hidden, right.positions, (), 1, 1, right.origin + 100)
    merged = merge(prune(left, torch.tensor([0, 2, 3, 5])), prune(right, torch.tensor([0, 1, 4, 5])))
    assert merged.origin.tolist() == [0, 2, 3, 101, 104, 5]


def _spans_like(n, kind):
    return torch.arange(n) if kind == "singletons" else torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("kind", ["singletons", "one-span"])
def test_degenerate_spans_equal_token_pruning(kind):
    """Every token its own span, or the whole prompt one span (the tiebreak then decides): both
    must reproduce token-level HOMER exactly, through a 4-leaf tree."""
    from tiny import tiny_model

    model = tiny_model("llama", vocab=100, window=256)
    from homer_llm import compat

    parts = compat.model_parts(model)
    P, C, S = 6, 400, 5
    ids = torch.randint(5, 100, (P + C + S,), generator=torch.Generator().manual_seed(3))
    plan = make_plan(P, C, S, chunk_len=128, cache_len=128, num_layers=6, warmup_layers=2)
    assert plan.num_leaves == 4
    bias = torch.linspace(0, 3, 128).repeat(6, 1)
    ref = compress(parts, plan, ids, bias=bias)
    got = compress(parts, plan, ids, bias=bias, spans=_spans_like(len(ids), kind))
    for (k1, v1), (k2, v2) in zip(ref.kv, got.kv, strict=True):
        torch.testing.assert_close(k1, k2)
        torch.testing.assert_close(v1, v2)


def test_word_pruning_through_homer_model(tokenizer):
    from tiny import tiny_model

    model = tiny_model("llama", vocab=len(tokenizer))
    token = HomerModel(model, tokenizer, name="t")
    word = HomerModel(model, tokenizer, name="t", homer=HomerConfig(prune_unit="word", pruning="uncalibrated"))
    document = " ".join(f"Box {i} holds {1000 + 37 * i} coins." for i in range(40))
    parts = word.prepare_question(document, "How many coins are in box 7?")
    assert word.plan(parts).num_leaves > 1
    assert token.spans_for(torch.tensor(parts.ids)) is None
    spans = word.spans_for(torch.tensor(parts.ids))
    assert spans.shape == (len(parts.ids),)
    ctx = word.compress(parts)
    assert ctx.cache_tokens == word.plan(parts).root.keep_ctx + len(parts.prefix) + len(parts.suffix)


def test_prune_unit_is_validated():
    with pytest.raises(ValueError, match="prune_unit"):
        HomerConfig(prune_unit="sentence")
    with pytest.raises(ValueError, match="spans"):
        plan = make_plan(1, 3, 1, chunk_len=16, cache_len=16, num_layers=2)
        TreePass(None, plan, torch.zeros(5, dtype=torch.long), None, None, None, torch.zeros(4, dtype=torch.long))
