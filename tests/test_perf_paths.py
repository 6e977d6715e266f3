"""Speed paths whose correctness needs no GPU: the CPU dtype choice, and the own-leaf mask built on
the device, each checked for equality against the library's current path."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny import tiny_model

from homer_llm import compat, engine
from homer_llm.model import resolve_dtype
from homer_llm.schedule import make_plan

# ---------------------------------------------------------------- dtype="auto" on the CPU


@pytest.mark.parametrize("dtype", [None, "auto"])
def test_auto_dtype_is_bfloat16_on_a_cpu_with_amx(monkeypatch, caplog, dtype):
    monkeypatch.setattr(compat, "cpu_has_amx", lambda: True)
    with caplog.at_level(logging.INFO, logger="homer_llm.model"):
        assert resolve_dtype(dtype, "cpu") == torch.bfloat16
    assert "AMX" in caplog.text


@pytest.mark.parametrize("dtype", [None, "auto"])
def test_auto_dtype_stays_float32_on_a_cpu_without_amx(monkeypatch, caplog, dtype):
    monkeypatch.setattr(compat, "cpu_has_amx", lambda: False)
    with caplog.at_level(logging.INFO, logger="homer_llm.model"):
        assert resolve_dtype(dtype, "cpu") == torch.float32
    assert "AMX" not in caplog.text


def test_explicit_dtypes_and_cuda_ignore_the_amx_probe(monkeypatch):
    def probe():
        raise AssertionError("the AMX probe is only read for dtype='auto' on the CPU")

    monkeypatch.setattr(compat, "cpu_has_amx", probe)
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    with pytest.raises(ValueError, match="'float8'"):
        resolve_dtype("float8", "cpu")


def test_this_machine_reads_its_own_probe():
    """The branch taken here follows the real probe (this project's CPUs: AMD EPYC without AMX)."""
    expected = torch.bfloat16 if compat.cpu_has_amx() else torch.float32
    assert resolve_dtype("auto", "cpu") == expected


def test_load_with_auto_dtype_follows_the_probe(tmp_path, tokenizer, monkeypatch):
    from homer_llm import HomerModel

    model = tiny_model(vocab=len(tokenizer))
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    for amx, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(compat, "cpu_has_amx", lambda amx=amx: amx)
        hm = HomerModel.load(tmp_path / "m", device="cpu")
        assert next(hm.model.parameters()).dtype == expected


# ---------------------------------------------------------------- own-leaf mask on the device


def _device_owners(plan, origin: torch.Tensor) -> torch.Tensor:
    """engine.token_owners with its leaf ends on ``origin``'s device (no host copy of origin)."""
    P, C = plan.prefix_len, plan.context_len
    ends = torch.tensor([hi for _, hi in plan.leaf_ranges()], dtype=torch.long, device=origin.device)
    leaf = torch.searchsorted(ends, origin - P, right=True)
    return torch.where(origin < P, -1, torch.where(origin >= P + C, -2, leaf))


def _device_node_mask(self, state, node):
    if not self.own_leaf or node.is_leaf:
        return compat.attention_mask(self.parts, state.length, 0, state.hidden.dtype, state.hidden.device)
    return compat.owner_mask(self.parts, _device_owners(self.plan, state.origin), state.hidden.dtype)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_owner_mask_equals_the_engines_own_leaf_mask_on_every_merged_node(attn, monkeypatch):
    model = tiny_model("llama", attn=attn, vocab=100, layers=6)
    parts = compat.model_parts(model)
    plan = make_plan(6, 900, 5, chunk_len=128, cache_len=128, num_layers=6, warmup_layers=2)
    ids = torch.randint(5, 100, (911,), generator=torch.Generator().manual_seed(1))
    compared = []
    real = engine.TreePass.node_mask

    def both(self, state, node):
        mask = real(self, state, node)
        fast = _device_node_mask(self, state, node)
        if not node.is_leaf:
            assert torch.equal(mask, fast)
            assert torch.equal(_device_owners(self.plan, state.origin), engine.token_owners(self.plan, state.origin))
            compared.append(state.length)
        return mask

    monkeypatch.setattr(engine.TreePass, "node_mask", both)
    engine.compress(parts, plan, ids, own_leaf=True)
    assert len(compared) == plan.num_leaves - 1  # every merged node


def test_compression_with_the_device_mask_is_bitwise_the_same(monkeypatch):
    model = tiny_model("llama", vocab=100, layers=6)
    parts = compat.model_parts(model)
    plan = make_plan(6, 900, 5, chunk_len=128, cache_len=128, num_layers=6, warmup_layers=2)
    ids = torch.randint(5, 100, (911,), generator=torch.Generator().manual_seed(2))
    before = engine.compress(parts, plan, ids, own_leaf=True, reread_suffix=True)
    monkeypatch.setattr(engine.TreePass, "node_mask", _device_node_mask)
    after = engine.compress(parts, plan, ids, own_leaf=True, reread_suffix=True)
    assert torch.equal(before.last_logits, after.last_logits) and torch.equal(before.kept, after.kept)
    for (k0, v0), (k1, v1) in zip(before.kv, after.kv, strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_owner_mask_rules():
    parts = compat.model_parts(tiny_model("llama", attn="sdpa", vocab=100))
    owner = torch.tensor([-1, -1, 0, 0, 1, 1, -2])
    allowed = compat.owner_mask(parts, owner, torch.float32)[0, 0]
    assert allowed.dtype == torch.bool and allowed.shape == (7, 7)
    assert allowed[4].tolist() == [True, True, False, False, True, False, False]  # prefix + own leaf, causal
    assert allowed[6].tolist() == [True] * 7  # the suffix reads everything before it
    assert not allowed.triu(1).any()
    eager = compat.model_parts(tiny_model("llama", attn="eager", vocab=100))
    additive = compat.owner_mask(eager, owner, torch.float32)[0, 0]
    assert torch.equal(additive == 0, allowed)
