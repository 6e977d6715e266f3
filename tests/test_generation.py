"""Decoding on the compressed cache: greedy, sampling, stop strings, streaming, extension."""

from __future__ import annotations

import pytest
import torch

from homer_llm import GenerationConfig
from homer_llm.generation import extend_context, sample_next


@pytest.fixture
def long_parts(tiny_homer):
    return tiny_homer.prepare_question("The cat sat on the mat. " * 30, "Where is the cat?")


def test_stream_deltas_concatenate_to_result(tiny_homer, long_parts):
    stream = tiny_homer.stream(long_parts, GenerationConfig(max_new_tokens=20))
    deltas = list(stream)
    assert len(deltas) > 1
    assert "".join(deltas) == stream.result.text
    assert stream.result.text == tiny_homer.generate(long_parts, GenerationConfig(max_new_tokens=20)).text


def test_seeded_sampling_is_reproducible(tiny_homer, long_parts):
    ctx = tiny_homer.compress(long_parts)
    cfg = GenerationConfig(max_new_tokens=15, temperature=1.0, top_p=0.9, seed=7)
    a = tiny_homer.generate(ctx, cfg).token_ids
    b = tiny_homer.generate(ctx, cfg).token_ids
    c = tiny_homer.generate(ctx, GenerationConfig(max_new_tokens=15, temperature=1.0, seed=8)).token_ids
    assert a == b and a != c


def test_top_k_one_is_greedy(tiny_homer, long_parts):
    ctx = tiny_homer.compress(long_parts)
    greedy = tiny_homer.generate(ctx, GenerationConfig(max_new_tokens=12)).token_ids
    top1 = tiny_homer.generate(ctx, GenerationConfig(max_new_tokens=12, temperature=0.7, top_k=1, seed=0)).token_ids
    assert greedy == top1


def test_sample_next_filters():
    logits = torch.tensor([0.0, 10.0, 9.0, -5.0])
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, GenerationConfig(temperature=1.0, top_k=2), g) for _ in range(200)}
    assert picks <= {1, 2} and len(picks) == 2
    picks = {sample_next(logits, GenerationConfig(temperature=1.0, top_p=0.5), g) for _ in range(50)}
    assert picks == {1}


def test_stop_strings_are_trimmed(tiny_homer, long_parts):
    full = tiny_homer.generate(long_parts, GenerationConfig(max_new_tokens=30)).text
    assert len(full) > 6
    stop = full[3:5]
    cut = full.find(stop)
    out = tiny_homer.generate(long_parts, GenerationConfig(max_new_tokens=30, stop=(stop,)))
    assert out.text == full[:cut] and out.finish_reason == "stop"
    streamed = "".join(tiny_homer.stream(long_parts, GenerationConfig(max_new_tokens=30, stop=(stop,))))
    assert streamed == full[:cut]


def test_generation_leaves_context_untouched(tiny_homer, long_parts):
    ctx = tiny_homer.compress(long_parts)
    before = ctx.kv[3][0].clone()
    tiny_homer.generate(ctx, GenerationConfig(max_new_tokens=5))
    assert ctx.cache_tokens == before.shape[2] and torch.equal(ctx.kv[3][0], before)


def test_extend_context_equals_one_prefill(tiny_homer, tokenizer):
    """Prefilling a prompt in two parts (cache + extension) equals prefilling it at once."""
    from homer_llm import split_text

    whole = split_text(tokenizer, "", "abc def ghi jkl", " mno pqr?")
    head = split_text(tokenizer, "", "abc def ghi jkl", " mno")
    tail_ids = whole.ids[len(head.ids):]
    full = tiny_homer.compress(whole)
    ctx = extend_context(tiny_homer.parts, tiny_homer.compress(head), tail_ids)
    assert ctx.next_position == full.next_position and ctx.cache_tokens == full.cache_tokens
    torch.testing.assert_close(ctx.last_logits, full.last_logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1), dict(stop=("",))],
)
def test_bad_generation_config(kwargs):
    with pytest.raises(ValueError):
        GenerationConfig(**kwargs)
