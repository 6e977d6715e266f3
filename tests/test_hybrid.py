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


# ---------------------------------------------------------------------- as the engine's read path
@pytest.fixture
def hybrid_hm(tokenizer):
    torch.manual_seed(0)
    model = tiny_model("llama", vocab=len(tokenizer), window=1024, layers=4)
    return HomerModel(model, tokenizer, name="tiny",
                      homer=HomerConfig(focus_leaves=1, focus_keep_document=True, focus_margin=8))


def test_config_makes_the_hybrid_the_engines_read_path(hybrid_hm):
    hm = hybrid_hm
    assert hm.chunk_len == hybrid_chunk_len(1024, 512, 8) < 512  # one leaf and its margins fit after the cache
    assert hm.homer.merge_attention == "own-leaf"  # "auto": the hybrid keeps the tree, with own-leaf merges
    parts = _parts(2400)
    done = []
    out = hm.compress(parts, progress=lambda d, t: done.append((d, t)))
    assert done and done[-1][0] == done[-1][1]
    plain = hm.with_config(HomerConfig(focus_margin=8))  # the free function on an engine without focus
    ref = hybrid_context(plain, parts, leaves=1, margin=8)
    assert out.cache_tokens == ref.cache_tokens and out.next_position == ref.next_position
    torch.testing.assert_close(out.last_logits, ref.last_logits)
    assert out.stats.num_leaves > 1
    # a question the whole document answers still reads every leaf's surviving tokens: more than a leaf
    assert out.cache_tokens > hm.chunk_len


def test_keep_document_is_checked_and_keyed(tokenizer, hybrid_hm):
    from homer_llm.doc_cache import _homer_key

    with pytest.raises(TypeError, match="focus_keep_document must be a bool, got 'yes'"):
        HomerConfig(focus_leaves=1, focus_keep_document="yes")
    assert "focus_keep_document" not in _homer_key(HomerConfig(focus_leaves=1))  # older keys stay hits
    assert _homer_key(hybrid_hm.homer)["focus_keep_document"] is True
    with pytest.raises(ValueError, match="hybrid read's chunk_len"):
        HomerModel(hybrid_hm.model, tokenizer, name="tiny",
                   homer=HomerConfig(focus_leaves=1, focus_keep_document=True, cache_len=500))


def test_document_cache_reuses_the_leaves(hybrid_hm):
    from homer_llm.doc_cache import DocumentCache

    parts = _parts(2400)
    S = len(parts.suffix)
    fresh = hybrid_hm.compress(parts)
    # "leaf" mode: the hybrid read from cached leaves; with the suffix budget equal to S the plan
    # is the fresh one, so the cache and the logits are the fresh hybrid's
    cache = DocumentCache(mode="leaf", suffix_budget=S)
    first, hit = cache.get_or_compress(hybrid_hm, parts)
    assert not hit and first.cache_tokens == fresh.cache_tokens and first.next_position == fresh.next_position
    torch.testing.assert_close(first.last_logits, fresh.last_logits, rtol=1e-4, atol=1e-4)
    other = PromptParts(parts.prefix, parts.context, (11, 12, 13, 14))
    again, hit = cache.get_or_compress(hybrid_hm, other)
    assert hit  # another question on the same document: the leaves are reused
    torch.testing.assert_close(again.last_logits, hybrid_hm.compress(other).last_logits, rtol=1e-4, atol=1e-4)
    # "agnostic" mode (the default) has nothing question-free to share with a read the question
    # chooses: it caches the leaves, as "leaf" mode does
    cache = DocumentCache(suffix_budget=S)
    first, hit = cache.get_or_compress(hybrid_hm, parts)
    second, hit2 = cache.get_or_compress(hybrid_hm, other)
    assert not hit and hit2 and cache.stats()["entries"] == 1


def test_a_question_on_cached_leaves_reports_progress(hybrid_hm):
    from homer_llm.doc_cache import DocumentCache

    parts = _parts(2400)
    cache = DocumentCache(mode="leaf", suffix_budget=len(parts.suffix))
    built: list[tuple[int, int]] = []
    cache.get_or_compress(hybrid_hm, parts, progress=lambda d, t: built.append((d, t)))
    asked: list[tuple[int, int]] = []
    other = PromptParts(parts.prefix, parts.context, (11, 12, 13, 14))
    _, hit = cache.get_or_compress(hybrid_hm, other, progress=lambda d, t: asked.append((d, t)))
    # the miss reports building the leaves, then the merges over them; the hit, the merges only
    totals = list(dict.fromkeys(t for _, t in built))
    assert hit and len(totals) == 2 and built[-1][0] == built[-1][1] == totals[1] == asked[-1][1]
    assert asked and asked[-1][0] == asked[-1][1] and [d for d, _ in asked] == sorted(d for d, _ in asked)


def test_both_adapters_pass_keep_document():
    langchain_homer = pytest.importorskip("langchain_homer", reason="needs the langchain extra installed")
    llama = pytest.importorskip("llama_index.llms.homer", reason="needs the llamaindex extra installed")
    lc = langchain_homer.HomerLLM(focus_leaves=1, focus_keep_document=True)
    li = llama.HomerLLM(focus_leaves=1, focus_keep_document=True)
    assert lc._homer_config() == li.homer_config() == HomerConfig(focus_leaves=1, focus_keep_document=True)
    assert lc._identifying_params["focus_keep_document"] is True


def test_cli_refuses_keep_document_without_focus(capsys, tmp_path):
    from homer_llm.cli import main

    doc = tmp_path / "doc.txt"
    doc.write_text("Some text.")
    assert main(["ask", "--document", str(doc), "q", "--focus-keep-document"]) == 2
    err = capsys.readouterr().err
    assert "--focus-keep-document needs --focus-leaves K with K >= 1, got --focus-leaves 0" in err
    assert "Traceback" not in err


def _leaves_read(monkeypatch) -> list[list[int]]:
    """The leaves of every hybrid read from now on, in order (a spy on ``hybrid.focus_spans``)."""
    import homer_llm.hybrid as hybrid

    chosen: list[list[int]] = []
    real = hybrid.focus_spans
    monkeypatch.setattr(hybrid, "focus_spans", lambda plan, leaves, margin, budget: (
        chosen.append(list(leaves)) or real(plan, leaves, margin, budget)))
    return chosen


def test_more_leaves_only_where_they_fit_the_window(tokenizer, monkeypatch):
    """The adapters ask for up to 3 leaves: on a window the hybrid chunk fills (one leaf fits after
    the tree's cache) that is the one-leaf read; with chunks far smaller than the window, 3 leaves."""
    chosen = _leaves_read(monkeypatch)
    torch.manual_seed(0)
    model = tiny_model("llama", vocab=len(tokenizer), window=1024, layers=4)
    parts = _parts(2400)
    tight = {k: HomerModel(model, tokenizer, name="tiny", homer=HomerConfig(
        focus_leaves=k, focus_keep_document=True, focus_margin=8)) for k in (1, 3)}
    one, three = (tight[k].compress(parts) for k in (1, 3))
    assert len(chosen[0]) == len(chosen[1]) == 1
    torch.testing.assert_close(one.last_logits, three.last_logits)
    roomy = HomerModel(model, tokenizer, name="tiny", homer=HomerConfig(
        chunk_len=200, focus_leaves=3, focus_keep_document=True, focus_margin=8))
    roomy.compress(_parts(1000))
    assert len(chosen[2]) == 3


def test_later_leaves_take_at_most_half_the_window(tokenizer, monkeypatch):
    """Three leaves fit the budget, but with their margins they would take more than half the
    window: two are read (the best two), and one whatever k on a default-model-like window."""
    import homer_llm.hybrid as hybrid
    from homer_llm.hybrid import leaves_to_read

    chosen = _leaves_read(monkeypatch)
    torch.manual_seed(0)
    model = tiny_model("llama", vocab=len(tokenizer), window=1024, layers=4)
    hm = HomerModel(model, tokenizer, name="tiny", homer=HomerConfig(focus_leaves=3, focus_keep_document=True,
                                                                        focus_margin=8))
    parts = _parts(1300)
    plan = hybrid.tree_engine(hm, hm.chunk_len).plan(parts)
    size = plan.leaf_sizes[0] + 16
    budget = hm.window - (plan.next_position - len(parts.suffix)) - len(parts.suffix) - 256
    assert 3 * plan.leaf_sizes[0] <= budget and 2 * size <= 512 < 3 * size  # what the test is about
    hm.compress(parts)
    assert len(chosen[-1]) == 2
    relevance = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.0, 0.7, 0.3, 0.4])[: plan.num_leaves]
    assert leaves_to_read(plan, relevance, 3, 8, budget, 1024) == [1, 3]
    assert leaves_to_read(plan, relevance, 3, 8, budget, 4096) == [1, 3, 5]  # a wider window: three
    assert leaves_to_read(plan, relevance, 3, 8, budget, 2 * size - 1) == [1]  # the best always
