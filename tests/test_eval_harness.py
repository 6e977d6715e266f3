"""The evaluation harness end to end on a tiny model: CLI flow from a saved model folder, every
method, table / JSON / plot outputs, and failure handling (out of memory, time limits, errors,
global budget, resume) with stand-in methods."""

from __future__ import annotations

import argparse
import json
import time

import pytest
from tiny import tiny_model

from homer_llm import HomerModel
from homer_llm.evaluation import cli as eval_cli
from homer_llm.evaluation.harness import EvalSettings, load_records, run_eval
from homer_llm.evaluation.methods import ALL_METHODS, EvalModel, Method, MethodResult, make_methods
from homer_llm.evaluation.report import cells, markdown_table
from homer_llm.evaluation.runner import Deadline, TimeBudgetExceeded
from homer_llm.evaluation.tasks import QA_TASKS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def essays(tmp_path):
    from homer_llm.calibration import generic_text

    folder = tmp_path / "essays"
    folder.mkdir()
    for i in range(3):
        (folder / f"e{i}.txt").write_text(generic_text(900, i))
    return folder


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    """A tiny llama (window 1024, 8 layers) saved like a real checkpoint, tokenizer included."""
    model = tiny_model("llama", vocab=len(tokenizer), window=1024, layers=8)
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    argv = []
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return parser.parse_args(argv)


def test_cli_end_to_end_on_a_saved_tiny_model(model_dir, essays, tmp_path, capsys):
    out = tmp_path / "out"
    args = _args(model=model_dir, device="cpu", methods="all", tasks="passkey,ppl", lengths="1x,2x",
                 samples=1, essays=essays, ppl_tokens=32, out=out, quiet=True, calibration_samples=2)
    assert eval_cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "### passkey: accuracy" in printed and "### ppl: perplexity" in printed
    assert "### paired: homer against each method on the same samples" in printed

    result = json.loads((out / "results.json").read_text())
    meta = result["meta"]
    assert meta["window"] == 1024 and meta["chunk_len"] == 512 and meta["torch"]
    assert meta["date"].startswith("records from ")  # when the records were made, not the report
    cells_by_key = {(c["task"], c["method"], c["length"]): c for c in result["cells"]}
    # homer paired with every other method that answered passkey, at both lengths (bm25 included)
    assert {(q["method"], q["length"]) for q in result["paired"]} == {
        (m, n) for m in ALL_METHODS if m != "homer" for n in (1024, 2048)}
    for task in ("passkey", "ppl"):
        for method in ALL_METHODS:
            for length in (1024, 2048):
                cell = cells_by_key[(task, method, length)]
                if task == "ppl" and method in ("bm25", "homer-focus", "homer-focus-leaf", "homer-hybrid",
                                                   "homer-hybrid3"):  # QA only
                    assert cell["statuses"] == {"n/a": 1}
                    continue
                assert cell["statuses"] == {"ok": 1}, (task, method, length, cell["note"])
                assert cell["n"] == 1
                if task == "ppl":
                    assert 1.0 < cell["value"] < 1000.0  # a random tiny model is near-uniform
                else:
                    assert cell["value"] in (0.0, 1.0) and 0.0 <= cell["low"] <= cell["high"] <= 1.0
    records = result["records"]
    assert len(records) == len(load_records(out / "records.jsonl")) == 2 * len(ALL_METHODS) * 2
    for r in records:  # HOMER methods report how much of the needle survived; others cannot
        homer_qa = (r["method"].startswith("homer") and not r["method"].startswith("homer-hybrid") and r["task"] == "passkey"
                    and r["status"] == "ok")
        assert (r["needle_kept"] is not None) == homer_qa, r
        assert r["needle_kept"] is None or 0.0 <= r["needle_kept"] <= 1.0
    by = {(r["task"], r["method"], r["length"]): r for r in records}
    # HOMER compresses beyond one chunk; truncation and retrieval stay within the window
    assert by[("passkey", "homer", 2048)]["used_tokens"] <= 512
    assert 512 < by[("passkey", "homer-yarn", 2048)]["used_tokens"] <= 1024  # YaRN x2: chunk_len x2
    # focus reads whole leaves plainly: more than HOMER's cache, at most its budget (window - 512 // 2)
    assert 0 < by[("passkey", "homer-focus", 2048)]["used_tokens"] <= 1024 - 256
    assert by[("passkey", "homer-focus", 2048)]["used_tokens"] != by[("passkey", "homer", 2048)]["used_tokens"]
    assert by[("passkey", "truncate", 2048)]["used_tokens"] <= 1024 - 64
    assert by[("passkey", "bm25", 2048)]["used_tokens"] <= 1024 - 64
    assert by[("passkey", "full", 2048)]["used_tokens"] == by[("passkey", "full", 2048)]["input_tokens"] > 1024
    # the haystack grows by whole filler units (89 characters here), so the fit is within one unit
    assert 1024 - 64 - 89 <= by[("passkey", "full", 1024)]["input_tokens"] <= 1024 - 64
    assert by[("ppl", "full", 2048)]["used_tokens"] == 2048 and by[("ppl", "truncate", 2048)]["used_tokens"] == 1024
    # inside the window full, truncate, bm25 and factor-1 RoPE scaling are one computation, run once
    assert not by[("passkey", "full", 1024)]["reused"]
    assert all(by[("passkey", m, 1024)]["reused"] for m in ("truncate", "bm25", "yarn", "ntk", "linear"))
    assert not any(by[("passkey", m, 2048)]["reused"] for m in ("truncate", "bm25", "yarn", "ntk", "linear"))
    assert by[("passkey", "truncate", 1024)]["output"] == by[("passkey", "full", 1024)]["output"]
    # homer-merged prunes alike (same cache, same needle survival); only the suffix's states differ
    for key in ("used_tokens", "needle_kept"):
        assert by[("passkey", "homer-merged", 2048)][key] == by[("passkey", "homer", 2048)][key]
    # at one window, truncation changes nothing: it scores exactly like the full model
    assert by[("ppl", "truncate", 1024)]["nll"] == pytest.approx(by[("ppl", "full", 1024)]["nll"], abs=1e-5)

    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    table = (out / "results.md").read_text()
    assert "| homer-yarn |" in table and "| 1k | 2k |" in table


def test_cli_json_output_report_only_and_bad_flags(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = _args(model=model_dir, methods="truncate", tasks="passkey", lengths="1x", samples=2, json=True,
                 quiet=True, depths="0,100", out=out, threads=1)
    assert eval_cli.run(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["depth"] for r in payload["records"]] == [0.0, 1.0]
    assert payload["meta"]["settings"]["depths"] == [0.0, 1.0]
    # --report-only rebuilds the outputs from records.jsonl without running anything
    (out / "results.json").unlink()
    again = _args(model=model_dir, out=out, report_only=True, json=True, quiet=True)
    assert eval_cli.run(again) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    assert rebuilt["records"] == payload["records"] and rebuilt["meta"]["settings"]["depths"] == [0.0, 1.0]
    assert (out / "results.json").exists() and (out / "accuracy.png").exists()
    # a folder of a task outside the default list reports that task alone
    other = tmp_path / "other"
    assert eval_cli.run(_args(model=model_dir, methods="truncate", tasks="needle", lengths="1x", samples=1,
                              quiet=True, out=other, threads=1)) == 0
    capsys.readouterr()
    assert eval_cli.run(_args(model=model_dir, out=other, report_only=True, quiet=True)) == 0
    headings = [line for line in (other / "results.md").read_text().splitlines() if line.startswith("### ")]
    assert headings == ["### needle: accuracy"]
    # ... and a folder of several tasks reports each, under the run's model name
    both = tmp_path / "both"
    assert eval_cli.run(_args(model=model_dir, methods="truncate", tasks="needle,passkey", lengths="1x",
                              samples=1, quiet=True, out=both, threads=1)) == 0
    settings = json.loads((both / "settings.json").read_text())
    settings["model"] = "the-run-model"
    (both / "settings.json").write_text(json.dumps(settings))
    capsys.readouterr()
    assert eval_cli.run(_args(out=both, report_only=True, quiet=True)) == 0
    report = (both / "results.md").read_text()
    assert sorted(line for line in report.splitlines() if line.startswith("### ")) == [
        "### needle: accuracy", "### passkey: accuracy"]
    assert report.startswith("the-run-model")
    # --tasks given filters, even when it names the default list
    default_list = ",".join(eval_cli.DEFAULT_TASKS)
    assert eval_cli.run(_args(out=both, report_only=True, quiet=True, tasks=default_list)) == 0
    headings = [line for line in (both / "results.md").read_text().splitlines() if line.startswith("### ")]
    assert headings == ["### passkey: accuracy"]
    assert eval_cli.run(_args(model=model_dir, methods="nope", quiet=True)) == 2
    assert eval_cli.run(_args(model=model_dir, lengths="2q", quiet=True)) == 2
    assert eval_cli.run(_args(model=model_dir, report_only=True, quiet=True)) == 2
    assert "unknown method" in capsys.readouterr().err


def test_paired_with_gives_one_table_per_reference(model_dir, tmp_path, capsys):
    from dataclasses import asdict

    from homer_llm.evaluation.harness import Record

    out = tmp_path / "out"
    out.mkdir()
    right = {"homer": [1, 0, 0, 1], "homer-focus": [1, 1, 1, 1], "bm25": [1, 1, 0, 0]}
    lines = [json.dumps(asdict(Record("passkey", m, 16384, i, "ok", correct=bool(c))))
             for m, verdicts in right.items() for i, c in enumerate(verdicts)]
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    args = _args(model=model_dir, out=out, report_only=True, quiet=True, paired_with="homer-focus,homer",
                 methods="homer,homer-focus,bm25", tasks="passkey")
    assert eval_cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "### paired: homer-focus against each method on the same samples" in printed
    assert "### paired: homer against each method on the same samples" in printed
    # focus right on samples 1, 2 where homer is not; right on 2, 3 where bm25 is not
    assert "| passkey | homer | 16k | 4 | 2 | 2 | 0 | 0 | 0.5 |" in printed
    assert "| passkey | bm25 | 16k | 4 | 2 | 2 | 0 | 0 | 0.5 |" in printed
    pairs = json.loads((out / "results.json").read_text())["paired"]
    assert {(q["reference"], q["method"]) for q in pairs} == {
        ("homer-focus", "homer"), ("homer-focus", "bm25"), ("homer", "homer-focus"), ("homer", "bm25")}
    assert eval_cli.run(_args(model=model_dir, out=out, report_only=True, quiet=True, paired_with="nope")) == 2
    assert "unknown --paired-with method(s)" in capsys.readouterr().err


def test_resume_refuses_records_made_with_other_settings(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    base = dict(model=model_dir, methods="truncate", tasks="passkey", lengths="1x", samples=1, quiet=True,
                depths="0,100", out=out, threads=1)
    assert eval_cli.run(_args(**base)) == 0
    assert eval_cli.run(_args(**{**base, "samples": 2}, resume=True)) == 0  # more samples: fine
    capsys.readouterr()
    for change in ({"depths": "100"}, {"seed": 1}, {"chunk_len": 256}):
        assert eval_cli.run(_args(**{**base, **change}, resume=True)) == 2
        err = capsys.readouterr().err
        assert "cannot resume into" in err and next(iter(change)) in err
    assert eval_cli.run(_args(**base, merged_suffix=True, resume=True)) == 2
    assert "reread_suffix" in capsys.readouterr().err
    assert len(load_records(out / "records.jsonl")) == 2  # nothing added, nothing lost
    # a folder from before the setting existed was made with the averaged (merged) suffix
    settings = json.loads((out / "settings.json").read_text())
    del settings["homer"]["reread_suffix"]
    (out / "settings.json").write_text(json.dumps(settings))
    assert eval_cli.run(_args(**base, resume=True)) == 2
    assert eval_cli.run(_args(**base, merged_suffix=True, resume=True)) == 0


def test_random_depths_give_every_sample_its_own_seeded_layout(model_dir, tmp_path, capsys):
    args = _args(model=model_dir, methods="truncate", tasks="passkey", lengths="1x,2x", samples=4, json=True,
                 quiet=True, depths="random", seed=3, threads=1, out=tmp_path / "out")
    assert eval_cli.run(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["meta"]["settings"]["depths"] == "random"
    depth = {(r["length"], r["index"]): r["depth"] for r in payload["records"]}
    at_1x = [depth[(1024, i)] for i in range(4)]
    assert len(set(at_1x)) == 4 and all(0.0 <= d <= 1.0 for d in at_1x)
    assert at_1x == [depth[(2048, i)] for i in range(4)]  # one depth per sample index, at every length
    # seeded: the same run again draws the same depths; another seed draws others
    assert eval_cli.run(argparse.Namespace(**{**vars(args), "out": tmp_path / "again"})) == 0
    assert [r["depth"] for r in json.loads(capsys.readouterr().out)["records"]] == [r["depth"] for r in payload["records"]]
    assert eval_cli.run(argparse.Namespace(**{**vars(args), "out": tmp_path / "other", "seed": 4})) == 0
    assert {r["depth"] for r in json.loads(capsys.readouterr().out)["records"]}.isdisjoint(at_1x)
    with pytest.raises(ValueError, match="randomly"):
        EvalSettings(tasks=("passkey",), methods=("truncate",), lengths=(1024,), depths="randomly")


def test_ppl_recent_keeps_the_last_tokens_whole(model_dir, essays, tmp_path, capsys):
    """--ppl-recent N: HOMER's perplexity prompt ends with the last N context tokens as its suffix."""
    nlls = {}
    for recent in (0, 64):
        out = tmp_path / f"out{recent}"
        args = _args(model=model_dir, device="cpu", methods="homer", tasks="ppl", lengths="2x", samples=1,
                     essays=essays, ppl_tokens=32, out=out, quiet=True, json=True, ppl_recent=recent,
                     calibration_samples=2)
        assert eval_cli.run(args) == 0
        payload = json.loads(capsys.readouterr().out)
        assert payload["meta"]["homer"]["ppl_recent"] == recent
        (record,) = payload["records"]
        assert record["status"] == "ok" and record["target_tokens"] == 32
        nlls[recent] = record["nll"]
    assert nlls[0] != nlls[64]  # a different prompt split, so a different compressed context
    assert eval_cli.run(_args(model=model_dir, ppl_recent=-1, quiet=True)) == 2


def test_ppl_append_runs_the_last_tokens_after_the_cache(model_dir, essays, tmp_path, capsys):
    """--ppl-append N: HOMER compresses all but the last N context tokens (its last token the
    query) and the N tokens, then the target, are teacher-forced after the compressed cache.
    --ppl-sink K (tokenizer without BOS): the document's first K tokens are every chunk's prefix."""
    from homer_llm import HomerConfig, HomerModel
    from homer_llm.evaluation.perplexity import PerplexityTask
    from homer_llm.evaluation.runner import score_continuation
    from homer_llm.prompt import PromptParts, anchor_prefix, bos_prefix

    # the eval's "homer" is HOMER as published (causal merges), whatever the library's default
    hm = HomerModel.load(model_dir, device="cpu", homer=HomerConfig(calibration_samples=2, merge_attention="causal"))
    (length,) = eval_cli.parse_lengths("2x", hm.window)
    sample = PerplexityTask(hm.tokenizer, essays, target_tokens=32).make(length, 0, 0)
    bos = bos_prefix(hm.tokenizer)
    assert bos == ()  # the test model's tokenizer adds no BOS, so the sink rule applies
    records = {}
    for sink in (4, 0):
        out = tmp_path / f"out{sink}"
        args = _args(model=model_dir, device="cpu", methods="homer", tasks="ppl", lengths="2x", samples=1,
                     essays=essays, ppl_tokens=32, out=out, quiet=True, json=True, ppl_append=40, ppl_sink=sink,
                     calibration_samples=2)
        assert eval_cli.run(args) == 0
        payload = json.loads(capsys.readouterr().out)
        assert payload["meta"]["homer"]["ppl_append"] == 40 and payload["meta"]["homer"]["ppl_sink"] == sink
        (records[sink],) = payload["records"]
        parts = anchor_prefix(PromptParts(bos, sample.context[:-40], ()), sink)
        assert len(parts.prefix) == sink and parts.ids == sample.context[:-40]
        compressed = hm.compress(parts)
        assert compressed.stats.num_leaves > 1  # the past really is compressed
        expected = score_continuation(hm.parts, compressed, sample.context[-40:] + sample.target)[-32:]
        assert records[sink]["used_tokens"] == compressed.cache_tokens + 40
        assert records[sink]["nll"] == pytest.approx(float(expected.mean()), abs=1e-4)  # the record keeps the mean
    assert records[4]["nll"] != pytest.approx(records[0]["nll"], abs=1e-4)  # the shared prefix changes the cache
    assert eval_cli.run(_args(model=model_dir, ppl_append=8, ppl_recent=8, quiet=True)) == 2
    assert eval_cli.run(_args(model=model_dir, ppl_append=-1, quiet=True)) == 2
    assert eval_cli.run(_args(model=model_dir, ppl_sink=-1, quiet=True)) == 2


# ---------------------------------------------------------------- failure handling with stand-ins
class Oracle(Method):
    """Reads the answer off the sample: checks that answers reach the checker and the table."""

    name = "oracle"
    growth = 0.0

    def answer(self, sample, deadline):
        return MethodResult(" " + ", ".join(sample.expected), 0, 0)


class OutOfMemoryAbove(Method):
    name = "oom"

    def __init__(self, model, limit):
        super().__init__(model)
        self.limit, self.calls = limit, []

    def answer(self, sample, deadline):
        size = len(sample.document)
        self.calls.append(size)
        if size > self.limit:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB")
        return MethodResult("0", 0, 0)


class Slow(Method):
    name = "slow"

    def __init__(self, model):
        super().__init__(model)
        self.calls = 0

    def answer(self, sample, deadline):
        self.calls += 1
        while True:
            time.sleep(0.01)
            deadline.check()


class Broken(Method):
    name = "broken"

    def answer(self, sample, deadline):
        raise KeyError("a bug in a method")


@pytest.fixture
def small_eval(tiny_homer):
    return EvalModel(tiny_homer)


def test_failures_are_recorded_and_block_longer_lengths(small_eval, tmp_path):
    oom = OutOfMemoryAbove(small_eval, limit=1500)
    slow = Slow(small_eval)
    methods = [Oracle(small_eval), oom, slow, Broken(small_eval)]
    settings = EvalSettings(tasks=("passkey", "multivalue", "vartrack"), methods=tuple(m.name for m in methods),
                            lengths=(1024, 2048, 4096), samples=2, call_seconds=0.2)
    log = tmp_path / "records.jsonl"
    records, info = run_eval(small_eval, methods, settings, records_path=log)
    table = {c.task + c.method + str(c.length): c for c in cells(records)}
    for length in (1024, 2048, 4096):
        oracle = table[f"passkeyoracle{length}"]
        assert oracle.value == 1.0 and oracle.n == 2
        assert table[f"multivalueoracle{length}"].value == 1.0
        assert table[f"passkeybroken{length}"].statuses == {"error": 2}
    assert table["passkeyoom1024"].statuses == {"ok": 2}
    assert table["passkeyoom2048"].statuses["oom"] == 1  # first failure, then not retried
    assert table["passkeyoom4096"].statuses == {"skipped": 2}
    assert table["passkeyslow1024"].statuses == {"timeout": 1, "skipped": 1}
    assert slow.calls == 1  # blocked at every length after the first timeout
    assert info["blocked"]["slow"]["from_length"] == 1024
    assert table["vartrackoracle2048"].value == 1.0
    assert len(load_records(log)) == len(records) == 3 * 3 * 2 * 4
    text = markdown_table(cells(records), [m.name for m in methods], [1024, 2048, 4096], ["passkey"])
    assert "| oracle | 100% (2/2)" in text and "timeout" in text and "oom" in text

    # resume: nothing is run again
    again, _ = run_eval(small_eval, [Oracle(small_eval), oom, slow], settings, previous=load_records(log))
    assert slow.calls == 1 and len(again) == len(records)
    # ... except what an earlier run skipped by its own limits: that is retried
    from homer_llm.evaluation.harness import Record

    one = EvalSettings(tasks=("passkey",), methods=("oracle",), lengths=(1024,), samples=1)
    skipped = [Record("passkey", "oracle", 1024, 0, "skipped", error="predicted at least 9 s > per-call limit 1 s")]
    retried, _ = run_eval(small_eval, [Oracle(small_eval)], one, previous=skipped)
    assert [r.status for r in retried] == ["ok"]


def test_prediction_uses_the_fastest_sample_per_length():
    from types import SimpleNamespace

    from homer_llm.evaluation.harness import Record, _Blocks

    blocks = _Blocks()
    for seconds in (367.0, 100.0, 105.0):  # one sample ran on a busy machine
        blocks.learn(Record("passkey", "homer", 32768, 0, "ok", seconds=seconds))
    blocks.learn(Record("passkey", "homer", 8192, 0, "ok", seconds=32.0))
    linear = SimpleNamespace(name="homer", growth=1.0)
    assert blocks.predicted(linear, 65536) == 256.0  # max over lengths of the fastest: 32 s x 8
    assert blocks.predicted(SimpleNamespace(name="other", growth=1.0), 65536) == 0.0


def test_global_budget_stops_the_run(small_eval):
    methods = [Slow(small_eval), Oracle(small_eval)]
    settings = EvalSettings(tasks=("passkey",), methods=("slow", "oracle"), lengths=(1024, 2048), samples=3,
                            max_seconds=0.3)
    records, info = run_eval(small_eval, methods, settings)
    assert info["budget_exhausted"]
    assert records[-1].status == "budget" and len(records) < 3 * 2 * 2


def test_deadline_heartbeat_and_type():
    beats = []
    deadline = Deadline(None, heartbeat=lambda done, total: beats.append((done, total)), every=0.0)
    deadline.progress(1, 4)
    deadline.progress(2, 4)
    assert beats == [(1, 4), (2, 4)]
    assert issubclass(TimeBudgetExceeded, RuntimeError)


def test_homer_sees_the_same_sample_as_every_method(small_eval):
    seen = {}

    class Spy(Method):
        def __init__(self, model, name):
            super().__init__(model)
            self.name = name

        def answer(self, sample, deadline):
            seen.setdefault((sample.index, len(sample.document)), set()).add(sample.document)
            return MethodResult("", 0, 0)

    methods = [Spy(small_eval, "a"), Spy(small_eval, "b")]
    run_eval(small_eval, methods, EvalSettings(tasks=("multikey",), methods=("a", "b"), lengths=(1500,), samples=2))
    assert len(seen) == 2 and all(len(docs) == 1 for docs in seen.values())
    assert QA_TASKS["multikey"].name == "multikey"


def test_ablation_methods_run_the_variant_they_name(small_eval):
    names = ["homer", "homer-uncal", "homer-random", "homer-ownleaf", "homer-ownleaf-uncal", "homer-ownleaf-random"]
    configs = {m.name: m.hm.homer for m in make_methods(small_eval, names)}
    assert [(configs[n].pruning, configs[n].merge_attention) for n in names] == [
        ("calibrated", "causal"), ("uncalibrated", "causal"), ("random", "causal"),
        ("calibrated", "own-leaf"), ("uncalibrated", "own-leaf"), ("random", "own-leaf")]


def test_hybrid_methods_read_one_leaf_or_the_adapters_three(small_eval, monkeypatch):
    import homer_llm.hybrid as hybrid

    class Asked(Exception):
        pass

    def spy(hm, parts, **kw):
        raise Asked(kw["leaves"], kw["window"])

    monkeypatch.setattr(hybrid, "hybrid_context", spy)
    sample = QA_TASKS["passkey"].make(small_eval.count, 1500, 0, 0, 0.5)
    asked = []
    for method in make_methods(small_eval, ["homer-hybrid", "homer-hybrid3"]):
        with pytest.raises(Asked) as err:
            method.answer(sample, None)
        asked.append(err.value.args)
    assert asked == [(1, small_eval.window), (3, small_eval.window)]


def test_homer_model_loads_from_the_saved_folder(model_dir):
    hm = HomerModel.load(model_dir, device="cpu")
    assert hm.window == 1024 and hm.chunk_len == 512


def test_needle_kept_counts_the_answer_tokens_in_the_cache(tokenizer):
    from homer_llm.evaluation.methods import needle_kept

    doc = "ab 1234 cd 123 ef 123."  # char-level tokens: "123" alone at 11-13 and 18-20
    ids = tuple(tokenizer(doc, add_special_tokens=False)["input_ids"])
    assert needle_kept(tokenizer, doc, ids, ("123",), {11, 12, 13}) == 1.0
    assert needle_kept(tokenizer, doc, ids, ("123",), {3, 4, 5}) == 0.0  # inside 1234: not the value
    assert needle_kept(tokenizer, doc, ids, ("123",), {11, 19}) == pytest.approx(1 / 3)  # best occurrence
    assert needle_kept(tokenizer, doc, ids, ("123", "1234"), {11, 12, 13}) == pytest.approx(0.5)
    assert needle_kept(tokenizer, doc, ids, ("999",), set(range(len(ids)))) == 0.0
    assert needle_kept(tokenizer, doc, ids[:-1], ("123",), {11}) is None  # other tokenization: unknown


def test_cache_len_option_sets_the_final_cache(model_dir, essays, tmp_path, capsys):
    args = _args(model=model_dir, device="cpu", methods="homer", tasks="ppl", lengths="2x", samples=1, essays=essays,
                 ppl_tokens=32, out=tmp_path / "out", quiet=True, json=True, cache_len=64, calibration_samples=2)
    assert eval_cli.run(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["meta"]["homer"]["cache_len"] == 64
    (record,) = payload["records"]
    assert record["status"] == "ok", record["error"]
    assert record["used_tokens"] == 64


@pytest.mark.parametrize("preset", [None, "cuda"])
def test_bm25s_import_keeps_jax_off_the_gpu(monkeypatch, preset):
    """bm25s runs a JAX op at import when JAX is installed, and JAX then takes 75% of the GPU:
    the import helper points JAX at the CPU unless the caller chose a platform."""
    import logging
    import sys

    from homer_llm.evaluation.methods import import_bm25s

    monkeypatch.delitem(sys.modules, "jax", raising=False)
    if preset is None:
        monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    else:
        monkeypatch.setenv("JAX_PLATFORMS", preset)
    logging.getLogger("bm25s").setLevel(logging.DEBUG)
    module = import_bm25s()
    assert hasattr(module, "BM25")
    assert __import__("os").environ["JAX_PLATFORMS"] == (preset or "cpu")
    assert logging.getLogger("bm25s").level == logging.WARNING


def test_first_sample_splits_one_sample_set(small_eval):
    """--first-sample runs only the tail of the sample range, and each sample is the one a full run
    would give it (so split runs can be joined into one table)."""
    seen: dict[int, str] = {}

    class Spy(Method):
        name = "spy"

        def answer(self, sample, deadline):
            seen[sample.index] = sample.document
            return MethodResult("", 0, 0)

    whole = EvalSettings(tasks=("passkey",), methods=("spy",), lengths=(1500,), samples=3, depths="random")
    run_eval(small_eval, [Spy(small_eval)], whole)
    full = dict(seen)
    seen.clear()
    tail = EvalSettings(tasks=("passkey",), methods=("spy",), lengths=(1500,), samples=3, depths="random",
                        first_sample=1)
    records, _ = run_eval(small_eval, [Spy(small_eval)], tail)
    assert sorted(seen) == [1, 2] and [r.index for r in records] == [1, 2]
    assert all(seen[i] == full[i] for i in (1, 2))
    for bad in (-1, 3):
        with pytest.raises(ValueError, match="first_sample"):
            EvalSettings(tasks=("passkey",), methods=("spy",), lengths=(1500,), samples=3, first_sample=bad)
