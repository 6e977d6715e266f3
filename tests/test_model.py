"""HomerModel: prompts, plain-path exactness, bad input, unsupported models."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from homer_llm import (
    DOCUMENT_PLACEHOLDER,
    GenerationConfig,
    HomerConfig,
    HomerModel,
    UnsupportedModelError,
    split_chat,
)


def test_split_chat_places_document_between_affixes(tokenizer):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Doc:\n{DOCUMENT_PLACEHOLDER}\nQ: who?"}]
    parts = split_chat(tokenizer, messages, "hello world")
    assert tokenizer.decode(parts.context) == "hello world"
    assert tokenizer.decode(parts.prefix).endswith("Doc:\n")
    assert tokenizer.decode(parts.suffix).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="exactly once"):
        split_chat(tokenizer, [{"role": "user", "content": "no placeholder"}], "doc")


@pytest.mark.parametrize(
    "document,exc,match",
    [("", ValueError, "empty"), ("   \n", ValueError, "empty"), ("ab\x00cd", ValueError, "binary"),
     (b"bytes", TypeError, "str")],
)
def test_bad_documents(tiny_homer, document, exc, match):
    with pytest.raises(exc, match=match):
        tiny_homer.ask(document, "question?")


def test_empty_question(tiny_homer):
    with pytest.raises(ValueError, match="question is empty"):
        tiny_homer.ask("a document", "  ")


def test_prompt_that_cannot_fit(tiny_homer):
    with pytest.raises(ValueError, match="shorten the instruction or question"):
        tiny_homer.ask("a document", "why? " * 40)


def test_answer_prefix_ends_the_suffix(tiny_homer):
    plain = tiny_homer.prepare_question("short doc", "q?")
    primed = tiny_homer.prepare_question("short doc", "q?", answer_prefix="It is")
    prefix_ids = tuple(tiny_homer.tokenizer("It is", add_special_tokens=False)["input_ids"])
    assert primed.prefix == plain.prefix and primed.context == plain.context
    assert primed.suffix == plain.suffix + prefix_ids
    assert tiny_homer.prepare_question("short doc", "q?", answer_prefix="") == plain
    with pytest.raises(TypeError, match="answer_prefix"):
        tiny_homer.prepare_question("short doc", "q?", answer_prefix=3)
    instructed = tiny_homer.prepare_question("short doc", "q?", instruction="Read this.")
    assert tiny_homer.tokenizer.decode(instructed.prefix).endswith("Read this.\n\n")
    assert instructed.context == plain.context and instructed.suffix == plain.suffix
    with pytest.raises(TypeError, match="instruction"):
        tiny_homer.prepare_question("short doc", "q?", instruction=["x"])
    ans = tiny_homer.ask("short doc", "q?", answer_prefix="It is", config=GenerationConfig(max_new_tokens=3))
    assert ans.text.startswith("It is")


def test_final_assistant_message_is_a_prefill(tiny_homer):
    from homer_llm import DOCUMENT_PLACEHOLDER

    tok = tiny_homer.tokenizer
    asked = [{"role": "user", "content": f"{DOCUMENT_PLACEHOLDER}\n\nq?"}]
    closed = tiny_homer.prepare_chat(asked, "doc")
    primed = tiny_homer.prepare_chat([*asked, {"role": "assistant", "content": "It is"}], "doc")
    assert tok.decode(list(primed.suffix)) == tok.decode(list(closed.suffix)) + "It is"
    # the same prompt as answer_prefix builds
    assert primed == tiny_homer.prepare_question("doc", "q?", answer_prefix="It is")
    with pytest.raises(ValueError, match="final assistant message"):
        tiny_homer.prepare_chat([{"role": "user", "content": "q"},
                                 {"role": "assistant", "content": f"{DOCUMENT_PLACEHOLDER}"}], "doc")


def test_template_free_prompt_continues_a_final_assistant_message(tiny_homer, monkeypatch):
    monkeypatch.setattr(tiny_homer.tokenizer, "chat_template", None)
    parts = tiny_homer.prepare_question("the doc", "q?", answer_prefix=" It is")
    text = tiny_homer.tokenizer.decode(list(parts.ids))
    assert text.endswith("q?\nassistant: It is") and text.count("assistant:") == 1
    assert tiny_homer.tokenizer.decode(list(parts.context)) == "the doc"


def test_short_input_is_plain_model_result(tiny_homer):
    parts = tiny_homer.prepare_question("short doc", "q?")
    ctx = tiny_homer.compress(parts)
    with torch.no_grad():
        ref = tiny_homer.model(torch.tensor([parts.ids])).logits[0, -1]
    torch.testing.assert_close(ctx.last_logits, ref, atol=1e-5, rtol=1e-5)
    assert ctx.stats.tree_height == 0 and ctx.cache_tokens == len(parts)


def test_long_input_compresses_to_chunk(tiny_homer):
    ans = tiny_homer.ask("lorem ipsum dolor " * 100, "q?", config=GenerationConfig(max_new_tokens=4))
    assert ans.input_tokens > 1500 and ans.cache_tokens == tiny_homer.chunk_len == 128
    assert ans.tree_height >= 3


def test_unsupported_architectures(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer)))
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        HomerModel(gpt2, tokenizer, name="gpt2")
    sliding = tiny_model("mistral", vocab=len(tokenizer), sliding_window=64)
    with pytest.raises(UnsupportedModelError, match="sliding"):
        HomerModel(sliding, tokenizer, name="mistral-sw")


def test_chunk_len_beyond_window_refused(tokenizer):
    with pytest.raises(ValueError, match="exceeds the model window"):
        HomerModel(tiny_model(vocab=len(tokenizer)), tokenizer, name="t", homer=HomerConfig(chunk_len=1024))


def test_cache_len_beyond_chunk_refused(tokenizer):
    """The final cache is one merged chunk: a longer cache_len used to be cut to chunk_len silently."""
    model = tiny_model(vocab=len(tokenizer))
    chunk = HomerModel(model, tokenizer, name="t").chunk_len
    with pytest.raises(ValueError, match=f"cache_len {chunk + 1} exceeds chunk_len {chunk}"):
        HomerModel(model, tokenizer, name="t", homer=HomerConfig(cache_len=chunk + 1))
    assert HomerModel(model, tokenizer, name="t", homer=HomerConfig(cache_len=chunk)).homer.cache_len == chunk


@pytest.mark.parametrize("kwargs", [dict(chunk_len=4), dict(pruning="magic"), dict(warmup_layers=-1),
                                    dict(calibration_samples=0), dict(chunk_len=64, cache_len=65)])
def test_bad_homer_config(kwargs):
    with pytest.raises(ValueError):
        HomerConfig(**kwargs)


def test_reread_suffix_must_be_a_bool():
    assert HomerConfig().reread_suffix is True
    with pytest.raises(TypeError, match="reread_suffix"):
        HomerConfig(reread_suffix="no")


def test_bad_load_arguments():
    with pytest.raises(ValueError, match="attn_implementation"):
        HomerModel.load("/nonexistent", attn_implementation="magic")
    with pytest.raises(ValueError, match="model folder not found: '/nonexistent/model/folder'"):
        HomerModel.load("/nonexistent/model/folder")


def test_model_from_folder_round_trip(tmp_path, tokenizer):
    model = tiny_model(vocab=len(tokenizer))
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    hm = HomerModel.load(tmp_path / "m", dtype="float32")
    assert hm.window == 256 and hm.chunk_len == 128
    assert HomerModel.shared(tmp_path / "m", dtype="float32") is HomerModel.shared(tmp_path / "m", dtype="float32")
    same = HomerModel.shared(tmp_path / "m", dtype="float32", attn_implementation="sdpa", homer=HomerConfig())
    assert same is HomerModel.shared(tmp_path / "m", dtype="float32")
    ans = hm.ask("words " * 80, "q?", config=GenerationConfig(max_new_tokens=3))
    assert ans.cache_tokens == 128


@pytest.mark.parametrize("amx,dtype,expected", [(True, None, torch.bfloat16), (True, "auto", torch.bfloat16),
                                                 (True, "float32", torch.float32), (False, None, torch.float32),
                                                 (False, "auto", torch.float32)])
def test_auto_dtype_is_bfloat16_only_on_cpus_with_amx(tmp_path, tokenizer, monkeypatch, amx, dtype, expected):
    from homer_llm import compat

    model = tiny_model(vocab=len(tokenizer))
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(compat, "cpu_has_amx", lambda: amx)
    hm = HomerModel.load(tmp_path / "m", device="cpu", dtype=dtype)
    assert next(hm.model.parameters()).dtype == expected


def test_cpu_has_amx_without_the_probe(monkeypatch):
    from homer_llm import compat

    assert isinstance(compat.cpu_has_amx(), bool)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert compat.cpu_has_amx() is False


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(rope_scaling="ntk"), ValueError, "dynamic NTK leaves every HOMER chunk unchanged"),
    (dict(rope_scaling="longrope"), ValueError, "rope_scaling must be one of"),
    (dict(rope_scaling="yarn", rope_factor=1.0), ValueError, "rope_factor must be > 1"),
    (dict(rope_scaling="yarn", rope_factor=True), TypeError, "rope_factor must be a number"),
])
def test_bad_rope_scaling(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        HomerConfig(**kwargs)


@pytest.mark.parametrize("kind", ["yarn", "linear"])
def test_rope_scaling_runs_homer_on_a_scaled_view(tokenizer, kind):
    """HomerConfig(rope_scaling=...) (HOMER + YaRN): the view shares the weights, doubles the window
    and so the default chunk, its tree is shallower, and its rotary embedding really differs."""
    model = tiny_model("llama", vocab=len(tokenizer))
    base = HomerModel(model, tokenizer, name="tiny-llama")
    scaled = HomerModel(model, tokenizer, name="tiny-llama", homer=HomerConfig(rope_scaling=kind, rope_factor=2))
    assert scaled.name == f"tiny-llama+{kind}2" and scaled.homer.rope_scaling == kind
    assert scaled.window == 2 * base.window and scaled.chunk_len == 2 * base.chunk_len
    assert scaled.model is not model and base.model is model  # the base model object is left as it was
    assert scaled.model.lm_head.weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert scaled.model.model.layers[0].self_attn.q_proj.weight.data_ptr() == \
        model.model.layers[0].self_attn.q_proj.weight.data_ptr()
    parts = base.prepare_question("lorem ipsum dolor " * 100, "q?")
    config = GenerationConfig(max_new_tokens=2)
    a, b = base.compress(parts), scaled.compress(parts)
    assert b.stats.tree_height < a.stats.tree_height and b.cache_tokens == scaled.chunk_len
    out = scaled.generate(b, config)  # greedy: decoding starts from the scaled tree's own logits
    assert 1 <= len(out.token_ids) <= 2 and out.token_ids[0] == int(b.last_logits.argmax())
    ids = torch.tensor([parts.ids[:200]])
    with torch.no_grad():
        assert not torch.allclose(base.model(ids).logits, scaled.model(ids).logits)
    assert not torch.equal(base.bias_table(), scaled.bias_table())  # a table of its own


def test_rope_scaling_refuses_device_map_models(tokenizer):
    model = tiny_model("llama", vocab=len(tokenizer))
    model.hf_device_map = {"": "cpu"}
    with pytest.raises(ValueError, match="device_map"):
        HomerModel(model, tokenizer, name="t", homer=HomerConfig(rope_scaling="yarn"))


def test_with_config_shares_weights_limits_and_fingerprint_and_is_built_once(tokenizer):
    from homer_llm import SizeLimits

    hm = HomerModel(tiny_model(vocab=len(tokenizer)), tokenizer, name="tiny", limits=SizeLimits.off())
    other = hm.with_config(HomerConfig(chunk_len=64, merge_attention="causal"))
    assert other.model is hm.model and other.limits is hm.limits and other.chunk_len == 64
    assert other.fingerprint == hm.fingerprint
    assert hm.with_config(HomerConfig(chunk_len=64, merge_attention="causal")) is other
    with pytest.raises(TypeError, match="dict"):
        hm.with_config({"chunk_len": 64})
