"""The document agent's command line: answers, the stats line, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langgraph")
langchain_homer = pytest.importorskip("langchain_homer")

from homer_agent import cli  # noqa: E402

from homer_llm.doc_cache import DocumentCache  # noqa: E402

DOC = "".join(f"Line {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7} coins.\n" for i in range(10))
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def doc_file(tmp_path):
    path = tmp_path / "boxes.txt"
    path.write_text(DOC)
    return path


@pytest.fixture
def tiny_llm(monkeypatch, one_thread):
    """HomerLLM(...) in the CLI builds a tiny random llama instead of loading a model folder."""
    from tiny import tiny_engine

    engine = tiny_engine(layers=4, name="tiny-cli")
    made: dict[str, Any] = {}
    real = langchain_homer.HomerLLM

    def fake(**kwargs):
        made.update(kwargs)
        for name in ("model", "device", "dtype", "chunk_len"):
            kwargs.pop(name)
        return real(engine=engine, **kwargs)

    monkeypatch.setattr(langchain_homer, "HomerLLM", fake)
    monkeypatch.setattr("homer_llm.reuse.GENERIC_SUFFIX", "\n\nKeep the facts.")
    return made


def test_cli_prints_answers_and_cache_stats_last(tiny_llm, doc_file, capsys):
    code = cli.main(["--document", str(doc_file), "--question", "Which box is red?",
                     "--question", "How many coins in line 3?", "--max-tokens", "3", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("Opened doc-") and "boxes.txt" in out[0]
    stats = json.loads(out[-1])
    assert (stats["hits"], stats["misses"]) == (1, 1) and len(stats["answer_seconds"]) == 2
    assert stats["mode"] == "router"  # the tiny template renders no tools
    assert [t["kind"] for t in stats["turns"]] == ["open", "question", "question"]
    assert stats["turns"][1]["cache_creation"] > 0 and stats["turns"][2]["cache_read"] > 0
    assert any(line.startswith("A1: ") for line in out) and any(line.startswith("A2: ") for line in out)
    assert tiny_llm["max_tokens"] == 3 and isinstance(tiny_llm["document_cache"], DocumentCache)
    assert "focus_leaves" not in tiny_llm  # the chat model's own default


def test_focus_leaves_reaches_the_chat_model(tiny_llm, doc_file, capsys):
    code = cli.main(["--document", str(doc_file), "--question", "Which box is red?", "--max-tokens", "2",
                     "--quiet", "--focus-leaves", "3"])
    assert code == 0 and tiny_llm["focus_leaves"] == 3


@pytest.mark.skipif(not Path("/etc/passwd").exists(), reason="no /etc/passwd on this system")
def test_a_refused_document_exits_1_with_one_line(tiny_llm, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["--document", "/etc/passwd", "--question", "Who is root?", "--quiet",
                     "--allow-root", str(tmp_path)])
    assert code == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("homer-agent: error: cannot open '/etc/passwd'")
    assert "outside the allowed folders" in errors[0]
    assert "root:" not in captured.out and "A1:" not in captured.out
    assert json.loads(captured.out.strip().splitlines()[-1])["misses"] == 0


def test_a_missing_document_and_a_question_without_one_exit_1(tiny_llm, tmp_path, capsys):
    assert cli.main(["--document", str(tmp_path / "missing.txt"), "--question", "Q?", "--quiet"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["--question", "Q?", "--quiet", "--thread", "empty"]) == 1
    assert "no document is open in thread 'empty'" in capsys.readouterr().err


def test_a_tool_error_on_the_last_turn_exits_1(tiny_llm, doc_file, capsys, monkeypatch):
    from homer_agent import registry

    def broken(self, ref):
        raise registry.DocumentChangedError(f"document {ref['id']} changed since it was opened")

    monkeypatch.setattr(registry.DocumentRegistry, "resolve", broken)
    code = cli.main(["--document", str(doc_file), "--question", "Which box is red?", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and "A1:" not in captured.out
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith("homer-agent: error: question 1 failed: ask_document: document doc-")
    assert "changed since it was opened" in line


def test_a_model_that_fails_to_load_exits_1_without_a_traceback(tmp_path, doc_file):
    """A real subprocess: the model folder does not exist."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "homer_agent", "--model", str(tmp_path / "no-such-model"), "--document",
         str(doc_file), "--question", "Q?", "--quiet"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "A1:" not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("homer-agent: error: cannot load model")


@pytest.mark.parametrize("argv, message", [
    (["--agent", "llm", "--question", "Q"], "invalid choice: 'llm'"),
    (["--max-tokens", "0", "--question", "Q"], "expected a positive integer, got '0'"),
    (["--max-document-bytes", "lots", "--question", "Q"], "expected a positive integer, got 'lots'"),
    (["--allow-root", "/no/such/folder", "--question", "Q"], "not an existing folder: '/no/such/folder'"),
    (["--focus-leaves", "-1", "--question", "Q"], "expected a non-negative integer, got '-1'"),
    ([], "nothing to do"),
])
def test_bad_arguments_give_one_argparse_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("homer-agent: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_console_script_and_module_entry_points():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = Path(sys.executable).with_name("homer-agent")
    commands = [[sys.executable, "-m", "homer_agent", "--help"]]
    if script.exists():
        commands.append([str(script), "--help"])
    for command in commands:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
        assert proc.returncode == 0 and "--allow-root" in proc.stdout and "--checkpoint" in proc.stdout
