"""DocumentCache: LRU + byte budget, pinning, tiers, disk integrity, thread safety, reuse modes."""

from __future__ import annotations

import random
import struct
import threading

import pytest
import torch

from homer_llm import CompressedContext, CompressionStats, HomerConfig, HomerModel, doc_cache, reuse
from homer_llm.doc_cache import DocumentCache, decode_file, encode_file, make_key
from homer_llm.generation import extend_context

DOC = "".join(f"Line {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7} coins. " for i in range(24))
GENERIC = "\n\nKeep the facts."  # the default generic suffix is long in a char-level tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


def fake_ctx(n_tokens: int, *, layers: int = 2, dtype=torch.float32, seed: int = 0) -> CompressedContext:
    """A CompressedContext with exactly known byte size: 2 * layers * (1*2*n*4) elements + 16 logits."""
    g = torch.Generator().manual_seed(seed)
    kv = tuple((torch.randn(1, 2, n_tokens, 4, generator=g).to(dtype), torch.randn(1, 2, n_tokens, 4, generator=g).to(dtype))
               for _ in range(layers))
    stats = CompressionStats(n_tokens, n_tokens, 0, 1, 0, 0.0)
    return CompressedContext(kv, n_tokens, torch.randn(16, generator=g), stats)


def nbytes(ctx: CompressedContext) -> int:
    return doc_cache.value_nbytes(ctx)


def key(i: int) -> str:
    return f"{i:064x}"


def same(a: CompressedContext, b: CompressedContext) -> bool:
    return all(torch.equal(x, y) for (ka, va), (kb, vb) in zip(a.kv, b.kv, strict=True) for x, y in ((ka, kb), (va, vb))) \
        and torch.equal(a.last_logits, b.last_logits) and a.next_position == b.next_position


# ---------------------------------------------------------------------------------------- LRU + budget
def test_lru_order_and_byte_budget():
    size = nbytes(fake_ctx(8))
    cache = DocumentCache(max_bytes=2 * size)
    cache.put(key(1), fake_ctx(8, seed=1))
    cache.put(key(2), fake_ctx(8, seed=2))
    assert cache.stats()["bytes"] == 2 * size
    assert cache.get(key(1)) is not None  # key 1 becomes most recent
    cache.put(key(3), fake_ctx(8, seed=3))  # over budget: the LRU entry (2) goes
    assert cache.keys() == [key(1), key(3)]
    assert cache.get(key(2)) is None
    s = cache.stats()
    assert (s["hits"], s["misses"], s["evictions"], s["bytes"], s["entries"]) == (1, 1, 1, 2 * size, 2)
    # a bigger entry evicts as many LRU entries as needed
    cache.put(key(4), fake_ctx(12, seed=4))
    assert cache.keys() == [key(4)] and cache.stats()["bytes"] == nbytes(fake_ctx(12))
    assert cache.stats()["evictions"] == 3


def test_entry_larger_than_budget_is_not_kept():
    cache = DocumentCache(max_bytes=100)
    cache.put(key(1), fake_ctx(64))
    assert len(cache) == 0 and cache.stats()["bytes"] == 0 and cache.stats()["uncacheable"] == 1


def test_evict_and_clear():
    cache = DocumentCache()
    cache.put(key(1), fake_ctx(4))
    cache.put(key(2), fake_ctx(4))
    assert cache.evict(key(1)) and not cache.evict(key(1))
    assert key(1) not in cache and key(2) in cache
    cache.clear()
    assert len(cache) == 0 and cache.stats()["bytes"] == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_bytes"):
        DocumentCache(max_bytes=-1)
    with pytest.raises(ValueError, match="reuse mode"):
        DocumentCache(mode="fuzzy")
    with pytest.raises(TypeError, match="cannot cache"):
        doc_cache.encode_value("not a context")


# ---------------------------------------------------------------------------------------- pinning
def test_pinned_entry_survives_pressure_then_goes():
    size = nbytes(fake_ctx(8))
    cache = DocumentCache(max_bytes=2 * size)
    cache.put(key(1), fake_ctx(8, seed=1))
    with cache.pinned(key(1)) as value:
        assert value is not None
        cache.put(key(2), fake_ctx(8, seed=2))
        cache.put(key(3), fake_ctx(8, seed=3))  # key 1 is LRU but pinned: key 2 goes instead
        assert key(1) in cache.keys() and key(2) not in cache.keys()
        cache.put(key(4), fake_ctx(8, seed=4))
        cache.put(key(5), fake_ctx(8, seed=5))
        assert key(1) in cache.keys()
        assert cache.stats()["pinned"] == 1
        with pytest.raises(RuntimeError, match="pinned"):
            cache.evict(key(1))
        cache.clear()  # clear keeps pinned entries
        assert cache.keys() == [key(1)]
    assert cache.stats()["pinned"] == 0
    cache.put(key(6), fake_ctx(8, seed=6))
    cache.put(key(7), fake_ctx(8, seed=7))
    assert key(1) not in cache.keys()


def test_all_pinned_goes_over_budget_until_released():
    size = nbytes(fake_ctx(8))
    cache = DocumentCache(max_bytes=size)
    cache.put(key(1), fake_ctx(8, seed=1))
    with cache.pinned(key(1)):
        cache.put(key(2), fake_ctx(8, seed=2))  # 1 is pinned, so the only unpinned entry (2) goes
        assert cache.keys() == [key(1)]
    assert cache.stats()["bytes"] <= size


# ---------------------------------------------------------------------------------------- CPU tier
def test_cpu_tier_takes_evicted_entries_and_promotes_on_hit():
    size = nbytes(fake_ctx(8))
    cache = DocumentCache(max_bytes=size, cpu_max_bytes=size)
    a, b, c = fake_ctx(8, seed=1), fake_ctx(8, seed=2), fake_ctx(8, seed=3)
    cache.put(key(1), a)
    cache.put(key(2), b)  # 1 -> CPU tier
    s = cache.stats()
    assert s["cpu_entries"] == 1 and s["cpu_bytes"] == size and s["evictions"] == 1
    got = cache.get(key(1))  # promoted back, 2 moves down
    assert got is not None and same(got, a)
    assert cache.keys() == [key(1)] and cache.stats()["cpu_hits"] == 1
    cache.put(key(3), c)  # 1 -> CPU, CPU tier full: 2 dropped
    assert cache.get(key(2)) is None and cache.stats()["cpu_evictions"] == 1


# ---------------------------------------------------------------------------------------- disk tier
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_disk_round_trip(tmp_path, dtype):
    ctx = fake_ctx(6, layers=3, dtype=dtype)
    DocumentCache(disk_dir=tmp_path).put(key(1), ctx)
    fresh = DocumentCache(disk_dir=tmp_path)  # a new process would see only the files
    got = fresh.get(key(1))
    assert got is not None and same(got, ctx) and got.kv[0][0].dtype == dtype
    assert got.stats == ctx.stats
    s = fresh.stats()
    assert s["disk_hits"] == 1 and s["hits"] == 1 and s["entries"] == 1


def test_leaf_states_disk_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    leaves = reuse.LeafStates(
        kv=tuple(tuple((torch.randn(1, 2, n, 4, generator=g), torch.randn(1, 2, n, 4, generator=g)) for _ in range(3))
                 for n in (5, 4)),
        hidden=(torch.randn(1, 5, 8, generator=g), torch.randn(1, 4, 8, generator=g)),
        prefix_len=2, context_len=5, suffix_budget=7,
    )
    got = decode_file(encode_file(key(9), leaves), key(9))
    assert isinstance(got, reuse.LeafStates) and got.meta() == leaves.meta()
    assert all(torch.equal(x, y) for x, y in zip(got.tensors().values(), leaves.tensors().values(), strict=True))


def _file(tmp_path, k: str):
    return tmp_path / f"{k}.safetensors"


def _corrupt_data_byte(path):
    blob = bytearray(path.read_bytes())
    n = struct.unpack("<Q", blob[:8])[0]
    blob[8 + n + 5] ^= 0x40
    path.write_bytes(bytes(blob))


def _truncate(path):
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 10])


def _edit_header_shape(path):
    # change a tensor's declared shape without touching the data: the index digest must catch it
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    head = blob[8 : 8 + n].replace(b'"shape":[1,2,', b'"shape":[2,1,', 1)
    assert head != blob[8 : 8 + n]
    path.write_bytes(blob[:8] + head + blob[8 + n :])


def _garbage_header(path):
    blob = bytearray(path.read_bytes())
    blob[10:20] = b"\xff" * 10
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage", [_corrupt_data_byte, _truncate, _edit_header_shape, _garbage_header])
def test_damaged_disk_entry_is_detected_never_parsed_and_recomputed(tiny_homer, tmp_path, monkeypatch, damage):
    parts = tiny_homer.prepare_question(DOC, "How many coins are in box 3?")
    first = DocumentCache(disk_dir=tmp_path, mode="exact")
    ctx, hit = first.get_or_compress(tiny_homer, parts)
    assert not hit and first.stats()["disk_writes"] == 1
    (path,) = tmp_path.glob("*.safetensors")
    damage(path)

    parsed = []
    real_parse = doc_cache._parse
    monkeypatch.setattr(doc_cache, "_parse", lambda blob: parsed.append(len(blob)) or real_parse(blob))
    second = DocumentCache(disk_dir=tmp_path, mode="exact")
    again, hit = second.get_or_compress(tiny_homer, parts)
    assert not hit, "a damaged entry must not count as a hit"
    assert parsed == [], "damaged bytes reached the safetensors parser"
    s = second.stats()
    assert s["corrupt"] == 1 and s["misses"] == 1 and s["disk_writes"] == 1
    assert same(again, ctx)  # recomputed, same result
    # the rewritten file is valid again
    third = DocumentCache(disk_dir=tmp_path, mode="exact")
    _, hit = third.get_or_compress(tiny_homer, parts)
    assert hit and third.stats()["disk_hits"] == 1 and parsed


def test_disk_file_for_another_key_is_rejected(tmp_path):
    cache = DocumentCache(disk_dir=tmp_path)
    cache.put(key(1), fake_ctx(4))
    _file(tmp_path, key(1)).rename(_file(tmp_path, key(2)))
    fresh = DocumentCache(disk_dir=tmp_path)
    assert fresh.get(key(2)) is None and fresh.stats()["corrupt"] == 1
    assert not _file(tmp_path, key(2)).exists()


def test_disk_budget_drops_oldest_files(tmp_path):
    one = len(encode_file(key(1), fake_ctx(8)))
    cache = DocumentCache(disk_dir=tmp_path, disk_max_bytes=2 * one)
    for i in range(1, 4):
        cache.put(key(i), fake_ctx(8, seed=i))
    names = {p.stem for p in tmp_path.glob("*.safetensors")}
    assert names == {key(2), key(3)} and cache.stats()["disk_evictions"] == 1


def test_keys_must_be_hex_for_disk(tmp_path):
    with pytest.raises(ValueError, match="hex"):
        DocumentCache(disk_dir=tmp_path).put("../escape", fake_ctx(2))


# ---------------------------------------------------------------------------------------- threads
def test_concurrent_get_put_keeps_accounting_consistent():
    size = nbytes(fake_ctx(8))
    cache = DocumentCache(max_bytes=5 * size, cpu_max_bytes=3 * size)
    values = {i: fake_ctx(8, seed=i) for i in range(12)}
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                i = rng.randrange(12)
                op = rng.random()
                if op < 0.45:
                    got = cache.get(key(i))
                    assert got is None or same(got, values[i])
                elif op < 0.9:
                    cache.put(key(i), values[i])
                elif op < 0.97:
                    with cache.pinned(key(i)) as got:
                        assert got is None or same(got, values[i])
                else:
                    try:
                        cache.evict(key(i))
                    except RuntimeError:
                        pass  # pinned by another thread
        except BaseException as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    s = cache.stats()
    assert s["bytes"] == len(cache) * size <= 5 * size
    assert s["cpu_bytes"] == s["cpu_entries"] * size <= 3 * size
    assert s["pinned"] == 0


def test_concurrent_requests_for_one_document_compress_once(tiny_homer):
    calls = []
    real = tiny_homer.compress

    def counting(parts, **kw):
        calls.append(len(parts))
        return real(parts, **kw)

    tiny_homer.compress = counting
    cache = DocumentCache(mode="agnostic", generic_suffix=GENERIC)
    questions = [f"How many coins are in box {i}?" for i in range(4)]
    results: dict[int, tuple] = {}

    def ask(i: int) -> None:
        results[i] = cache.get_or_compress(tiny_homer, tiny_homer.prepare_question(DOC, questions[i]))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(hit for _, hit in results.values()) == [False, True, True, True]
    assert cache.stats()["hits"] == 3 and cache.stats()["misses"] == 1


# ---------------------------------------------------------------------------------------- keys
def test_key_depends_on_what_changes_the_states(tokenizer):
    from tiny import tiny_model

    a = HomerModel(tiny_model("llama", vocab=len(tokenizer)), tokenizer, name="m")
    b = HomerModel(tiny_model("llama", vocab=len(tokenizer), seed=1), tokenizer, name="m")  # other weights
    c = HomerModel(a.model, tokenizer, name="m", homer=HomerConfig(warmup_layers=1))
    d = HomerModel(a.model, tokenizer, name="m", homer=HomerConfig(prune_unit="word"))
    p, x, s = (1, 2), (3, 4, 5), (6,)
    base = make_key(a, p, x, None, mode="agnostic")
    assert base == make_key(a, p, x, None, mode="agnostic")
    assert len({base, make_key(b, p, x, None, mode="agnostic"), make_key(c, p, x, None, mode="agnostic"),
                make_key(a, p, (3, 4, 6), None, mode="agnostic"), make_key(a, (1,), x, None, mode="agnostic"),
                make_key(a, p, x, s, mode="agnostic"), make_key(a, p, x, None, mode="leaf"),
                make_key(a, p, x, None, mode="agnostic", namespace="t2"),
                make_key(d, p, x, None, mode="agnostic")}) == 9
    e = HomerModel(a.model, tokenizer, name="m", homer=HomerConfig(merge_attention="causal"))
    assert make_key(e, p, x, None, mode="agnostic") != base


def test_causal_merge_attention_leaves_keys_as_before_it_existed(tokenizer):
    """A config field added with the behaviour of before must not turn every stored entry into a
    miss: causal merges (the behaviour of keys without the field) keep the old key; the default
    (own-leaf on this backend) computes other states and gets its own."""
    from tiny import tiny_model

    model = tiny_model("llama", vocab=len(tokenizer))
    causal = HomerModel(model, tokenizer, name="m", homer=HomerConfig(merge_attention="causal"))
    identity = doc_cache.model_identity(causal)["homer"]
    assert "merge_attention" not in identity and "focus_margin" in identity
    default = doc_cache.model_identity(HomerModel(model, tokenizer, name="m"))["homer"]
    assert default["merge_attention"] == "own-leaf"


# ---------------------------------------------------------------------------------------- reuse modes
def test_exact_mode_hits_only_identical_prompts(tiny_homer):
    cache = DocumentCache(mode="exact")
    q1 = tiny_homer.prepare_question(DOC, "How many coins are in box 3?")
    q2 = tiny_homer.prepare_question(DOC, "Which box is blue?")
    ctx, hit = cache.get_or_compress(tiny_homer, q1)
    assert not hit and same(ctx, tiny_homer.compress(q1))
    assert cache.get_or_compress(tiny_homer, q1)[1]
    assert not cache.get_or_compress(tiny_homer, q2)[1]


def test_agnostic_mode_appends_each_question_after_one_compression(tiny_homer):
    cache = DocumentCache(mode="agnostic", generic_suffix=GENERIC)
    q1 = tiny_homer.prepare_question(DOC, "How many coins are in box 3?")
    q2 = tiny_homer.prepare_question(DOC, "Which box is blue?")
    assert tiny_homer.plan(q1).num_leaves > 1  # the document really is compressed
    c1, hit1 = cache.get_or_compress(tiny_homer, q1)
    c2, hit2 = cache.get_or_compress(tiny_homer, q2)
    assert (hit1, hit2) == (False, True) and len(cache) == 1
    base = tiny_homer.compress(reuse.agnostic_parts(tiny_homer, q2, GENERIC))
    expected = extend_context(tiny_homer.parts, base, q2.suffix)
    assert torch.allclose(c2.last_logits, expected.last_logits, atol=1e-5)
    assert c2.cache_tokens == base.cache_tokens + len(q2.suffix)
    assert c1.cache_tokens == base.cache_tokens + len(q1.suffix)


def test_agnostic_mode_is_exact_when_the_document_fits_one_chunk(tiny_homer):
    cache = DocumentCache(mode="agnostic", generic_suffix=GENERIC)
    short = "The red box holds 21 coins."
    for question in ("How many coins?", "Which box?"):
        parts = tiny_homer.prepare_question(short, question)
        ctx, _ = cache.get_or_compress(tiny_homer, parts)
        fresh = tiny_homer.compress(parts)
        assert ctx.cache_tokens == fresh.cache_tokens and ctx.next_position == fresh.next_position
        assert torch.allclose(ctx.last_logits, fresh.last_logits, atol=1e-4)
    assert cache.stats()["hits"] == 1


@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("qwen3", "eager"), ("mistral", "sdpa")])
@pytest.mark.parametrize("pruning,unit", [("uncalibrated", "token"), ("random", "token"), ("uncalibrated", "word")])
def test_leaf_mode_equals_a_fresh_compression(tokenizer, arch, attn, pruning, unit):
    from tiny import tiny_model

    hm = HomerModel(tiny_model(arch, attn=attn, vocab=len(tokenizer)), tokenizer, name=f"tiny-{arch}",
                    homer=HomerConfig(pruning=pruning, prune_unit=unit))
    cache = DocumentCache(mode="leaf", suffix_budget=48)
    for i, question in enumerate(("Box 3 coins?", "Blue box?")):  # suffix within the budget cap
        parts = hm.prepare_question(DOC, question)
        assert len(parts.suffix) <= reuse.suffix_budget_for(hm, parts, 48)
        ctx, hit = cache.get_or_compress(hm, parts)
        assert hit == (i == 1)
        fresh = reuse.compress_with_budget(hm, parts, reuse.suffix_budget_for(hm, parts, 48))
        assert fresh.stats.num_leaves > 2
        assert ctx.cache_tokens == fresh.cache_tokens and ctx.next_position == fresh.next_position
        for (k1, v1), (k2, v2) in zip(ctx.kv, fresh.kv, strict=True):
            torch.testing.assert_close(k1, k2, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(v1, v2, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ctx.last_logits, fresh.last_logits, atol=1e-4, rtol=1e-4)


def test_leaf_mode_falls_back_to_exact_for_a_long_suffix(tiny_homer):
    cache = DocumentCache(mode="leaf", suffix_budget=8)
    parts = tiny_homer.prepare_question(DOC, "How many coins are in box number three, exactly?")
    ctx, hit = cache.get_or_compress(tiny_homer, parts)
    assert not hit and same(ctx, tiny_homer.compress(parts))
    assert cache.get_or_compress(tiny_homer, parts)[1]  # cached as an exact entry


@pytest.mark.parametrize(("mode", "locator"), [("agnostic", "tree"), ("leaf", "tree")])
def test_focus_engines_are_cached_exactly(tokenizer, mode, locator):
    """Focus reads the leaves the question points to; with the tree locator nothing question-free
    can be shared, so the sharing modes fall back to exact entries (per question) instead of a
    wrong read."""
    from tiny import tiny_model

    hm = HomerModel(tiny_model(vocab=len(tokenizer)), tokenizer, name="t",
                    homer=HomerConfig(focus_leaves=1, focus_locator=locator))
    cache = DocumentCache(mode=mode, generic_suffix=GENERIC, suffix_budget=48)
    q1 = hm.prepare_question(DOC, "Box 3 coins?")
    q2 = hm.prepare_question(DOC, "Blue box?")
    ctx, hit = cache.get_or_compress(hm, q1)
    assert not hit and same(ctx, hm.compress(q1))
    assert cache.get_or_compress(hm, q1)[1] and not cache.get_or_compress(hm, q2)[1]


def test_agnostic_mode_serves_the_leaf_locator_from_cached_leaves(tokenizer):
    """A question-agnostic compression cannot serve focus; its leaves can: agnostic mode caches them."""
    from tiny import tiny_model

    hm = HomerModel(tiny_model(vocab=len(tokenizer)), tokenizer, name="t",
                    homer=HomerConfig(focus_leaves=1, focus_locator="leaf"))
    cache = DocumentCache(mode="agnostic", generic_suffix=GENERIC, suffix_budget=48)
    leaf_cache = DocumentCache(mode="leaf", suffix_budget=48)
    for i, question in enumerate(("Box 3 coins?", "Blue box?")):
        parts = hm.prepare_question(DOC, question)
        ctx, hit = cache.get_or_compress(hm, parts)
        assert hit == (i == 1)
        assert same(ctx, leaf_cache.get_or_compress(hm, parts)[0])


def test_leaf_mode_serves_the_leaf_locator_from_cached_leaves(tokenizer):
    """focus_locator="leaf" in "leaf" mode: every question after the first reuses the cached leaves
    and gets exactly the focus a fresh leaf_relevance on the same plan gives."""
    from tiny import tiny_model

    from homer_llm.focus import leaf_relevance

    hm = HomerModel(tiny_model(vocab=len(tokenizer)), tokenizer, name="t",
                    homer=HomerConfig(focus_leaves=2, focus_margin=8, focus_locator="leaf"))
    cache = DocumentCache(mode="leaf", suffix_budget=48)
    for i, question in enumerate(("Box 3 coins?", "Blue box?")):
        parts = hm.prepare_question(DOC, question)
        ctx, hit = cache.get_or_compress(hm, parts)
        assert hit == (i == 1)
        plan = reuse.plan_with_budget(hm, parts, reuse.suffix_budget_for(hm, parts, 48))
        assert plan.num_leaves > 2
        with hm.lock:
            relevance = leaf_relevance(hm.parts, plan, torch.tensor(parts.ids))
            fresh = hm._focus(parts, plan, relevance, 0.0)
        leaves = reuse.build_leaf_states(hm, parts, reuse.suffix_budget_for(hm, parts, 48))
        torch.testing.assert_close(reuse.relevance_from_leaves(hm, parts, leaves)[1], relevance, atol=1e-4, rtol=1e-5)
        assert torch.equal(ctx.kept, fresh.kept) and ctx.cache_tokens < len(parts)
        torch.testing.assert_close(ctx.last_logits, fresh.last_logits, atol=1e-4, rtol=1e-4)


def test_no_document_is_never_cached(tiny_homer):
    cache = DocumentCache(generic_suffix=GENERIC)
    parts = tiny_homer.prepare_chat([{"role": "user", "content": "hi"}])
    _, hit = cache.get_or_compress(tiny_homer, parts)
    assert not hit and len(cache) == 0 and cache.stats()["misses"] == 0


def test_disk_tier_serves_a_new_cache_for_every_mode(tiny_homer, tmp_path):
    for mode in ("agnostic", "leaf", "exact"):
        parts = tiny_homer.prepare_question(DOC, "Blue box?")
        ctx, hit = DocumentCache(mode=mode, disk_dir=tmp_path / mode, generic_suffix=GENERIC).get_or_compress(tiny_homer, parts)
        again, hit2 = DocumentCache(mode=mode, disk_dir=tmp_path / mode, generic_suffix=GENERIC).get_or_compress(tiny_homer, parts)
        assert (hit, hit2) == (False, True)
        torch.testing.assert_close(again.last_logits, ctx.last_logits, atol=1e-5, rtol=1e-5)
