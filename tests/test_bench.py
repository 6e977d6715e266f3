"""``homer-llm bench``: shapes, CPU mode end to end, OOM as a result, log growth of HOMER's K/V."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from homer_llm.bench import cli, measure, runner
from homer_llm.bench.analytic import focus_work, layer_flops, plain_work, plan_cost
from homer_llm.bench.configs import (
    SHAPES,
    build_model,
    count_parameters,
    get_shape,
    layer_parameters,
    meta_model,
    weights_bytes,
)
from homer_llm.bench.report import doubling_lengths, format_length, format_table, load_json, parse_length
from homer_llm.bench.runner import Bench, BenchSettings, is_oom

TINY = get_shape("tiny")


def _bench(**kwargs) -> Bench:
    defaults = dict(shape=TINY, device="cpu", lengths=(256, 512), repeats=1, warmup=0, decode_tokens=2)
    defaults.update(kwargs)
    return Bench(BenchSettings(**defaults))


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("name", "params", "kv_heads", "ffn", "vocab", "window", "theta"),
    [
        ("llama2-7b", 6_738_415_616, 32, 11008, 32000, 4096, 10000.0),
        ("llama3-8b", 8_030_261_248, 8, 14336, 128256, 8192, 500000.0),
        ("smollm2-135m", 134_515_008, 3, 1536, 49152, 8192, 100000.0),
    ],
)
def test_full_size_shapes_match_the_published_models(name, params, kv_heads, ffn, vocab, window, theta):
    model = meta_model(get_shape(name))  # meta device: no memory, so 8B is instant
    config = model.config
    assert count_parameters(model) == params
    assert config.num_hidden_layers == (30 if name == "smollm2-135m" else 32)
    assert config.num_key_value_heads == kv_heads
    assert config.intermediate_size == ffn
    assert config.vocab_size == vocab
    assert config.max_position_embeddings == window
    assert config.rope_parameters["rope_theta"] == theta
    assert next(model.parameters()).device.type == "meta"


def test_kv_bytes_per_token_follows_gqa():
    assert get_shape("llama2-7b").kv_bytes_per_token(2) == 2 * 32 * 32 * 128 * 2  # 512 KiB, MHA
    assert get_shape("llama3-8b").kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2  # 128 KiB, GQA 4x smaller


def test_build_model_materialises_random_weights_and_fp32_rotary():
    shape = replace(TINY, tie_embeddings=True)
    model = build_model(shape, device="cpu", dtype=torch.bfloat16, seed=1)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # re-tied after to_empty
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    w = model.model.layers[0].self_attn.q_proj.weight.float()
    assert torch.isfinite(w).all() and 0.015 < w.std().item() < 0.025
    reference = type(model.model.rotary_emb)(model.config)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, reference.inv_freq)
    again = build_model(shape, device="cpu", dtype=torch.bfloat16, seed=1)
    assert torch.equal(again.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    assert weights_bytes(model) < 2 * count_parameters(model) + 4096  # tied matrix counted once
    assert layer_parameters(model) < count_parameters(model)


def test_unknown_config_is_refused():
    with pytest.raises(ValueError, match="unknown benchmark config 'gpt5'"):
        get_shape("gpt5")
    assert "tiny" in SHAPES


# ---------------------------------------------------------------- small pieces


def test_lengths_parse_and_print():
    assert parse_length("4k") == 4096 and parse_length("1M") == 2**20 and parse_length("3000") == 3000
    assert format_length(65536) == "64k" and format_length(2**20) == "1M" and format_length(300) == "300"
    assert doubling_lengths(4096, 2**20)[-1] == 2**20 and len(doubling_lengths(4096, 2**20)) == 9
    with pytest.raises(ValueError, match="cannot read length 'four'"):
        parse_length("four")


def test_settings_validate():
    with pytest.raises(ValueError, match="methods"):
        BenchSettings(shape=TINY, methods=("vllm",))
    with pytest.raises(ValueError, match="bias"):
        BenchSettings(shape=TINY, bias="learned")
    assert BenchSettings(shape=TINY, lengths=(512, 256, 512)).lengths == (256, 512)
    assert BenchSettings(shape=TINY).lengths == TINY.lengths
    with pytest.raises(ValueError, match="merge_attention"):
        BenchSettings(shape=TINY, merge_attention="sibling")
    with pytest.raises(ValueError, match="flash_attention_2"):
        BenchSettings(shape=TINY, merge_attention="own-leaf", attn="flash_attention_2")


def test_homer_rows_run_what_users_get(one_thread, monkeypatch):
    """homer is HomerConfig's default (own-leaf merges on sdpa, suffix re-read), homer-causal the
    same with causal merges, homer-focus the leaf locator then a plain read: each row runs the
    engine the way its label says, and the two tree rows keep the same cache and peak K/V (the mask
    changes who attends, not what is kept alive)."""
    from homer_llm import focus, model

    seen: list[tuple[bool, bool]] = []
    located: list[int] = []
    real_compress, real_locate = model.compress, focus.leaf_relevance

    def spy(parts, plan, ids, **kwargs):
        seen.append((kwargs.get("own_leaf", False), kwargs.get("reread_suffix", False)))
        return real_compress(parts, plan, ids, **kwargs)

    def locate(parts, plan, ids, progress=None):
        located.append(plan.num_leaves)
        return real_locate(parts, plan, ids, progress)

    monkeypatch.setattr(model, "compress", spy)
    monkeypatch.setattr(model, "leaf_relevance", locate)
    bench = _bench(methods=("homer", "homer-causal", "homer-focus"), lengths=(1024,), decode_tokens=1)
    report = bench.run()
    rows = {r.method: r for r in report.results}
    assert all(r.status == "ok" for r in rows.values())
    assert report.meta["homer"]["merge_attention"] == "own-leaf"
    assert report.meta["methods"]["homer-causal"]["merge_attention"] == "causal"
    assert report.meta["methods"]["homer-focus"]["focus_leaves"] == 2
    # one timed run per row: own-leaf + re-read, causal + re-read, then focus: the locator over
    # every leaf of the plan, then one plain read (no re-read: it is one pass)
    leaves = bench.plan(1024).num_leaves
    assert seen == [(True, True), (False, True), (False, False)] and located == [leaves] and leaves > 1
    assert rows["homer"].cache_tokens == rows["homer-causal"].cache_tokens == TINY.window // 2
    assert rows["homer"].kv_peak_bytes == rows["homer-causal"].kv_peak_bytes
    budget = TINY.window - (TINY.window - TINY.window // 2) // 2  # HomerModel.focus_budget
    assert rows["homer-focus"].cache_tokens <= budget
    assert rows["homer"].own_flops == rows["homer-causal"].own_flops  # the floor assumes no masked saving
    assert rows["homer-focus"].work_fraction < 1 and rows["homer"].work_fraction < 1
    for r in rows.values():
        assert r.decode_ms > 0 and 0 < r.floor_fraction and r.own_floor_seconds > 0


def test_merge_attention_of_the_default_row_can_be_pinned(one_thread):
    report = _bench(methods=("homer",), lengths=(512,), decode_tokens=0, merge_attention="causal").run()
    assert report.meta["homer"]["merge_attention"] == "causal" and report.results[0].status == "ok"
    with pytest.raises(ValueError, match="flash_attention_2"):
        BenchSettings(shape=TINY, merge_attention="own-leaf", attn="flash_attention_2")
    with pytest.raises(ValueError, match="focus_leaves"):
        BenchSettings(shape=TINY, focus_leaves=0)


def test_layer_flops_count_the_matmuls_of_one_layer():
    model = build_model(TINY, device="cpu", dtype=torch.float32)
    flops = layer_flops(model)
    kv = TINY.kv_heads * TINY.head_dim
    assert flops.linear_params == TINY.hidden * (2 * TINY.hidden + 2 * kv) + 3 * TINY.hidden * TINY.intermediate
    assert flops.attn_width == TINY.hidden
    assert flops(1) == 2 * flops.linear_params + 4 * TINY.hidden  # one token attends to itself
    assert flops(3, past=2) == 6 * flops.linear_params + 4 * TINY.hidden * (3 * 2 + 6)


@pytest.mark.parametrize("method", ["homer", "homer-causal", "homer-focus"])
def test_own_work_counts_every_layer_pass_the_library_runs(method, monkeypatch, one_thread):
    """The floor's FLOPs, counted from the plan alone, equal those of the decoder-layer calls the
    library makes for the row (tree, suffix re-read, focus locator and plain read), call by call."""
    bench = _bench(methods=(method,), lengths=(1500,), decode_tokens=0)
    calls, tokens = [], []
    real = runner.compat.run_layer

    def counting(parts, index, hidden, pos_emb, mask, past=None):
        tokens.append(hidden.shape[1])
        calls.append(bench.flops(hidden.shape[1], 0 if past is None else past.get_seq_length(index)))
        return real(parts, index, hidden, pos_emb, mask, past)

    monkeypatch.setattr(runner.compat, "run_layer", counting)
    (row,) = bench.run().results
    assert row.status == "ok" and row.own_flops == sum(calls)
    assert row.floor_fraction == pytest.approx(row.own_flops / bench.rate / row.seconds)
    plain = plain_work(1500, TINY.layers, bench.flops)
    assert row.own_flops < plain.flops  # HOMER does less than the dense causal prefill
    assert row.work_fraction == pytest.approx(sum(tokens) / (1500 * TINY.layers))
    if method == "homer-focus":
        plan = bench.plan(1500)
        assert row.own_flops == focus_work(plan, bench.flops, row.cache_tokens).flops


def test_is_oom_recognises_allocation_failures():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_rss_meter_sees_an_allocation(monkeypatch, tmp_path):
    for sampled in (False, True):
        if sampled:  # /proc/self/clear_refs not writable: the sampling thread takes over
            monkeypatch.setattr(measure, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
        meter = measure.RssMeter()
        assert meter.kind == ("process_rss_sampled" if sampled else "process_peak_rss")
        meter.start()
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        if sampled:
            import time

            time.sleep(0.05)
        del block
        meter.stop()
        assert meter.peak - meter.baseline > 48 * 2**20


# ---------------------------------------------------------------- the loop


def test_cpu_mode_end_to_end_writes_table_json_and_plot(tmp_path, capsys, one_thread):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = cli.main([
        "--device", "cpu", "--config", "tiny", "--lengths", "256,1k", "--decode-tokens", "2",
        "--threads", "1", "--json", str(out_json), "--plot", str(out_png),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "homer-llm bench: tiny" in printed and "decode ms/tok" in printed
    assert printed.count(" plain ") >= 2 and printed.count(" homer ") >= 2 and "own floor %" in printed
    assert "homer/homer-causal at 1k: time x" in printed and "homer-focus/plain at 1k" in printed
    data = json.loads(out_json.read_text())
    rows = {(r["method"], r["length"]): r for r in data["results"]}
    assert set(rows) == {(m, n) for m in ("plain", "homer", "homer-causal", "homer-focus") for n in (256, 1024)}
    assert all(r["status"] == "ok" and r["seconds"] > 0 and r["decode_ms"] > 0 for r in rows.values())
    assert all(0 < r["floor_fraction"] and r["own_flops"] > 0 for r in rows.values())
    assert data["meta"]["homer"]["merge_attention"] == "own-leaf"
    assert data["meta"]["dtype"] == ("bfloat16" if runner.compat.cpu_has_amx() else "float32")  # dtype auto
    assert rows["plain", 1024]["cache_tokens"] == 1024
    assert rows["homer", 1024]["cache_tokens"] == TINY.window // 2  # T = M
    assert rows["homer", 1024]["kv_peak_bytes"] < rows["plain", 1024]["kv_peak_bytes"]
    assert rows["plain", 1024]["kv_peak_bytes"] == 1024 * TINY.kv_bytes_per_token(4)
    assert 0 < rows["homer", 1024]["work_fraction"] < 1  # pruned tokens skip the upper layers
    assert data["meta"]["config"]["name"] == "tiny" and data["meta"]["matmul_flops"] > 0
    assert data["complete"] is True
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a saved run can be printed and plotted again without running anything
    again = tmp_path / "again.png"
    assert cli.main(["--replot", str(out_json), "--plot", str(again)]) == 0
    assert format_table(load_json(out_json)) in capsys.readouterr().out
    assert again.read_bytes()[:4] == b"\x89PNG"


def test_oom_is_a_result_and_longer_lengths_are_skipped(monkeypatch, one_thread):
    """Plain runs out of memory at the first length: reported, freed, longer lengths skipped, and
    the next method still runs."""
    calls = []

    def exhausted(self, ids):
        calls.append(ids.numel())
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 32.00 GiB")

    monkeypatch.setattr(Bench, "_plain", exhausted)
    partial = []
    report = _bench(methods=("plain", "homer"), lengths=(256, 512), warmup=1).run(on_result=partial.append)
    assert [len(p.results) for p in partial] == [1, 2, 3, 4] and not partial[-1].complete
    status = {(r.method, r.length): r.status for r in report.results}
    assert status == {("plain", 256): "oom", ("plain", 512): "skipped", ("homer", 256): "ok", ("homer", 512): "ok"}
    assert calls == [256, 256]  # the warm-up and the first length; nothing after the OOM
    oom = next(r for r in report.results if r.status == "oom")
    assert "OutOfMemoryError" in oom.note and oom.seconds is None
    table = format_table(report)
    assert "OOM" in table and "OOM (skip)" in table


def test_oom_during_decode_is_caught_too(monkeypatch, one_thread):
    real = runner.decode_step

    def decode(parts, cache, token, position):
        if cache.get_seq_length() > 300:  # only the plain cache at 512 is this long
            raise torch.OutOfMemoryError("CUDA out of memory during decode")
        return real(parts, cache, token, position)

    monkeypatch.setattr(runner, "decode_step", decode)
    report = _bench(methods=("plain",)).run()
    assert [r.status for r in report.results] == ["ok", "oom"]


def test_other_errors_are_not_swallowed(monkeypatch, one_thread):
    def broken(self, ids):
        raise RuntimeError("shape mismatch in a layer")

    monkeypatch.setattr(Bench, "_plain", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _bench(methods=("plain",)).run()


def test_homer_kv_peak_grows_by_at_most_one_chunk_per_doubling(one_thread):
    """The engine's peak K/V is log in length: each doubling adds one tree level, so at most one
    M-token cache over all layers, while the plain cache doubles."""
    lengths = (256, 512, 1024, 2048)
    report = _bench(methods=("homer",), lengths=lengths, decode_tokens=0).run()
    kv = [r.kv_peak_bytes for r in report.results]
    per_token = TINY.kv_bytes_per_token(4)
    chunk_cache = per_token * (TINY.window // 2)
    steps = [b - a for a, b in zip(kv, kv[1:], strict=False)]
    assert all(0 <= s <= chunk_cache for s in steps), steps
    assert kv[-1] < 2048 * per_token / 3  # far below the plain cache at 2k
    assert [r.tree_height for r in report.results] == [2, 3, 4, 5]


def test_plan_cost_of_a_single_chunk_is_the_dense_work():
    plan = runner.make_plan(8, 100, 8, chunk_len=128, cache_len=128, num_layers=8)
    cost = plan_cost(plan, bytes_per_token_layer=10)
    assert (cost.nodes, cost.prunes, cost.layer_calls) == (1, 0, 8)
    assert cost.token_layers == 116 * 8 and cost.work_fraction == 1.0
    assert cost.kv_peak_bytes == 116 * 8 * 10


@pytest.mark.parametrize("context", [300, 1000, 2500])
def test_plan_cost_replays_the_engine_peak_kv_and_prunes(monkeypatch, context, one_thread):
    """The analytic replay (used for 7B-at-1M predictions) equals the engine's own accounting."""
    from homer_llm import engine

    model = build_model(TINY, device="cpu", dtype=torch.float32)
    parts = runner.compat.model_parts(model)
    plan = runner.make_plan(8, context, 8, chunk_len=128, cache_len=128, num_layers=TINY.layers)
    scored = []
    real_scores = engine.TreePass.scores

    def counting(self, *args, **kwargs):
        scored.append(1)
        return real_scores(self, *args, **kwargs)

    monkeypatch.setattr(engine.TreePass, "scores", counting)
    ids = torch.randint(3, TINY.vocab, (context + 16,), generator=torch.Generator().manual_seed(context))
    ctx = engine.compress(parts, plan, ids)
    per_token_layer = TINY.kv_bytes_per_token(4) // TINY.layers
    cost = plan_cost(plan, per_token_layer)
    assert cost.kv_peak_bytes == ctx.stats.peak_kv_bytes
    assert cost.prunes == len(scored)
    assert cost.nodes == 2 * plan.num_leaves - 1


def test_profile_counts_no_host_syncs(one_thread):
    """The HOMER pass makes no host sync: the query position comes from the plan, not the device."""
    from homer_llm.bench.profile import profile_homer

    bench = _bench(lengths=(512,), methods=("homer",))
    summary = profile_homer(bench, 512, rows=5)
    cost = plan_cost(bench.plan(512))
    assert summary.nodes == cost.nodes and summary.layer_calls == cost.layer_calls
    assert summary.host_syncs == 0 and cost.prunes > 0
    assert "aten::" in summary.format()


def _row(method, length, seconds, over_gib=1.0, decode=5.0, fraction=0.8, status="ok"):
    if status != "ok":
        return runner.BenchResult(method, length, status, note="out of memory")
    return runner.BenchResult(method, length, "ok", seconds=seconds, peak_over_weights_bytes=int(over_gib * 2**30),
                              decode_ms=decode, floor_fraction=fraction, own_floor_seconds=seconds * fraction)


def _report(rows, name="llama3-8b", window=8192):
    meta = {"config": {"name": name, "window": window}, "device_type": "cuda"}
    return runner.BenchReport(meta, tuple(rows))


def test_targets_read_met_missed_and_unmeasured_off_the_rows():
    from homer_llm.bench.targets import TargetSpec, check, format_verdicts

    spec = TargetSpec(long_length=32768, mid_length=16384)
    main = _report([
        _row("plain", 8192, 1.0, decode=20.0), _row("plain", 16384, 3.0, over_gib=9.0),
        _row("homer", 8192, 0.5, 1.0, decode=8.0), _row("homer", 16384, 0.9, 1.5, decode=9.0),
        _row("homer", 32768, 12.0, 3.0, decode=11.0, fraction=0.7),
        _row("homer-causal", 16384, 1.0), _row("homer-causal", 32768, 0, status="oom"),
    ])
    other = _report([_row("homer", 8192, 1, 1.0), _row("homer", 16384, 1, 1.9), _row("homer", 32768, 1, 2.5)],
                    name="llama2-7b", window=4096)
    verdicts = {(v.shape, v.name): v for v in check(main, [other], spec)}
    status = {k: v.status for k, v in verdicts.items()}
    assert status[("llama3-8b", "default at 32k: seconds")] == "met"  # 12 <= 13
    assert status[("llama3-8b", "default at 32k: share of its own FLOP floor")] == "missed"  # 70% < 75%
    assert status[("llama3-8b", "default/plain time at 16k")] == "met"  # 0.9 / 3.0 = 0.30
    assert status[("llama3-8b", "own-leaf/causal merges time at 16k")] == "met"  # 0.9x
    assert status[("llama3-8b", "own-leaf/causal merges time at 32k")] == "unmeasured"
    assert "homer-causal at 32k: oom" in verdicts[("llama3-8b", "own-leaf/causal merges time at 32k")].measured
    assert status[("llama3-8b", "decode on the default cache (slowest length)")] == "missed"  # 11 ms at 32k
    assert status[("llama3-8b", "decode on the default cache vs plain at its 8k window")] == "met"  # 11 <= 20
    assert status[("llama3-8b", "peak over weights growth (default)")] == "missed"  # +1.5 GiB 16k -> 32k
    assert status[("llama2-7b", "peak over weights growth (default)")] == "met"  # +0.9, +0.6
    text = format_verdicts(list(verdicts.values()))
    assert "[    MISSED]" in text and "targets: 5 met, 3 missed, 1 unmeasured" in text
    # no main report at all: only the other shapes' growth is judged
    assert [v.status for v in check(None, [other], spec)] == ["met"]


def test_targets_command_names_a_missing_report(tmp_path, capsys):
    from homer_llm.bench import targets
    from homer_llm.bench.report import write_json

    write_json(_report([_row("homer", 8192, 1, 1.0)], name="llama2-7b", window=4096), tmp_path / "g.json")
    code = targets.main([str(tmp_path / "none.json"), str(tmp_path / "g.json"), "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    assert code == 0 and f"[UNMEASURED] no report at {tmp_path / 'none.json'}" in out
    assert "llama2-7b: peak over weights growth (default)" in out and "no row" in out
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["missing_reports"] == [str(tmp_path / "none.json")] and saved["verdicts"][0]["status"] == "unmeasured"
    assert targets.main([str(tmp_path / "g.json"), "--long", "four"]) == 2


def test_gpu_sweep_runs_end_to_end_in_tiny_mode(tmp_path):
    """The device sweep, on the CPU with the tiny config: every step runs, every file it promises
    is written, and every target is printed with a verdict."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "gpu_sweep.sh"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"), OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(script), "--tiny"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"env.txt", "main.json", "main.log", "growth.json", "growth.log", "targets.json", "targets.txt"}
    main = json.loads((tmp_path / "out" / "main.json").read_text())
    assert {r["method"] for r in main["results"]} == {"plain", "homer", "homer-causal", "homer-focus"}
    assert main["complete"] and all(r["status"] in ("ok", "not_run") for r in main["results"])
    verdicts = json.loads((tmp_path / "out" / "targets.json").read_text())["verdicts"]
    assert len(verdicts) == 9 and all(v["status"] in ("met", "missed") for v in verdicts)
    assert "targets: " in done.stdout and "unmeasured" in done.stdout
    bad = subprocess.run(["bash", str(script), "--huge"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument '--huge'" in bad.stderr


def test_gpu_script_is_valid_bash():
    import subprocess
    from pathlib import Path

    subprocess.run(["bash", "-n", str(Path(__file__).parent.parent / "benchmarks" / "gpu_sweep.sh")], check=True)
    script = Path(__file__).parent.parent / "benchmarks" / "gpu_bench.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "--device \"$DEVICE\"" in text and "--json" in text and "$OUT" in text


def test_a_plan_that_cannot_fit_is_an_error_row_not_a_crash(one_thread, capsys):
    """tiny has 8 layers: 64k tokens need a tree of height 10, more than the layers allow."""
    report = _bench(methods=("homer",), lengths=(65536,), warmup=1).run()
    (row,) = report.results
    assert row.status == "error" and "needs a merge tree of height" in row.note
    code = cli.main(["--device", "cpu", "--config", "tiny", "--methods", "homer", "--lengths", "64k",
                     "--decode-tokens", "0"])
    assert code == 1 and "error" in capsys.readouterr().out
