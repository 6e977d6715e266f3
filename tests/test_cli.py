"""``homer-llm`` command: input errors, engine errors, --json, --plain, lazy subcommands.

Runs ``main([...])`` in-process on a tiny llama saved with save_pretrained (window 256, so
chunk_len 128: a few hundred characters of document already make a HOMER tree).
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from homer_llm import cli
from homer_llm.cli import main

JSON_KEYS = {
    "answer", "input_tokens", "cache_tokens", "seconds", "peak_memory_bytes", "compress_seconds",
    "generate_seconds", "peak_kv_bytes", "tree_height", "model", "device", "dtype", "mode", "output_tokens",
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny llama + char tokenizer saved as a model folder (what --model accepts)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    tiny_model("llama", vocab=len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def long_doc(tmp_path):
    """About 700 characters = 700 tokens with the char tokenizer: several leaves at chunk_len 128."""
    path = tmp_path / "doc.txt"
    path.write_text(" ".join(f"Line {i}: the river runs past the mill." for i in range(20)), encoding="utf-8")
    return path


@pytest.fixture
def short_doc(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("Cats sleep.", encoding="utf-8")
    return path


def run(capsys, *argv):
    capsys.readouterr()  # drop what setup printed (e.g. save_pretrained's progress bar)
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *fragments, expected_code=2):
    assert code == expected_code
    assert out == ""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("homer-llm: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------------------- bad input
def test_missing_document(capsys, tmp_path, tiny_dir):
    res = run(capsys, "ask", "--model", tiny_dir, "--document", tmp_path / "nope.txt", "What?")
    assert_one_line_error(*res, "not found", "nope.txt")


def test_document_is_a_directory(capsys, tmp_path, tiny_dir):
    res = run(capsys, "ask", "--model", tiny_dir, "--document", tmp_path, "What?")
    assert_one_line_error(*res, "not a regular file")


@pytest.mark.parametrize("content", [b"", b"  \n\t \n"])
def test_empty_document(capsys, tmp_path, tiny_dir, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    res = run(capsys, "ask", "--model", tiny_dir, "--document", path, "What?")
    assert_one_line_error(*res, "empty")


def test_binary_document(capsys, tmp_path, tiny_dir):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"PK\x03\x04\x00\x00binary\x00stuff")
    res = run(capsys, "ask", "--model", tiny_dir, "--document", path, "What?")
    assert_one_line_error(*res, "NUL", "binary")


def test_non_utf8_document(capsys, tmp_path, tiny_dir):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Caf\u00e9 cr\u00e8me".encode("latin-1"))
    res = run(capsys, "ask", "--model", tiny_dir, "--document", path, "What?")
    assert_one_line_error(*res, "not UTF-8", "offset 3")


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffhello".encode())
    assert cli.read_document(str(path)) == "hello"


@pytest.mark.parametrize("question", ["", "   \n"])
def test_empty_question(capsys, short_doc, tiny_dir, question):
    res = run(capsys, "ask", "--model", tiny_dir, "--document", short_doc, question)
    assert_one_line_error(*res, "question is empty")


def test_negative_temperature(capsys, short_doc, tiny_dir):
    res = run(capsys, "ask", "--model", tiny_dir, "--document", short_doc, "--temperature", "-1", "What?")
    assert_one_line_error(*res, "--temperature")


def test_argparse_errors_exit_2(capsys, short_doc):
    with pytest.raises(SystemExit) as info:
        main(["ask", "--document", str(short_doc), "--max-new-tokens", "0", "What?"])
    assert info.value.code == 2
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["ask", "What?"])  # --document is required
    assert info.value.code == 2


# ---------------------------------------------------------------------------- engine errors
def test_question_too_long_for_a_chunk(capsys, long_doc, tiny_dir):
    """P + S must fit one chunk (128 tokens here): the engine's ValueError becomes one line."""
    res = run(capsys, "ask", "--model", tiny_dir, "--document", long_doc, "--no-progress", "why " * 60)
    assert_one_line_error(*res)


def test_unsupported_model(capsys, tmp_path, short_doc):
    folder = tmp_path / "sliding"
    tok = tiny_tokenizer()
    tiny_model("mistral", vocab=len(tok), sliding_window=64).save_pretrained(folder)
    tok.save_pretrained(folder)
    res = run(capsys, "ask", "--model", folder, "--document", short_doc, "What?")
    assert_one_line_error(*res, "sliding")


def test_missing_model_folder(capsys, tmp_path, short_doc):
    res = run(capsys, "ask", "--model", tmp_path / "no-model", "--document", short_doc, "What?")
    assert_one_line_error(*res, "model folder not found", "no-model")


def test_memory_error_is_one_line(capsys, monkeypatch, long_doc, tiny_dir):
    from homer_llm import HomerModel

    def boom(self, *args, **kwargs):
        raise MemoryError("out of memory compressing 700 tokens\nwith chunk_len=128")

    monkeypatch.setattr(HomerModel, "answer", boom)
    res = run(capsys, "ask", "--model", tiny_dir, "--document", long_doc, "What?")
    assert_one_line_error(*res, "out of memory", "chunk_len=128", expected_code=1)


def test_default_model_error_is_one_line(capsys, monkeypatch, short_doc):
    from homer_llm import default_model

    def missing():
        raise default_model.DefaultModelError("the default model file X was not found; install it with `pip ...`")

    monkeypatch.setattr(default_model, "default_model_path", missing)
    res = run(capsys, "ask", "--document", short_doc, "What?")
    assert_one_line_error(*res, "not found", expected_code=1)


# ---------------------------------------------------------------------------- answers
def test_json_output(capsys, long_doc, tiny_dir):
    code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", long_doc, "--max-new-tokens", "4",
                         "--json", "What runs past the mill?")
    assert code == 0, err
    report = json.loads(out)
    assert JSON_KEYS <= report.keys()
    assert report["mode"] == "homer"
    assert report["input_tokens"] > 256  # beyond the tiny model's window
    assert 0 < report["cache_tokens"] <= 128  # the HOMER cache fits one chunk
    assert report["tree_height"] >= 2
    assert report["peak_memory_bytes"] > 10_000_000  # process RSS, in bytes (not KiB)
    assert report["peak_kv_bytes"] > 0
    assert 1 <= report["output_tokens"] <= 4
    assert report["dtype"] == "float32" and report["device"] == "cpu"
    assert report["seconds"] >= report["compress_seconds"] > 0
    assert "HOMER" in err  # the progress bar


def test_text_output_matches_library(capsys, long_doc, tiny_dir):
    """What `ask` prints is HomerModel.ask's answer under the same settings."""
    from homer_llm import GenerationConfig, HomerConfig, HomerModel

    for unit in ("token", "word"):
        code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", long_doc, "--max-new-tokens", "6",
                             "--pruning", "uncalibrated", "--prune-unit", unit, "--no-progress", "What runs?")
        assert code == 0, err
        assert "HOMER" not in err
        hm = HomerModel.load(tiny_dir, device="cpu", homer=HomerConfig(pruning="uncalibrated", prune_unit=unit))
        expected = hm.ask(long_doc.read_text(), "What runs?", config=GenerationConfig(max_new_tokens=6))
        assert out == expected.text + "\n"


def test_chunk_len_option_changes_the_tree(capsys, long_doc, tiny_dir):
    heights = []
    for chunk in ("128", "96"):  # (below ~90 the calibration shell itself does not fit)
        code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", long_doc, "--chunk-len", chunk,
                             "--max-new-tokens", "1", "--json", "--no-progress", "Q?")
        assert code == 0, err
        report = json.loads(out)
        assert report["chunk_len"] == int(chunk) and report["cache_tokens"] <= int(chunk)
        heights.append(report["tree_height"])
    assert heights[1] > heights[0]


def json_reports(capsys, tiny_dir, document, *variants: list[str]) -> list[dict]:
    """`homer-llm ask --json` on ``document`` once per list of extra flags (one new token each)."""
    reports = []
    for extra in variants:
        code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", document, "--max-new-tokens", "1",
                             "--json", "--no-progress", *extra, "Q?")
        assert code == 0, err
        reports.append(json.loads(out))
    return reports


def test_rope_scaling_option_runs_homer_plus_yarn(capsys, long_doc, tiny_dir):
    """--rope-scaling yarn: twice the window, twice the chunk, a shallower tree; a factor <= 1 is a
    one-line error naming the value."""
    base, yarn = json_reports(capsys, tiny_dir, long_doc, [], ["--rope-scaling", "yarn"])
    assert base["rope_scaling"] is None and yarn["rope_scaling"] == "yarn:2"
    assert yarn["window"] == 2 * base["window"] and yarn["chunk_len"] == 2 * base["chunk_len"]
    assert yarn["tree_height"] < base["tree_height"] and yarn["model"].endswith("+yarn2")
    code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", long_doc, "--rope-scaling", "linear",
                         "--rope-factor", "0.5", "--no-progress", "Q?")
    assert_one_line_error(code, out, err, "rope_factor must be > 1", "0.5")


def test_focus_leaves_option_reads_whole_leaves(capsys, long_doc, tiny_dir):
    """--focus-leaves 2: the answer comes from a plain read of two whole leaves (more tokens than
    HOMER's cache, within the window); a negative count is a one-line error naming the value."""
    base, focus = json_reports(capsys, tiny_dir, long_doc, [], ["--focus-leaves", "2"])
    assert base["focus_leaves"] == 0 and focus["focus_leaves"] == 2
    assert base["focus_margin"] is None and focus["focus_margin"] == 256
    assert focus["tree_height"] == base["tree_height"] > 0
    assert focus["cache_tokens"] != base["cache_tokens"] and focus["cache_tokens"] <= focus["window"]
    (whole,) = json_reports(capsys, tiny_dir, long_doc, ["--focus-leaves", "2", "--focus-margin", "0"])
    assert whole["focus_margin"] == 0 and whole["cache_tokens"] < focus["cache_tokens"]  # the margin is read too
    assert base["focus_locator"] is None and focus["focus_locator"] == "leaf"  # the default locator
    (tree,) = json_reports(capsys, tiny_dir, long_doc, ["--focus-leaves", "2", "--focus-locator", "tree"])
    assert tree["focus_locator"] == "tree" and tree["cache_tokens"] <= tree["window"]
    (own, causal) = json_reports(capsys, tiny_dir, long_doc, ["--merge-attention", "own-leaf"],
                                 ["--merge-attention", "causal"])
    # auto (default): own-leaf merges without focus on this sdpa model, causal ones under focus
    assert own["merge_attention"] == base["merge_attention"] == "own-leaf" and focus["merge_attention"] == "causal"
    assert causal["merge_attention"] == "causal" and own["cache_tokens"] == causal["cache_tokens"]
    code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", long_doc, "--focus-leaves", "-1",
                         "--no-progress", "Q?")
    assert_one_line_error(code, out, err, "focus_leaves must be >= 0", "-1")
    code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", long_doc, "--focus-leaves", "2",
                         "--focus-margin", "-5", "--no-progress", "Q?")
    assert_one_line_error(code, out, err, "focus_margin must be >= 0", "-5")


def test_plain_equals_homer_when_the_document_fits(capsys, short_doc, tiny_dir):
    """One chunk, nothing pruned: HOMER's result is the plain model's, token for token."""
    answers = []
    for extra in ([], ["--plain"]):
        code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", short_doc, "--max-new-tokens", "8",
                             "--json", "--no-progress", *extra, "What?")
        assert code == 0, err
        answers.append(json.loads(out))
    homer, plain = answers
    assert plain["mode"] == "plain" and plain["tree_height"] == 0
    assert plain["answer"] == homer["answer"]
    assert plain["output_tokens"] == homer["output_tokens"]


def test_answer_prefix_primes_both_paths_and_is_printed(capsys, short_doc, long_doc, tiny_dir):
    """--answer-prefix ends the prompt with the prefix and prints prefix + continuation."""
    from homer_llm import GenerationConfig, HomerModel

    hm = HomerModel.load(tiny_dir, device="cpu")
    answers = []
    for extra in ([], ["--plain"]):
        code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", short_doc, "--max-new-tokens", "5",
                             "--json", "--no-progress", "--answer-prefix", "The answer is", *extra, "What?")
        assert code == 0, err
        answers.append(json.loads(out))
    homer, plain = answers
    assert homer["answer"] == plain["answer"]  # one chunk: HOMER is the plain model
    assert homer["answer"].startswith("The answer is")
    expected = hm.ask(short_doc.read_text(), "What?", answer_prefix="The answer is",
                      config=GenerationConfig(max_new_tokens=5))
    assert homer["answer"] == expected.text
    # on a long document too, the prompt the tree sees ends with the prefix
    code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", long_doc, "--max-new-tokens", "3",
                         "--no-progress", "--answer-prefix", "Sure:", "Q?")
    assert code == 0, err
    assert out.startswith("Sure:")


def test_plain_runs_beyond_the_window(capsys, long_doc, tiny_dir):
    code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", long_doc, "--max-new-tokens", "3",
                         "--json", "--plain", "Q?")
    assert code == 0, err
    report = json.loads(out)
    assert report["input_tokens"] == report["cache_tokens"] > 256
    layers, kv_heads, head_dim = 6, 2, 16
    assert report["peak_kv_bytes"] == 2 * layers * kv_heads * head_dim * 4 * report["input_tokens"]


def test_plain_decode_matches_transformers_generate(tiny_dir):
    from homer_llm import GenerationConfig, HomerModel

    hm = HomerModel.load(tiny_dir, device="cpu")
    ids = hm.prepare_question("Some text here.", "Q?").ids
    result = cli.plain_answer(hm, ids, GenerationConfig(max_new_tokens=6))
    reference = hm.model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=list(hm.eos_ids))
    new = reference[0, len(ids):].tolist()
    new = [t for t in new if t not in hm.eos_ids]
    assert result["raw_text"] == hm.tokenizer.decode(new, skip_special_tokens=True)


def test_sampling_is_seeded(capsys, short_doc, tiny_dir):
    outs = []
    for _ in range(2):
        code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", short_doc, "--temperature", "1.5",
                             "--seed", "3", "--max-new-tokens", "12", "--no-progress", "What?")
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1]


def test_verbose_logs_to_stderr_and_is_undone(capsys, long_doc, tiny_dir):
    import logging

    package = logging.getLogger("homer_llm")
    before = (package.level, list(package.handlers))
    code, out, err = run(capsys, "ask", "-vv", "--model", tiny_dir, "--document", long_doc, "--max-new-tokens", "1",
                         "--no-progress", "Q?")
    assert code == 0, err
    assert "HOMER pass" in err  # the engine's debug line
    assert (package.level, list(package.handlers)) == before


# ---------------------------------------------------------------------------- lazy subcommands
def test_unavailable_subcommand_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(cli.LAZY_COMMANDS, "eval", ("homer_llm._no_such_module_for_test", "evaluate"))
    res = run(capsys, "eval", "--anything")
    assert_one_line_error(*res, "'eval' command is unavailable", expected_code=1)


def test_lazy_subcommand_dispatch(capsys, monkeypatch):
    module = types.ModuleType("fake_bench_cli")
    seen = {}

    def add_arguments(parser):
        parser.add_argument("--lengths", default="1k")

    def run_bench(args):
        seen["lengths"] = args.lengths
        return 7

    module.add_arguments, module.run = add_arguments, run_bench
    monkeypatch.setitem(sys.modules, "fake_bench_cli", module)
    monkeypatch.setitem(cli.LAZY_COMMANDS, "bench", ("fake_bench_cli", "bench"))
    assert main(["bench", "--lengths", "4k"]) == 7
    assert seen == {"lengths": "4k"}


def test_other_lazy_modules_are_not_imported(monkeypatch):
    """Building the parser for `ask` must not import eval/bench modules."""
    monkeypatch.setitem(cli.LAZY_COMMANDS, "eval", ("homer_llm._must_not_import", "evaluate"))
    parser = cli.build_parser("ask")
    assert "homer_llm._must_not_import" not in sys.modules
    assert "eval" in parser.format_help()


def test_threads_option_is_reported_and_restored(capsys, short_doc, tiny_dir):
    before = torch.get_num_threads()
    code, out, err = run(capsys, "ask", "--model", tiny_dir, "--document", short_doc, "--threads", "1",
                         "--max-new-tokens", "2", "--json", "--no-progress", "Q?")
    assert code == 0, err
    assert json.loads(out)["threads"] == 1
    assert torch.get_num_threads() == before


def test_progress_bar_starts_anew_when_the_total_changes(capsys):
    """The calibration table's build and the tree's passes are two counts: two bars, not one overfull."""
    from homer_llm.cli import _Progress

    bar = _Progress(enabled=True)
    for done in range(1, 49):
        bar(done, 48)
    first = bar.bar
    assert first.n == 48 and first.total == 48
    bar(1, 30)
    assert bar.bar is not first and bar.bar.total == 30 and bar.bar.n == 1
    bar.close()
    assert bar.bar is None
    off = _Progress(enabled=False)
    off(1, 2)
    assert off.bar is None
