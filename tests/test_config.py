"""HomerConfig presets: the method as published beside the library's default."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import tiny_model

from homer_llm import HomerConfig, HomerModel
from homer_llm.engine import compress
from homer_llm.model import resolve_merge_attention


def test_paper_preset_differs_from_the_default_in_merges_and_question_only():
    default, paper = dataclasses.asdict(HomerConfig()), dataclasses.asdict(HomerConfig.paper())
    differing = {name for name in default if default[name] != paper[name]}
    assert differing == {"merge_attention", "reread_suffix"}
    assert paper["merge_attention"] == "causal" and paper["reread_suffix"] is False
    assert paper["pruning"] == "calibrated" and paper["prune_unit"] == "token"
    assert paper["focus_leaves"] == 0 and paper["rope_scaling"] is None


def test_paper_preset_takes_overrides_and_still_validates():
    config = HomerConfig.paper(chunk_len=64, reread_suffix=True)
    assert (config.chunk_len, config.reread_suffix, config.merge_attention) == (64, True, "causal")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.chunk_len = 32  # type: ignore[misc]
    with pytest.raises(ValueError, match="chunk_len"):
        HomerConfig.paper(chunk_len=2)
    with pytest.raises(TypeError):
        HomerConfig.paper(no_such_field=1)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flash_attention_2"])
def test_paper_preset_keeps_causal_merges_on_every_backend(attn):
    assert resolve_merge_attention(HomerConfig.paper(), attn) == "causal"


def test_paper_preset_runs_the_published_tree(tokenizer):
    """A HomerModel built with the preset compresses with causal merges and the averaged question:
    its logits equal the engine's published tree and differ from the library default's."""
    model = tiny_model("llama", vocab=len(tokenizer))
    paper = HomerModel(model, tokenizer, name="t", homer=HomerConfig.paper(calibration_samples=1))
    default = HomerModel(model, tokenizer, name="t", homer=HomerConfig(calibration_samples=1))
    assert paper.homer.merge_attention == "causal" and default.homer.merge_attention == "own-leaf"
    parts = paper.prepare_question("the box holds seven coins. " * 20, "How many coins?")
    plan = paper.plan(parts)
    assert plan.num_leaves > 1
    ours = paper.compress(parts)
    ref = compress(paper.parts, plan, torch.tensor(parts.ids), bias=paper.bias_table(),
                   reread_suffix=False, own_leaf=False)
    torch.testing.assert_close(ours.last_logits, ref.last_logits)
    assert not torch.allclose(ours.last_logits, default.compress(parts).last_logits)
