"""The eval's prompt layouts and the varied-needle task.

The plain layout must be exactly what the integrations send (the document, then the question, in
one user turn); the varied task must really vary and be checked on the value alone.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from test_eval_harness import _args
from tiny import tiny_model

from homer_llm import HomerModel
from homer_llm.evaluation import cli as eval_cli
from homer_llm.evaluation.methods import LAYOUTS, EvalModel, build_parts
from homer_llm.evaluation.tasks import HAYSTACKS, QA_TASKS, VariedNeedleTask, check_contains


def count_words(text: str) -> int:
    return len(text.split())


def test_plain_layout_is_what_the_adapters_send(tokenizer):
    hm = HomerModel(tiny_model("llama", vocab=len(tokenizer)), tokenizer, name="tiny")
    sample = QA_TASKS["needle"].make(count_words, 300, 0, 0, 0.5)
    assert build_parts(tokenizer, sample) == hm.prepare_question(sample.document, sample.question)
    instructed = build_parts(tokenizer, sample, layout="instructed")
    assert instructed == hm.prepare_question(sample.document, sample.question, instruction=sample.instruction,
                                             answer_prefix=sample.answer_prefix)
    assert instructed.context == build_parts(tokenizer, sample).context
    with pytest.raises(ValueError, match="'chatty'"):
        build_parts(tokenizer, sample, layout="chatty")
    with pytest.raises(ValueError, match="'chatty'"):
        EvalModel(hm, layout="chatty")


def test_plain_layout_without_a_chat_template_asks_the_question_last(tokenizer):
    tokenizer.chat_template = None
    sample = QA_TASKS["passkey"].make(count_words, 200, 0, 0, 0.5)
    parts = build_parts(tokenizer, sample)
    text = tokenizer.decode(parts.suffix)
    assert text.rstrip().endswith("Answer:") and sample.question in text
    assert sample.instruction not in tokenizer.decode(parts.ids)


def test_varied_needles_cover_every_haystack_kind_and_wording():
    task = VariedNeedleTask()
    samples = [task.make(count_words, 400, i, 0, (i % 11) / 10) for i in range(60)]
    variants = Counter(s.variant for s in samples)
    haystacks = {v.split("/")[0] for v in variants}
    kinds = {v.split("/")[1] for v in variants}
    wordings = {v.split("/")[2] for v in variants}
    assert haystacks == set(HAYSTACKS) and kinds == {"number", "word", "code"} and len(wordings) == 4
    for s in samples:
        value = s.expected[0]
        assert s.needles[0] in s.document and value in s.document
        assert value not in s.question and value not in s.instruction
        assert task.check(s, f"It is {value}.") and not task.check(s, "I do not know.")
    # documents of different samples differ in their filler, not only in the needle
    assert len({s.document.replace(s.needles[0], "") for s in samples}) > 3


def test_check_contains_is_whole_token_and_case_insensitive():
    assert check_contains("Saffron", "the password is saffron.")
    assert check_contains("1a2b-3c4d-5e6f", "token: 1A2B-3C4D-5E6F")
    assert not check_contains("12345", "123456")
    assert not check_contains("1a2b-3c4d-5e6f", "1a2b-3c4d-5e6f0")
    assert not check_contains("cobalt", "cobalts")


def test_eval_records_its_layout_and_refuses_to_resume_across_layouts(tmp_path, tokenizer, capsys):
    model = tiny_model("llama", vocab=len(tokenizer), window=1024, layers=4)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    base = dict(model=folder, methods="truncate", tasks="needle", lengths="1x", samples=1, quiet=True,
                out=out, threads=1)
    assert eval_cli.run(_args(**base)) == 0
    assert json.loads((out / "settings.json").read_text())["layout"] == "plain"
    assert eval_cli.run(_args(**base, layout="instructed", resume=True)) == 2
    assert "layout" in capsys.readouterr().err
    # a folder written before layouts were recorded was made in the instructed layout
    settings = json.loads((out / "settings.json").read_text())
    del settings["layout"]
    (out / "settings.json").write_text(json.dumps(settings))
    assert eval_cli.run(_args(**base, resume=True)) == 2
    assert eval_cli.run(_args(**base, layout="instructed", resume=True)) == 0
    assert LAYOUTS == ("plain", "instructed")


# ---------------------------------------------------------------- whole-document tasks
def test_count_task_answer_is_the_number_of_notes_of_the_asked_kind():
    task = QA_TASKS["count"]
    for i in range(10):
        s = task.make(count_words, 2000, i, 0, 0.5)
        kind = s.question.split("crates of ", 1)[1].split(" were", 1)[0]
        notes = s.document.count(f"one crate of {kind} was brought")
        assert s.expected == (str(notes),) and len(s.needles) == notes
        assert s.document.count("Delivery note:") > notes  # other kinds look the same
        assert task.check(s, f"{notes}") and not task.check(s, f"{notes + 1}")


def test_common_words_answer_is_the_most_frequent_words_of_the_list():
    task = QA_TASKS["cwe"]
    s = task.make(count_words, 3000, 0, 0, 0.5)
    words = [entry for k, entry in enumerate(s.document.split(" ")) if k % 2 == 1]
    counts = Counter(words)
    top = {w for w, _ in counts.most_common(task.top)}
    assert set(s.expected) == top and len(top) == task.top
    assert min(counts[w] for w in top) > max(c for w, c in counts.items() if w not in top)
    assert task.check(s, ", ".join(reversed(s.expected)))
    assert not task.check(s, ", ".join(s.expected[:-1]))
    assert not any(w in s.question for w in top)


def test_two_facts_sit_half_a_document_apart_and_only_together_answer():
    task = QA_TASKS["twofacts"]
    for i, depth in enumerate((0.0, 0.3, 0.7, 1.0)):
        s = task.make(count_words, 3000, i, 0, depth)
        first, second = (s.document.index(n) / len(s.document) for n in s.needles)
        assert abs(first - second) >= 0.4
        room = s.needles[0].rsplit(" ", 1)[1].rstrip(".")
        assert room in s.needles[1] and room not in s.question
        assert s.expected[0] in s.needles[1] and s.document.count("Room ") == 4


# ---------------------------------------------------------------- emulated window
def test_emulated_window_bounds_truncation_and_the_run_settings(tmp_path, tokenizer, capsys):
    from homer_llm.evaluation.methods import TruncateMethod
    from homer_llm.evaluation.runner import Deadline

    model = tiny_model("llama", vocab=len(tokenizer), window=1024, layers=4)
    hm = HomerModel(model, tokenizer, name="tiny")
    with pytest.raises(ValueError, match="2048"):
        EvalModel(hm, window=2048)
    emulated = EvalModel(hm, window=256)
    sample = QA_TASKS["needle"].make(count_words, 600, 0, 0, 0.5)
    result = TruncateMethod(emulated).answer(sample, Deadline(None))
    assert result.used_tokens <= 256 < result.input_tokens

    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    assert eval_cli.run(_args(model=folder, methods="truncate", tasks="needle", lengths="2x", samples=1,
                              quiet=True, out=out, threads=1, window=256, json=True)) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["window"] == 256 and settings["lengths"] == [512] and settings["homer"]["chunk_len"] == 128
    capsys.readouterr()
    assert eval_cli.run(_args(model=folder, methods="truncate", tasks="needle", lengths="2x", samples=1,
                              quiet=True, out=tmp_path / "bad", window=8)) == 2
    assert "--window must be at least 16 tokens, got 8" in capsys.readouterr().err
