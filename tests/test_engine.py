"""Equivalence tests: the HOMER pass against the plain model and an independent slow reference."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import ARCHITECTURES, tiny_model
from transformers import DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from homer_llm import compat
from homer_llm.engine import compress, reread_suffix
from homer_llm.schedule import make_plan

VOCAB = 100


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_layer_loop_equals_model_forward(arch, attn):
    """One chunk, nothing pruned: the engine's layer loop reproduces model.model(...) exactly."""
    model = tiny_model(arch, attn=attn, vocab=VOCAB)
    parts = compat.model_parts(model)
    ids = _ids(90)
    plan = make_plan(4, 80, 6, chunk_len=128, cache_len=128, num_layers=6)
    assert plan.num_leaves == 1
    ctx = compress(parts, plan, ids)
    with torch.no_grad():
        out = model(ids[None], use_cache=True)
    torch.testing.assert_close(ctx.last_logits, out.logits[0, -1].float(), atol=1e-5, rtol=1e-5)
    for (k, v), layer in zip(ctx.kv, compat.output_cache(out).layers, strict=True):
        torch.testing.assert_close(k, layer.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, layer.values, atol=1e-5, rtol=1e-5)
    assert ctx.next_position == 90
    assert ctx.stats.cache_tokens == 90 and ctx.stats.tree_height == 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_chunk_generation_equals_plain_generate(arch, tokenizer):
    """One-chunk HOMER + our decode loop gives plain greedy `generate`'s tokens, token for token."""
    from homer_llm import GenerationConfig, HomerModel, split_text

    model = tiny_model(arch, vocab=len(tokenizer))
    model.generation_config.eos_token_id = None  # run the full length: a stronger comparison
    hm = HomerModel(model, tokenizer, name=f"tiny-{arch}")
    parts = split_text(tokenizer, "Instruction: ", "some document text " * 3, " Question?")
    out = hm.generate(parts, GenerationConfig(max_new_tokens=24))
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([parts.ids]), do_sample=False, max_new_tokens=24, pad_token_id=0,
            attention_mask=torch.ones(1, len(parts.ids), dtype=torch.long),
        )
    assert list(out.token_ids) == ref[0, len(parts.ids):].tolist()


def _reference_homer(model, ids: torch.Tensor, P: int, S: int, M: int, W: int, bias: torch.Tensor | None,
                     own_leaf: bool = False):
    """A slow, breadth-first HOMER written from HOMER.md alone, sharing no code with the engine.

    Level by level: all nodes of a level run their layers, then are pruned, then siblings merge.
    K/V are captured through a real DynamicCache, masks are explicit, queries are formed from the
    full projection of every token, GQA through repeat_interleave, pruning by a full sort.
    ``own_leaf``: above the leaves, a context token attends only to the prefix and its own leaf's
    tokens (HomerConfig.merge_attention="own-leaf"); the suffix to everything before it.
    Returns (per-layer (K, V), last-token logits).
    """
    inner, config = model.model, model.config
    L = config.num_hidden_layers
    n_h, n_kv = config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or config.hidden_size // n_h
    C = ids.numel() - P - S
    E = M - P - S
    n0 = math.ceil(C / E)
    H = math.ceil(math.log2(n0)) if n0 > 1 else 0
    N = 2**H
    sizes = [C // N + (1 if i < C % N else 0) for i in range(N)]
    nominal = math.ceil(C / N)
    Lc = (L - W) // (H + 1)
    R = (L - W) - Lc * (H + 1)
    prefix, context, suffix = ids[:P], ids[P : P + C], ids[P + C :]

    # node = dict(h, pos, kv (list), nat (natural ctx size))
    nodes, start = [], 0
    for i, size in enumerate(sizes):
        tok = torch.cat([prefix, context[start : start + size], suffix])
        pos = list(range(P + size)) + list(range(P + nominal, P + nominal + S))
        owner = [-1] * P + [i] * size + [-2] * S
        nodes.append({"h": inner.embed_tokens(tok[None]), "pos": pos, "kv": [], "nat": size, "own": owner})
        start += size

    def keeps(level_nodes, is_root):
        if is_root:
            return [M - P - S]
        out = []
        for i in range(0, len(level_nodes), 2):
            right = min(level_nodes[i + 1]["nat"], E // 2)
            left = min(level_nodes[i]["nat"], E - right)
            out += [left, right]
        return out

    for level in range(H + 1):
        lo = 0 if level == 0 else W + R + level * Lc
        hi = W + R + (level + 1) * Lc
        targets = keeps(nodes, level == H)
        for node, keep in zip(nodes, targets, strict=True):
            n = len(node["pos"])
            pos_t = torch.tensor(node["pos"])[None]
            cos, sin = inner.rotary_emb(node["h"], position_ids=pos_t)
            mask = torch.full((n, n), float("-inf")).triu(1)
            if own_leaf and level > 0:
                own = node["own"]
                for i in range(n):
                    for j in range(i):
                        if not (own[j] == -1 or own[j] == own[i] or own[i] == -2):
                            mask[i, j] = float("-inf")
            mask = mask[None, None]
            for layer_idx in range(lo, hi):
                layer = inner.layers[layer_idx]
                h_in = node["h"]
                cache = DynamicCache()
                node["h"] = layer(h_in, attention_mask=mask, position_embeddings=(cos, sin),
                                  **compat.cache_kwargs(layer, cache))
                keys, values = cache.layers[layer_idx].keys, cache.layers[layer_idx].values
                node["kv"].append((keys, values))
            ctx_len = n - P - S
            if keep >= ctx_len:
                continue
            # significance at the node's last layer, from the full query projection
            attn = layer.self_attn
            x = layer.input_layernorm(h_in)
            q = attn.q_proj(x).view(1, n, n_h, d)
            if hasattr(attn, "q_norm"):
                q = attn.q_norm(q)
            q = q.transpose(1, 2)
            half = d // 2
            rot = torch.cat([-q[..., half:], q[..., :half]], dim=-1)
            q = q * cos[:, None] + rot * sin[:, None]
            k_full = keys.repeat_interleave(n_h // n_kv, dim=1)
            logits = (q[0, :, -1:, :] @ k_full[0].transpose(-1, -2))[:, 0] * attn.scaling  # [n_h, n]
            a = logits.float().max(dim=0).values
            if bias is not None:
                dist = torch.tensor([node["pos"][-1] - p for p in node["pos"]])
                a = a - bias[hi - 1][dist]
            ctx_scores = a[P : P + ctx_len]
            order = torch.argsort(ctx_scores, descending=True)[:keep]
            kept = [i for i in range(P)] + sorted((P + order).tolist()) + [n - S + i for i in range(S)]
            idx = torch.tensor(kept)
            node["h"] = node["h"][:, idx]
            node["pos"] = [node["pos"][i] for i in kept]
            node["own"] = [node["own"][i] for i in kept]
            node["kv"] = [(k[:, :, idx], v[:, :, idx]) for k, v in node["kv"]]
        if level == H:
            break
        merged = []
        for i in range(0, len(nodes), 2):
            a_, b_ = nodes[i], nodes[i + 1]

            def cat(x, y, dim):
                nx, ny = x.shape[dim], y.shape[dim]
                pre = (x.narrow(dim, 0, P) + y.narrow(dim, 0, P)) / 2
                suf = (x.narrow(dim, nx - S, S) + y.narrow(dim, ny - S, S)) / 2
                return torch.cat([pre, x.narrow(dim, P, nx - P - S), y.narrow(dim, P, ny - P - S), suf], dim)

            merged.append({
                "h": cat(a_["h"], b_["h"], 1),
                "pos": a_["pos"][:P] + a_["pos"][P:-S] + b_["pos"][P:-S] + a_["pos"][-S:],
                "kv": [(cat(ka, kb, 2), cat(va, vb, 2)) for (ka, va), (kb, vb) in zip(a_["kv"], b_["kv"], strict=True)],
                "nat": a_["nat"] + b_["nat"],
                "own": a_["own"][:P] + a_["own"][P:-S] + b_["own"][P:-S] + a_["own"][-S:],
            })
        nodes = merged
    root = nodes[0]
    logits = model.lm_head(inner.norm(root["h"][:, -1:]))[0, -1].float()
    return root["kv"], logits


@pytest.mark.parametrize("context_len,leaves", [(200, 2), (400, 4)])
@pytest.mark.parametrize("calibrated", [False, True])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_engine_equals_slow_reference(context_len, leaves, calibrated, arch):
    _check_against_reference(context_len, leaves, calibrated, arch, own_leaf=False)


@pytest.mark.parametrize("context_len,leaves", [(200, 2), (400, 4)])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_own_leaf_merges_equal_slow_reference(context_len, leaves, attn):
    _check_against_reference(context_len, leaves, True, "llama", own_leaf=True, attn=attn)


def test_own_leaf_keeps_left_children_and_changes_right_ones():
    """Two leaves, the root prunes nothing: the left child's tokens saw only their own leaf anyway,
    so own-leaf leaves their root-layer keys unchanged and changes the right child's."""
    model = tiny_model("llama", vocab=VOCAB, window=256)
    parts = compat.model_parts(model)
    P, S, C = 6, 5, 200
    ids = _ids(P + C + S, seed=3)
    plan = make_plan(P, C, S, chunk_len=128, cache_len=128, num_layers=6, warmup_layers=2)
    a, b = compress(parts, plan, ids), compress(parts, plan, ids, own_leaf=True)
    assert torch.equal(a.kept, b.kept)
    left_end = P + plan.leaf_ranges()[0][1]
    left = (a.kept >= P) & (a.kept < left_end)
    right = (a.kept >= left_end) & (a.kept < P + C)
    assert left.sum() > 0 and right.sum() > 0
    top = a.kv[-1][0]
    torch.testing.assert_close(top[:, :, left], b.kv[-1][0][:, :, left], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(top[:, :, right], b.kv[-1][0][:, :, right], atol=1e-4)


def _check_against_reference(context_len, leaves, calibrated, arch, *, own_leaf, attn="sdpa"):
    model = tiny_model(arch, attn=attn, vocab=VOCAB, window=256)
    parts = compat.model_parts(model)
    P, S, M, W = 6, 5, 128, 2
    ids = _ids(P + context_len + S, seed=context_len)
    bias = torch.linspace(0, 3, M).repeat(6, 1) if calibrated else None
    plan = make_plan(P, context_len, S, chunk_len=M, cache_len=M, num_layers=6, warmup_layers=W)
    assert plan.num_leaves == leaves
    ctx = compress(parts, plan, ids, bias=bias, own_leaf=own_leaf)
    with torch.no_grad():
        ref_kv, ref_logits = _reference_homer(model, ids, P, S, M, W, bias, own_leaf=own_leaf)
    assert ctx.cache_tokens == ref_kv[0][0].shape[2] == M
    for (k, v), (rk, rv) in zip(ctx.kv, ref_kv, strict=True):
        torch.testing.assert_close(k, rk, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(v, rv, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ctx.last_logits, ref_logits, atol=1e-5, rtol=1e-4)


def _assert_same_tree(model_a, model_b, plan, ids) -> None:
    """Both models compress ``ids`` with ``plan`` to the same last logits and per-layer K/V."""
    a = compress(compat.model_parts(model_a), plan, ids)
    b = compress(compat.model_parts(model_b), plan, ids)
    torch.testing.assert_close(a.last_logits, b.last_logits, atol=1e-5, rtol=1e-4)
    for (ka, va), (kb, vb) in zip(a.kv, b.kv, strict=True):
        torch.testing.assert_close(ka, kb, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-4)


def test_eager_equals_sdpa_through_a_tree():
    sdpa = tiny_model("llama", attn="sdpa", vocab=VOCAB)
    eager = tiny_model("llama", attn="eager", vocab=VOCAB)
    ids = _ids(6 + 500 + 5, seed=3)
    plan = make_plan(6, 500, 5, chunk_len=128, cache_len=128, num_layers=6, warmup_layers=2)
    assert plan.height == 3
    _assert_same_tree(sdpa, eager, plan, ids)


def test_position_ids_never_reach_attention(monkeypatch, tiny_homer):
    """Merged chunks restart position ids; if they reached attention, flash/mask code would split them."""
    from homer_llm import GenerationConfig

    seen = []
    original = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def guarded(module, query, key, value, attention_mask, **kwargs):
        seen.append(kwargs.get("position_ids"))
        return original(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", guarded)
    tiny_homer.homer = tiny_homer.homer.__class__(chunk_len=128, pruning="uncalibrated")
    answer = tiny_homer.ask("word " * 200, "Which word?", config=GenerationConfig(max_new_tokens=3))
    assert answer.tree_height >= 2
    assert seen and all(p is None for p in seen)


def test_kept_indices_name_the_surviving_prompt_tokens():
    model = tiny_model("llama", vocab=VOCAB, window=256)
    parts = compat.model_parts(model)
    P, C, S = 6, 400, 5
    ids = _ids(P + C + S, seed=4)
    plan = make_plan(P, C, S, chunk_len=128, cache_len=128, num_layers=6, warmup_layers=2)
    ctx = compress(parts, plan, ids)
    kept = ctx.kept.tolist()
    assert len(kept) == ctx.cache_tokens == 128
    assert kept == sorted(set(kept))  # document order, no repeats
    assert kept[:P] == list(range(P)) and kept[-S:] == list(range(P + C, P + C + S))
    # the kept context tokens are the ones whose embeddings carry through: run a one-chunk plain
    # pass over exactly those ids and the first layer's values match (values of layer 0 depend
    # only on the token and not on position or context)
    one = compress(parts, make_plan(P, 128 - P - S, S, chunk_len=128, cache_len=128, num_layers=6),
                   ids[torch.tensor(kept)])
    torch.testing.assert_close(ctx.kv[0][1], one.kv[0][1])
    flat = compress(parts, make_plan(P, 100, S, chunk_len=128, cache_len=128, num_layers=6), ids[: P + 100 + S])
    assert flat.kept.tolist() == list(range(P + 100 + S))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_reread_suffix_equals_the_model_reading_the_question_after_the_merged_cache(arch):
    """The reread suffix is what the model's own forward computes for the suffix tokens after
    the pruned prefix + context cache, at the suffix's position ids; the rest of the cache is the
    tree's, untouched; compress(reread_suffix=True) is that same result."""
    model = tiny_model(arch, vocab=VOCAB, window=256)
    parts = compat.model_parts(model)
    P, C, S = 6, 400, 5
    ids = _ids(P + C + S, seed=6)
    plan = make_plan(P, C, S, chunk_len=128, cache_len=128, num_layers=6, warmup_layers=2)
    assert plan.num_leaves == 4
    tree = compress(parts, plan, ids)
    reread = reread_suffix(parts, tree, ids[-S:])
    assert reread.cache_tokens == tree.cache_tokens and reread.next_position == tree.next_position
    assert torch.equal(reread.kept, tree.kept)
    past = DynamicCache()
    for index, (k, v) in enumerate(tree.kv):
        past.update(k[:, :, :-S].clone(), v[:, :, :-S].clone(), index)
    start = tree.next_position - S
    with torch.no_grad():
        out = model(ids[-S:][None], position_ids=torch.arange(start, start + S)[None], use_cache=True,
                    **compat.cache_kwargs(model, past))
    torch.testing.assert_close(reread.last_logits, out.logits[0, -1].float(), atol=1e-5, rtol=1e-4)
    for (k, v), (tk, tv), layer in zip(reread.kv, tree.kv, compat.output_cache(out).layers, strict=True):
        assert torch.equal(k[:, :, :-S], tk[:, :, :-S]) and torch.equal(v[:, :, :-S], tv[:, :, :-S])
        torch.testing.assert_close(k, layer.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(v, layer.values, atol=1e-5, rtol=1e-4)
    # the averaged suffix differs from the one read afresh (else the option would be moot)
    assert not torch.allclose(reread.last_logits, tree.last_logits, atol=1e-3)
    direct = compress(parts, plan, ids, reread_suffix=True)
    torch.testing.assert_close(direct.last_logits, reread.last_logits, atol=1e-6, rtol=1e-6)
    for (k, v), (rk, rv) in zip(direct.kv, reread.kv, strict=True):
        torch.testing.assert_close(k, rk, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(v, rv, atol=1e-6, rtol=1e-6)


def test_reread_suffix_leaves_a_one_leaf_prompt_alone():
    """One leaf: nothing was averaged, so the engine keeps the prefill's own suffix states."""
    model = tiny_model("llama", vocab=VOCAB)
    parts = compat.model_parts(model)
    ids = _ids(90)
    plan = make_plan(4, 80, 6, chunk_len=128, cache_len=128, num_layers=6)
    a, b = compress(parts, plan, ids), compress(parts, plan, ids, reread_suffix=True)
    assert torch.equal(a.last_logits, b.last_logits)
    with pytest.raises(ValueError, match="does not fit"):
        reread_suffix(parts, a, ids)


def test_peak_kv_grows_with_log_length():
    """8x the length costs at most 2x the live K/V (full attention would cost 8x)."""
    model = tiny_model("llama", vocab=VOCAB, layers=8, window=256)
    parts = compat.model_parts(model)
    peaks = {}
    for factor in (1, 8):
        C = 4 * 117 * factor  # 4 leaves at 1x, 32 leaves at 8x
        plan = make_plan(6, C, 5, chunk_len=128, cache_len=128, num_layers=8, warmup_layers=2)
        peaks[factor] = compress(parts, plan, _ids(6 + C + 5)).stats.peak_kv_bytes
    assert peaks[8] <= 2 * peaks[1], peaks
    # and it is not trivially small: at least one full chunk's K/V for every layer
    assert peaks[1] >= 8 * 2 * 2 * 16 * 128 * 4


def test_batch_and_length_mismatch_refused():
    model = tiny_model("llama", vocab=VOCAB)
    parts = compat.model_parts(model)
    plan = make_plan(2, 20, 2, chunk_len=128, cache_len=128, num_layers=6)
    with pytest.raises(ValueError, match="batch 1"):
        compress(parts, plan, _ids(24)[None].repeat(2, 1))
    with pytest.raises(ValueError, match="plan is for 24 tokens"):
        compress(parts, plan, _ids(30))


def test_bf16_pass_runs_and_is_close_to_fp32():
    fp32 = tiny_model("llama", vocab=VOCAB)
    bf16 = tiny_model("llama", vocab=VOCAB, dtype=torch.bfloat16)
    plan = make_plan(4, 80, 6, chunk_len=128, cache_len=128, num_layers=6)
    ids = _ids(90)
    a = compress(compat.model_parts(fp32), plan, ids)
    b = compress(compat.model_parts(bf16), plan, ids)
    assert b.kv[0][0].dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(a.last_logits, b.last_logits, dim=0) > 0.99


def test_repeat_kv_sdpa_switch_keeps_every_output(tokenizer):
    """The float32-GQA sdpa variant (used on CUDA) gives the same logits, tree K/V and greedy tokens.

    On CUDA the switch keeps long float32 prefills off PyTorch's math kernel; here (CPU) it is
    forced, to check that it computes what sdpa computes and that transformers routes through it.
    """
    from homer_llm import GenerationConfig, HomerModel, split_text

    base = tiny_model("llama", vocab=len(tokenizer))
    switched = tiny_model("llama", vocab=len(tokenizer))
    assert compat.use_sdpa_repeat_kv(switched) is False  # CPU: nothing changes
    compat._switch_to_repeat_kv(switched)
    assert switched.config._attn_implementation == compat.SDPA_REPEAT_KV
    assert compat.model_parts(switched).attn_implementation == "sdpa"  # masks as for sdpa

    calls = []
    real = ALL_ATTENTION_FUNCTIONS[compat.SDPA_REPEAT_KV]

    def spy(module, query, key, value, *args, **kwargs):
        calls.append((query.shape[1], key.shape[1], query.shape[2]))
        return real(module, query, key, value, *args, **kwargs)

    ALL_ATTENTION_FUNCTIONS[compat.SDPA_REPEAT_KV] = spy
    try:
        ids = _ids(6 + 500 + 5, seed=4)
        plan = make_plan(6, 500, 5, chunk_len=128, cache_len=128, num_layers=6, warmup_layers=2)
        _assert_same_tree(base, switched, plan, ids)
        with torch.no_grad():
            x = torch.randint(5, len(tokenizer), (1, 300), generator=torch.Generator().manual_seed(1))
            torch.testing.assert_close(switched(x).logits, base(x).logits, atol=1e-5, rtol=1e-4)
        parts = split_text(tokenizer, "Instruction: ", "some document text " * 40, " Question?")
        gen = GenerationConfig(max_new_tokens=12)
        out_a = HomerModel(base, tokenizer, name="a").generate(parts, gen)
        out_b = HomerModel(switched, tokenizer, name="b").generate(parts, gen)
        assert list(out_a.token_ids) == list(out_b.token_ids)
    finally:
        ALL_ATTENTION_FUNCTIONS[compat.SDPA_REPEAT_KV] = real
    assert calls, "transformers did not route attention through the registered variant"
    assert all(heads == 4 and kv == 2 for heads, kv, _ in calls)  # K/V arrive grouped; the variant repeats them


def test_repeat_kv_sdpa_hands_pytorch_repeated_heads_without_enable_gqa(monkeypatch):
    """What reaches torch's sdpa: float32 prefill -> repeated K/V, no enable_gqa; decode and bf16 unchanged."""
    import torch.nn.functional as F

    seen = []
    real = F.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        seen.append((key.shape[1], bool(kwargs.get("enable_gqa", False))))
        return real(query, key, value, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    module = tiny_model("llama", vocab=VOCAB).model.layers[0].self_attn
    for dtype, q_len, expect in [(torch.float32, 40, (4, False)), (torch.bfloat16, 40, (2, True))]:
        q = torch.randn(1, 4, q_len, 16, dtype=dtype)
        k, v = torch.randn(1, 2, q_len, 16, dtype=dtype), torch.randn(1, 2, q_len, 16, dtype=dtype)
        out, _ = compat._sdpa_repeat_kv(module, q, k, v, None, scaling=0.25)
        assert out.shape == (1, q_len, 4, 16) and seen[-1] == expect


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_no_deprecated_cache_keyword_reaches_transformers(arch):
    """The engine hands a layer its cache under the name that layer declares (``cache`` from
    transformers 5.24, ``past_key_values`` before), so no deprecation warning is raised: the
    old name is removed in 5.40."""
    import inspect
    import warnings

    model = tiny_model(arch, vocab=VOCAB)
    parts = compat.model_parts(model)
    layer = parts.layers[0]
    assert next(iter(compat.cache_kwargs(layer, None))) in inspect.signature(type(layer).forward).parameters
    assert next(iter(compat.cache_kwargs(model, None))) in inspect.signature(type(model).forward).parameters
    plan = make_plan(4, 300, 6, chunk_len=128, cache_len=128, num_layers=6)
    assert plan.num_leaves > 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        ctx = compress(parts, plan, _ids(310))
        reread_suffix(parts, ctx, _ids(310)[-6:])
        with torch.no_grad():
            out = model(_ids(8)[None], use_cache=True)
            model(_ids(1)[None], use_cache=True, **compat.cache_kwargs(model, compat.output_cache(out)))


@pytest.mark.parametrize("value", ["own_leaf", "full", None])
def test_bad_merge_attention(value):
    from homer_llm import HomerConfig

    with pytest.raises(ValueError, match="merge_attention"):
        HomerConfig(merge_attention=value)


def test_model_with_own_leaf_merges_runs_the_own_leaf_tree(tokenizer):
    """HomerConfig(merge_attention="own-leaf") reaches the engine: the model's cache is the engine's
    own-leaf tree, not the causal one."""
    from homer_llm import HomerConfig, HomerModel

    model = tiny_model("llama", vocab=len(tokenizer))
    causal = HomerModel(model, tokenizer, name="t", homer=HomerConfig(calibration_samples=1, merge_attention="causal"))
    own = HomerModel(model, tokenizer, name="t", homer=HomerConfig(calibration_samples=1, merge_attention="own-leaf"))
    auto = HomerModel(model, tokenizer, name="t", homer=HomerConfig(calibration_samples=1))
    assert auto.homer.merge_attention == "own-leaf"  # the default on a maskable backend without focus
    parts = causal.prepare_question("the box holds seven coins. " * 20, "How many coins?")
    plan = causal.plan(parts)
    assert plan.num_leaves > 1
    a, b = causal.compress(parts), own.compress(parts)
    ref = compress(own.parts, plan, torch.tensor(parts.ids), bias=own.bias_table(), reread_suffix=True, own_leaf=True)
    torch.testing.assert_close(b.last_logits, ref.last_logits)
    assert not torch.allclose(a.last_logits, b.last_logits)


def test_arbitrary_masks_refused_for_flash_attention():
    parts = compat.model_parts(tiny_model("llama", vocab=VOCAB))
    flash = type(parts)(**{**parts.__dict__, "attn_implementation": "flash_attention_2"})
    with pytest.raises(TypeError, match="flash_attention_2"):
        compat.mask_from_allowed(flash, torch.ones(3, 3, dtype=torch.bool), torch.float32)


def test_own_leaf_with_flash_attention_refused_at_construction(tokenizer):
    from homer_llm import HomerConfig, HomerModel

    model = tiny_model("llama", vocab=len(tokenizer))
    model.config._attn_implementation = "flash_attention_2"  # only the name is read before any forward
    with pytest.raises(ValueError, match="own-leaf.*flash_attention_2"):
        HomerModel(model, tokenizer, name="t", homer=HomerConfig(merge_attention="own-leaf"))


@pytest.mark.parametrize(("asked", "impl", "focus", "resolved"), [
    ("auto", "sdpa", 0, "own-leaf"), ("auto", "eager", 0, "own-leaf"), ("auto", "flash_attention_2", 0, "causal"),
    ("auto", "sdpa", 2, "causal"), ("causal", "sdpa", 0, "causal"), ("own-leaf", "eager", 2, "own-leaf"),
])
def test_auto_merge_attention_resolves_by_backend_and_focus(asked, impl, focus, resolved):
    """"auto" (the default) is own-leaf only where measured better: a maskable backend, no focus."""
    from homer_llm import HomerConfig
    from homer_llm.model import resolve_merge_attention

    assert resolve_merge_attention(HomerConfig(merge_attention=asked, focus_leaves=focus), impl) == resolved


def test_default_config_under_flash_attention_stays_causal(tokenizer):
    from homer_llm import HomerModel

    model = tiny_model("llama", vocab=len(tokenizer))
    model.config._attn_implementation = "flash_attention_2"
    assert HomerModel(model, tokenizer, name="t").homer.merge_attention == "causal"
