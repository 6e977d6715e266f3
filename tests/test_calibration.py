"""Calibration table: build, save/load round trip, rebuild on corruption, effect on pruning."""

from __future__ import annotations

import torch
from tiny import tiny_model

from homer_llm import compat
from homer_llm.calibration import (
    build_bias,
    cache_dir,
    calibration_parts,
    generic_text,
    get_bias,
    load_bias,
    save_bias,
    smooth_over_distance,
)


def test_generic_text_is_seeded():
    assert generic_text(200, 1) == generic_text(200, 1)
    assert generic_text(200, 1) != generic_text(200, 2)
    assert len(generic_text(200, 1).split()) >= 200


def test_calibration_parts_fill_one_chunk(tokenizer):
    parts = calibration_parts(tokenizer, 128, 0)
    assert len(parts) == 128
    assert parts.suffix and parts.prefix


def test_calibration_refuses_a_chunk_shorter_than_its_template(tokenizer):
    import pytest

    with pytest.raises(ValueError, match="too short to calibrate"):
        calibration_parts(tokenizer, 40, 0)


def test_smoothing_keeps_constants_and_short_range():
    table = torch.full((2, 64), 3.0)
    assert torch.allclose(smooth_over_distance(table), table)
    ramp = torch.arange(64.0).repeat(2, 1)
    assert torch.equal(smooth_over_distance(ramp)[:, :8], ramp[:, :8])


def test_build_save_load_round_trip(tmp_path, tokenizer):
    model = tiny_model("llama", vocab=len(tokenizer))
    parts = compat.model_parts(model)
    samples = [calibration_parts(tokenizer, 128, i) for i in range(2)]
    table = build_bias(parts, samples, 128)
    assert table.shape == (6, 128) and table.dtype == torch.float32
    assert torch.isfinite(table).all()
    # the table is a real measurement: distance 0 (a token's own key) differs from far keys
    assert not torch.allclose(table[:, 0], table[:, 100])
    path = tmp_path / "b.safetensors"
    save_bias(path, table, {"model": "tiny"})
    assert torch.equal(load_bias(path, 6, 128), table)
    assert load_bias(path, 7, 128) is None  # wrong shape: rebuilt, not used
    path.write_bytes(path.read_bytes()[:50])  # truncated
    assert load_bias(path, 6, 128) is None


def test_get_bias_builds_once_then_loads(tokenizer, monkeypatch):
    model = tiny_model("llama", vocab=len(tokenizer))
    parts = compat.model_parts(model)
    calls = []
    import homer_llm.calibration as cal

    real = cal.build_bias
    monkeypatch.setattr(cal, "build_bias", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = get_bias(parts, tokenizer, "tiny-x", model.config.to_dict(), 128, 2)
    second = get_bias(parts, tokenizer, "tiny-x", model.config.to_dict(), 128, 2)
    assert len(calls) == 1 and torch.equal(first, second)
    assert list((cache_dir() / "calibration").glob("*.safetensors"))
    # a corrupted stored table is rebuilt
    for f in (cache_dir() / "calibration").glob("*.safetensors"):
        f.write_bytes(b"garbage")
    third = get_bias(parts, tokenizer, "tiny-x", model.config.to_dict(), 128, 2)
    assert len(calls) == 2 and torch.allclose(first, third)


def test_pruning_modes_differ(tiny_homer):
    """Calibrated, uncalibrated and random pruning keep different tokens on the same prompt."""
    from dataclasses import replace

    parts = tiny_homer.prepare_question("alpha beta gamma delta " * 60, "Which?")
    caches = {}
    for mode in ("calibrated", "uncalibrated", "random"):
        tiny_homer.homer = replace(tiny_homer.homer, pruning=mode)
        tiny_homer._bias = None
        ctx = tiny_homer.compress(parts)
        assert ctx.cache_tokens == tiny_homer.chunk_len
        caches[mode] = ctx.kv[0][0]
    assert not torch.equal(caches["calibrated"], caches["uncalibrated"])
    assert not torch.equal(caches["random"], caches["uncalibrated"])


def test_a_first_build_reports_its_passes_before_the_trees(tiny_homer, tmp_path, monkeypatch):
    """The one-time table build is progress too: its own count first, then the tree's layer passes."""
    monkeypatch.setenv("HOMER_LLM_CACHE", str(tmp_path))  # no table built by another test
    tiny_homer._bias = None
    parts = tiny_homer.prepare_question("alpha beta gamma delta " * 60, "Which?")
    seen: list[tuple[int, int]] = []
    tiny_homer.compress(parts, progress=lambda done, total: seen.append((done, total)))
    L, samples = tiny_homer.parts.num_layers, tiny_homer.homer.calibration_samples
    build = [(d, t) for d, t in seen if t == L * samples]
    assert build == [(i, L * samples) for i in range(1, L * samples + 1)]
    tree = seen[len(build):]
    plan = tiny_homer.plan(parts)
    assert tree and tree[-1] == (plan.layer_passes, plan.layer_passes)
    assert all(t == plan.layer_passes for _, t in tree)
    # found again on disk (the in-memory table dropped): the tree's passes only
    seen.clear()
    tiny_homer._bias = None
    tiny_homer.compress(parts, progress=lambda done, total: seen.append((done, total)))
    assert seen and all(t == plan.layer_passes for _, t in seen)


def test_the_hybrid_reports_a_first_build_too(tokenizer, tmp_path, monkeypatch):
    from homer_llm import HomerConfig, HomerModel

    monkeypatch.setenv("HOMER_LLM_CACHE", str(tmp_path))

    torch.manual_seed(0)
    model = tiny_model("llama", vocab=len(tokenizer), window=1024, layers=8)
    hm = HomerModel(model, tokenizer, name="tiny-hybrid-progress",
                    homer=HomerConfig(focus_leaves=1, focus_keep_document=True, focus_margin=8))
    parts = hm.prepare_question("alpha beta gamma delta " * 300, "Which?")
    seen: list[tuple[int, int]] = []
    hm.compress(parts, progress=lambda done, total: seen.append((done, total)))
    L_samples = hm.parts.num_layers * hm.homer.calibration_samples
    assert seen[:L_samples] == [(i, L_samples) for i in range(1, L_samples + 1)]
    assert seen[-1][0] == seen[-1][1] != L_samples
