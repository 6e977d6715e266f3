"""The prompt split's attention-sink rule (prompt.anchor_prefix) and where it applies."""

from __future__ import annotations

import pytest
import torch

from homer_llm.prompt import SINK_TOKENS, PromptParts, anchor_prefix, bos_prefix, split_text


def test_anchor_moves_the_first_context_tokens_into_an_empty_prefix():
    parts = PromptParts((), tuple(range(10, 30)), (99,))
    anchored = anchor_prefix(parts)
    assert anchored.prefix == (10, 11, 12, 13) and anchored.context == tuple(range(14, 30))
    assert anchored.suffix == (99,) and anchored.ids == parts.ids  # same token sequence
    assert len(anchor_prefix(parts, 7).prefix) == 7


@pytest.mark.parametrize(
    "parts,n,prefix_len",
    [
        (PromptParts((1,), tuple(range(10, 30)), (99,)), 4, 1),  # a prefix already: untouched
        (PromptParts((), tuple(range(10, 30)), (99,)), 0, 0),  # rule switched off
        (PromptParts((), (10, 11, 12), (99,)), 4, 1),  # at most half the context moves
        (PromptParts((), (10,), (99,)), 4, 0),  # nothing to spare
    ],
)
def test_anchor_leaves_other_prompts_alone(parts, n, prefix_len):
    anchored = anchor_prefix(parts, n)
    assert len(anchored.prefix) == prefix_len and anchored.ids == parts.ids


def test_anchor_refuses_a_negative_count():
    with pytest.raises(ValueError, match="-1"):
        anchor_prefix(PromptParts((), (1, 2, 3), (4,)), -1)


def test_split_text_anchors_only_a_bare_document(tokenizer):
    assert bos_prefix(tokenizer) == ()  # the tiny tokenizer adds no BOS
    bare = split_text(tokenizer, "", "one two three four five six seven eight", " question?")
    assert len(bare.prefix) == SINK_TOKENS
    def encode(text):
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    assert bare.ids == encode("one two three four five six seven eight") + encode(" question?")  # same tokens
    headed = split_text(tokenizer, "Read: ", "one two three four five six seven eight", " question?")
    assert headed.prefix == tuple(tokenizer("Read: ", add_special_tokens=False)["input_ids"])


def test_anchored_document_compresses_with_one_shared_first_token(tiny_homer, caplog):
    """Through a real tree: every leaf starts with the same four prefix tokens, never pruned, so the
    final cache starts with them (merged siblings average their identical copies)."""
    ids = tuple(int(i) for i in torch.randint(5, 90, (600,), generator=torch.Generator().manual_seed(3)))
    bare = PromptParts((), ids[:-1], ids[-1:])
    anchored = anchor_prefix(bare)
    plan = tiny_homer.plan(anchored)
    assert plan.num_leaves > 1 and plan.prefix_len == SINK_TOKENS
    with caplog.at_level("WARNING", logger="homer_llm.model"):
        ctx = tiny_homer.compress(anchored)
    assert "no prefix" not in caplog.text
    assert ctx.kept is not None and ctx.kept[:SINK_TOKENS].tolist() == [0, 1, 2, 3]
    assert tiny_homer.plan(bare).prefix_len == 0  # the engine itself does not anchor
    with caplog.at_level("WARNING", logger="homer_llm.model"):
        bare_ctx = tiny_homer.compress(bare)
    assert "no prefix" in caplog.text  # the engine says so rather than anchoring silently
    assert not torch.equal(bare_ctx.last_logits, ctx.last_logits)  # the rule changes the cache
