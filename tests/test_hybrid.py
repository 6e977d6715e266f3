"""The hybrid read path: HOMER's compressed document plus the best leaf read in full, in one cache."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from homer_llm import GenerationConfig, HomerConfig, HomerModel, PromptParts
from homer_llm.engine import append_tokens, drop_last
from homer_llm.hybrid import hybrid_chunk_len, hybrid_context


@pytest.fixture
def hm(tokenizer):
    torch.manual_seed(0)
    model = tiny_model("llama", vocab=len(tokenizer), window=512, layers=4)
    return HomerModel(model, tokenizer, name="tiny", homer=HomerConfig(focus_locator="leaf", focus_margin=8))


def _parts(n_context: int) -> PromptParts:
    gen = torch.Generator().manual_seed(1)
    ctx = torch.randint(5, 60, (n_context,), generator=gen).tolist()
    return PromptParts((1, 2, 3), tuple(ctx), (7, 8, 9, 10))


def test_chunk_len_leaves_room_for_a_leaf_its_margins_and_the_answer():
    chunk = hybrid_chunk_len(8192, 4096, 256)
    assert chunk % 64 == 0 and chunk < 4096
    for P, S in ((0, 0), (40, 30), (500, 200)):  # whatever the prompt's affixes
        c = chunk - P - S
        assert P + c + (c + 512) + S + 256 <= 8192
    assert 2 * (chunk + 64) + 512 + 256 > 8192  # the largest such multiple of 64
    assert hybrid_chunk_len(8192, 1024, 256) == 1024  # a smaller chunk is kept
    with pytest.raises(ValueError, match="cannot hold"):
        hybrid_chunk_len(300, 150, 100)


def test_one_chunk_prompt_is_the_plain_path(hm):
    parts = _parts(60)
    a, b = hybrid_context(hm, parts, answer_room=32), hm.compress(parts)
    assert a.cache_tokens == b.cache_tokens == len(parts)
    torch.testing.assert_close(a.last_logits, b.last_logits)


def test_long_prompt_is_the_compressed_tree_then_the_best_leaf_then_the_question(hm, monkeypatch):
    parts = _parts(1400)
    chosen = {}
    import homer_llm.hybrid as hybrid

    real = hybrid.focus_spans

    def spy(plan, leaves, margin, budget):
        chosen["plan"], chosen["leaves"] = plan, leaves
        spans = real(plan, leaves, margin, budget)
        chosen["spans"] = spans
        return spans

    monkeypatch.setattr(hybrid, "focus_spans", spy)
    out = hybrid_context(hm, parts, answer_room=32)
    plan, spans = chosen["plan"], chosen["spans"]
    assert plan.num_leaves > 1 and len(chosen["leaves"]) == 1
    gathered = [t for lo, hi in spans for t in parts.context[lo:hi]]
    S = len(parts.suffix)
    # positions stay inside the window, with the answer room free
    assert out.next_position == plan.next_position - S + len(gathered) + S <= hm.window - 32
    # the same cache, rebuilt by hand from its pieces, gives the same logits
    tree = HomerModel(hm.model, hm.tokenizer, name="tiny",
                      homer=HomerConfig(chunk_len=plan.chunk_len, focus_locator="leaf", focus_margin=8))
    compressed = tree.compress(parts)
    kv, logits = append_tokens(tree.parts, drop_last(compressed.kv, S),
                               torch.tensor(gathered + list(parts.suffix)), plan.next_position - S)
    assert out.cache_tokens == compressed.cache_tokens - S + len(gathered) + S
    torch.testing.assert_close(out.last_logits, logits)
    text = hm.generate(out, GenerationConfig(max_new_tokens=3)).text
    assert isinstance(text, str)


def test_bad_arguments_name_the_value(hm):
    with pytest.raises(ValueError, match="leaves must be >= 1, got 0"):
        hybrid_context(hm, _parts(1400), leaves=0, answer_room=32)
    with pytest.raises(ValueError, match="margin must be >= 0, got -1"):
        hybrid_context(hm, _parts(1400), margin=-1, answer_room=32)
