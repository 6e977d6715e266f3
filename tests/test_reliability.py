"""Reliability: cache keys that follow the weights, the up-front size guard, and one-line errors
for bad input on every surface (library and CLI). Grouped by the kind of defect each case guards
against (docs/reliability.md lists the groups)."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from homer_llm import GenerationConfig, HomerConfig, HomerModel, PromptParts
from homer_llm.calibration import build_bias, calibration_parts, get_bias
from homer_llm.cli import main
from homer_llm.doc_cache import DocumentCache, make_key
from homer_llm.schedule import make_plan

DOC = " ".join(f"Line {i}: the river runs past mill {i * 3}." for i in range(20))  # ~700 chars = tokens


pytestmark = pytest.mark.usefixtures("one_thread")


def fine_tuned(seed: int, vocab: int):
    """A tiny llama whose decoder layers come from ``seed`` but whose embeddings and LM head are
    seed 0's: a fine-tune that left both alone (so a probe of those two tensors alone cannot tell)."""
    model = tiny_model("llama", vocab=vocab, seed=seed)
    base = tiny_model("llama", vocab=vocab, seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(base.model.embed_tokens.weight)
        model.lm_head.weight.copy_(base.lm_head.weight)
    return model


def save_folder(folder, seed: int = 0, tokenizer=None):
    tok = tokenizer or tiny_tokenizer()
    fine_tuned(seed, len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def run_cli(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, out, err, *fragments, expected_code=2):
    assert code == expected_code, err
    assert out == "" and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("homer-llm: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------------------------------- 1. stale answers
def test_same_relative_name_other_weights_gets_other_keys(tmp_path, monkeypatch):
    """Two folders both loaded as "m" from different working directories: other weights, other
    keys, and a shared disk tier serves the second its own states, not the first one's."""
    for side, seed in (("a", 0), ("b", 1)):
        save_folder(tmp_path / side / "m", seed)
    disk = tmp_path / "cache"
    results = []
    for side in ("a", "b"):
        monkeypatch.chdir(tmp_path / side)
        hm = HomerModel.load("m", dtype="float32")
        assert hm.name == "m"
        parts = hm.prepare_question(DOC, "Which mill?")
        ctx, hit = DocumentCache(disk_dir=disk, mode="exact").get_or_compress(hm, parts)
        results.append((make_key(hm, parts.prefix, parts.context, None, mode="exact"), hit, ctx.last_logits))
    (key_a, hit_a, logits_a), (key_b, hit_b, logits_b) = results
    assert key_a != key_b
    assert not hit_a and not hit_b, "the second model was served the first one's states"
    assert not torch.equal(logits_a, logits_b)


def test_weights_replaced_in_place_miss(tmp_path):
    folder = save_folder(tmp_path / "m", 0)
    hm = HomerModel.load(folder, dtype="float32")
    parts = hm.prepare_question(DOC, "Which mill?")
    cache = DocumentCache(disk_dir=tmp_path / "cache", mode="exact")
    cache.get_or_compress(hm, parts)
    fine_tuned(7, len(hm.tokenizer)).save_pretrained(folder)  # model.safetensors replaced in place
    again = HomerModel.load(folder, dtype="float32")
    _, hit = DocumentCache(disk_dir=tmp_path / "cache", mode="exact").get_or_compress(again, parts)
    assert not hit, "replaced weights still hit the old entry"


def test_shared_engine_reloads_after_weights_change(tmp_path):
    folder = save_folder(tmp_path / "m", 0)
    first = HomerModel.shared(folder, dtype="float32")
    assert HomerModel.shared(folder, dtype="float32") is first
    time.sleep(0.01)  # a distinct mtime even on coarse clocks
    fine_tuned(3, len(first.tokenizer)).save_pretrained(folder)
    second = HomerModel.shared(folder, dtype="float32")
    assert second is not first
    w1, w2 = first.parts.layers[0].mlp.up_proj.weight, second.parts.layers[0].mlp.up_proj.weight
    assert not torch.equal(w1, w2)


def test_tokenizer_change_changes_the_key(tokenizer):
    model = tiny_model("llama", vocab=len(tokenizer))
    other = tiny_tokenizer()
    other.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}assistant:"
    a = HomerModel(model, tokenizer, name="m")
    b = HomerModel(model, other, name="m")
    assert make_key(a, (1,), (2, 3), None, mode="agnostic") != make_key(b, (1,), (2, 3), None, mode="agnostic")


def test_homer_settings_and_prompt_change_the_key(tokenizer):
    model = tiny_model("llama", vocab=len(tokenizer))
    a = HomerModel(model, tokenizer, name="m")
    b = HomerModel(model, tokenizer, name="m", homer=HomerConfig(pruning="uncalibrated"))
    base = make_key(a, (1,), (2, 3), (4,), mode="exact")
    assert base != make_key(b, (1,), (2, 3), (4,), mode="exact")
    assert base != make_key(a, (1,), (2, 3), (5,), mode="exact")


def test_calibration_table_follows_the_weights(tokenizer):
    """Same name, same config, other weights: the second model gets its own table."""
    a = HomerModel(fine_tuned(0, len(tokenizer)), tokenizer, name="m")
    b = HomerModel(fine_tuned(1, len(tokenizer)), tokenizer, name="m")
    config = a.model.config.to_dict()
    assert config == b.model.config.to_dict()
    table_a = get_bias(a.parts, tokenizer, "m", config, 128, 2)
    table_b = get_bias(b.parts, tokenizer, "m", config, 128, 2)
    fresh_b = build_bias(b.parts, [calibration_parts(tokenizer, 128, i) for i in range(2)], 128)
    assert not torch.equal(table_a, table_b)
    assert torch.allclose(table_b, fresh_b)
    # through the engine, too
    assert not torch.equal(a.bias_table(), b.bias_table())


def test_fingerprint_is_stable_and_cheap(tmp_path):
    folder = save_folder(tmp_path / "m", 0)
    one = HomerModel.load(folder, dtype="float32")
    two = HomerModel.load(folder, dtype="float32")
    assert one.fingerprint == two.fingerprint
    assert make_key(one, (1,), (2,), None, mode="agnostic") == make_key(two, (1,), (2,), None, mode="agnostic")


# ---------------------------------------------------------------------------------------- 5. size guard
def test_huge_document_refused_before_tokenizing(tiny_homer):
    calls = []
    real = tiny_homer.tokenizer.__class__.__call__
    tiny_homer.tokenizer.__class__.__call__ = lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    try:
        with pytest.raises(ValueError, match=r"50,000,000 characters.*max_input_tokens=2,097,152.*--no-size-limit"):
            tiny_homer.prepare_question("ab" * 25_000_000, "Which mill?")
    finally:
        tiny_homer.tokenizer.__class__.__call__ = real
    assert not calls, "the document reached the tokenizer"


def test_cli_refuses_a_50_mb_file_quickly(capsys, tmp_path):
    folder = save_folder(tmp_path / "m")
    doc = tmp_path / "big.txt"
    doc.write_bytes(b"river mill " * (50_000_000 // 11))
    started = time.perf_counter()
    res = run_cli(capsys, "ask", "--model", folder, "--document", doc, "--no-progress", "Which mill?")
    one_line(*res, "characters", "--max-input-tokens")
    assert time.perf_counter() - started < 30


def test_token_limit_names_the_numbers_and_the_override(tiny_homer, capsys, tmp_path):
    from homer_llm import model as model_mod

    hm = HomerModel(tiny_homer.model, tiny_homer.tokenizer, name="t",
                    limits=model_mod.SizeLimits(max_input_tokens=100))
    parts = hm.prepare_question(DOC, "Which mill?")
    with pytest.raises(ValueError, match=r"tokens, more than max_input_tokens=100.*--max-input-tokens"):
        hm.compress(parts)
    folder = save_folder(tmp_path / "m")
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    res = run_cli(capsys, "ask", "--model", folder, "--document", doc, "--no-progress", "--max-input-tokens", "100", "Q?")
    one_line(*res, "more than max_input_tokens=100")
    code, out, err = run_cli(capsys, "ask", "--model", folder, "--document", doc, "--no-progress",
                             "--max-input-tokens", "100", "--no-size-limit", "--max-new-tokens", "2", "Q?")
    assert code == 0, err


def test_plan_for_a_billion_tokens_is_refused_up_front():
    started = time.perf_counter()
    with pytest.raises(ValueError, match="leaves"):
        make_plan(10, 10**9, 10, chunk_len=4096, cache_len=4096, num_layers=28)
    assert time.perf_counter() - started < 0.5


def test_time_and_memory_estimates_refuse_with_numbers(tiny_homer):
    from homer_llm.model import SizeLimits

    parts = tiny_homer.prepare_question(DOC, "Which mill?")
    slow = HomerModel(tiny_homer.model, tiny_homer.tokenizer, name="t", limits=SizeLimits(max_seconds=1e-9))
    with pytest.raises(ValueError, match=r"estimated at .* s on cpu .*max_seconds.*--max-compress-seconds"):
        slow.compress(parts)
    small = HomerModel(tiny_homer.model, tiny_homer.tokenizer, name="t", limits=SizeLimits(max_memory_bytes=1000))
    with pytest.raises(ValueError, match=r"estimated to need .* GiB on cpu"):
        small.compress(parts)
    free = HomerModel(tiny_homer.model, tiny_homer.tokenizer, name="t", limits=SizeLimits.off())
    assert free.compress(parts).stats.num_leaves > 1


def test_estimate_bounds_the_measured_kv_peak(tiny_homer):
    parts = tiny_homer.prepare_question(DOC * 3, "Which mill?")
    est = tiny_homer.estimate(parts)
    ctx = tiny_homer.compress(parts)
    assert est.tokens == len(parts) and est.seconds > 0 and est.flops > 0
    assert est.peak_bytes >= est.kv_bytes >= ctx.stats.peak_kv_bytes
    assert est.kv_bytes <= 2 * ctx.stats.peak_kv_bytes, (est.kv_bytes, ctx.stats.peak_kv_bytes)
    assert est.layer_token_passes >= len(parts)


@pytest.mark.parametrize("kwargs", [dict(max_input_tokens=0), dict(max_seconds=float("nan")),
                                    dict(max_seconds=-1), dict(max_memory_bytes=True)])
def test_size_limits_validate(kwargs):
    from homer_llm.model import SizeLimits

    with pytest.raises(ValueError, match="SizeLimits"):
        SizeLimits(**kwargs)


# ---------------------------------------------------------------------------------------- 8. model folders (CLI)
def test_invalid_config_json_is_one_line(capsys, tmp_path):
    folder = save_folder(tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    doc = tmp_path / "d.txt"
    doc.write_text("Cats sleep.")
    one_line(*run_cli(capsys, "ask", "--model", folder, "--document", doc, "What?"), "config.json", str(folder))


@pytest.mark.parametrize("field,value,named", [("num_hidden_layers", "six", "num_hidden_layers"),
                                               ("hidden_size", 65, "hidden size (65)")])
def test_config_json_with_invalid_fields_is_one_line(capsys, tmp_path, field, value, named):
    """transformers validates these with huggingface_hub's own error classes (not ValueError)."""
    folder = save_folder(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    doc = tmp_path / "d.txt"
    doc.write_text("Cats sleep.")
    one_line(*run_cli(capsys, "ask", "--model", folder, "--document", doc, "What?"), "cannot load model", named)


def test_config_json_that_is_not_an_object(capsys, tmp_path):
    folder = save_folder(tmp_path / "m")
    (folder / "config.json").write_text("[1, 2]")
    doc = tmp_path / "d.txt"
    doc.write_text("Cats sleep.")
    one_line(*run_cli(capsys, "ask", "--model", folder, "--document", doc, "What?"), "not a JSON object")


def test_config_json_of_an_unknown_model_type(capsys, tmp_path):
    folder = save_folder(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "no-such-architecture"
    (folder / "config.json").write_text(json.dumps(config))
    doc = tmp_path / "d.txt"
    doc.write_text("Cats sleep.")
    one_line(*run_cli(capsys, "ask", "--model", folder, "--document", doc, "What?"), "no-such-architecture")


# ---------------------------------------------------------------------------------------- 9. temperature
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_cli_temperature_must_be_finite(capsys, tmp_path, value):
    doc = tmp_path / "d.txt"
    doc.write_text("Cats sleep.")
    with pytest.raises(SystemExit) as info:
        main(["ask", "--document", str(doc), f"--temperature={value}", "What?"])
    assert info.value.code == 2
    assert "finite" in capsys.readouterr().err


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_library_temperature_must_be_finite(tiny_homer, value):
    parts = tiny_homer.prepare_question("Cats sleep.", "What?")
    with pytest.raises(ValueError, match="temperature"):
        tiny_homer.generate(parts, GenerationConfig(temperature=value))
    with pytest.raises(ValueError, match="temperature"):
        tiny_homer.stream(parts, GenerationConfig(temperature=value))


# ---------------------------------------------------------------------------------------- 10. library inputs
@pytest.mark.parametrize("where", ["document", "question"])
def test_lone_surrogate_is_a_value_error(tiny_homer, where):
    text = {"document": "Cats \ud800 sleep.", "question": "Why \udfff?"}
    document = text["document"] if where == "document" else "Cats sleep."
    question = text["question"] if where == "question" else "What?"
    with pytest.raises(ValueError, match=f"{where} holds a lone surrogate"):
        tiny_homer.ask(document, question, config=GenerationConfig(max_new_tokens=1))


@pytest.mark.parametrize("method", ["compress", "generate", "stream"])
@pytest.mark.parametrize("source", ["some text", 42, None, [1, 2, 3]])
def test_non_prompt_sources_are_type_errors(tiny_homer, method, source):
    with pytest.raises(TypeError, match="PromptParts"):
        getattr(tiny_homer, method)(source)


def test_config_of_the_wrong_type(tiny_homer):
    parts = tiny_homer.prepare_question("Cats sleep.", "What?")
    with pytest.raises(TypeError, match="GenerationConfig"):
        tiny_homer.generate(parts, {"max_new_tokens": 3})


@pytest.mark.parametrize("bad", [10_000, 102, -1])
def test_token_ids_out_of_range(tiny_homer, bad):
    assert tiny_homer.parts.embed.weight.shape[0] == 102  # so 102 is the first id past the end
    if bad < 0:
        with pytest.raises(ValueError, match="negative token id"):
            PromptParts((1,), (5, bad), (6,))
        return
    with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"):
        tiny_homer.compress(PromptParts((1,), (5, bad), (6,)))


@pytest.mark.parametrize("bad", [2.7, 3.0, "7", True])
def test_float_and_other_ids_are_refused_not_truncated(bad):
    with pytest.raises(TypeError, match=r"PromptParts.context\[1\]"):
        PromptParts((1,), (5, bad), (6,))


def test_integer_like_ids_are_accepted(tiny_homer):
    import numpy as np

    parts = PromptParts([1], np.array([5, 6, 7]).tolist(), torch.tensor([8]))
    assert parts.ids == (1, 5, 6, 7, 8)
    assert PromptParts((np.int64(1),), (2,), (3,)).prefix == (1,)


# ---------------------------------------------------------------------------------------- 11. messages
def test_utf16_document_is_read(capsys, tmp_path):
    folder = save_folder(tmp_path / "m")
    doc = tmp_path / "u16.txt"
    doc.write_text("Cats sleep all day.", encoding="utf-16")
    code, out, err = run_cli(capsys, "ask", "--model", folder, "--document", doc, "--no-progress",
                             "--max-new-tokens", "2", "What?")
    assert code == 0 and "binary" not in err, err


def test_empty_model_folder_names_config_json(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    doc = tmp_path / "d.txt"
    doc.write_text("Cats sleep.")
    res = run_cli(capsys, "ask", "--model", tmp_path / "empty", "--document", doc, "What?")
    one_line(*res, "has no config.json")
    assert "sentencepiece" not in res[2]


def test_missing_absolute_path_is_not_a_hub_id(capsys, tmp_path):
    doc = tmp_path / "d.txt"
    doc.write_text("Cats sleep.")
    missing = tmp_path / "models" / "nope"
    res = run_cli(capsys, "ask", "--model", missing, "--document", doc, "What?")
    one_line(*res, "model folder not found", str(missing))
    with pytest.raises(ValueError, match="model folder not found"):
        HomerModel.load(str(missing))
    with pytest.raises(ValueError, match="model folder not found"):
        HomerModel.load(os.path.join(".", "nope-here"))


@pytest.mark.parametrize("question", [42, None, b"why?"])
def test_non_string_question_is_a_type_error(tiny_homer, question):
    with pytest.raises(TypeError, match="question must be str"):
        tiny_homer.ask("Cats sleep.", question)


def test_model_argument_of_the_wrong_type():
    with pytest.raises(TypeError, match="model must be"):
        HomerModel.load(42)


def test_memory_estimate_follows_the_prompt_not_the_chunk_length():
    """A short prompt on a long-window model is sized by its own tokens: a 32k-window model's
    default chunk (16k) must not make a 450-token question look like a 16k-token pass."""
    tok = tiny_tokenizer()
    hm = HomerModel(tiny_model("llama", vocab=len(tok), window=4096, layers=2), tok, name="tiny",
                    homer=HomerConfig(chunk_len=2048))
    short = hm.estimate(PromptParts((1, 2), tuple(range(5, 45)), (3, 4)))
    full = hm.estimate(PromptParts((1, 2), tuple(range(5, 5 + 2040)), (3, 4)))
    assert short.peak_bytes * 20 < full.peak_bytes
