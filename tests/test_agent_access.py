"""Which files the document agent reads: allowed roots, symlinks, special files, size, encoding.

Each refusal is checked on the registry (a ``DocumentAccessError`` naming the reason) and, for the
paths a model would pick, through the agent's tool (an error ToolMessage, not a crash or an answer).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("langgraph")

from homer_agent import DocumentAccess, DocumentAccessError, DocumentRegistry, default_roots  # noqa: E402


@pytest.fixture
def root(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("The meeting is on Tuesday.\n")
    return work


@pytest.fixture
def registry(root: Path) -> DocumentRegistry:
    return DocumentRegistry(DocumentAccess((root,), max_bytes=1000))


def refused(registry: DocumentRegistry, path, match: str) -> None:
    with pytest.raises(DocumentAccessError, match=match):
        registry.open(path)


def test_a_file_under_the_root_is_read(registry, root, monkeypatch):
    doc = registry.open(root / "notes.txt")
    assert doc.text.startswith("The meeting") and doc.path == str((root / "notes.txt").resolve())
    monkeypatch.chdir(root)
    assert registry.open("notes.txt").id == doc.id  # relative to the current folder


@pytest.mark.skipif(not Path("/etc/passwd").exists(), reason="no /etc/passwd on this system")
def test_etc_passwd_is_outside_the_roots(registry):
    refused(registry, "/etc/passwd", "outside the allowed folders")


def test_ssh_keys_are_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n")
    work = home / "project"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    # outside the root...
    refused(DocumentRegistry(DocumentAccess((work,))), "~/.ssh/id_ed25519", "outside the allowed folders")
    # ...and refused even when the home folder itself is a root: hidden names are never read
    refused(DocumentRegistry(DocumentAccess((home,))), "~/.ssh/id_ed25519", "hidden file or folder")
    (home / ".env").write_text("TOKEN=secret\n")
    refused(DocumentRegistry(DocumentAccess((home,))), home / ".env", "hidden")
    assert DocumentRegistry(DocumentAccess((home,), allow_hidden=True)).open(home / ".env").text.startswith("TOKEN")


def test_dot_dot_cannot_climb_out(registry, root, tmp_path):
    (tmp_path / "secret.txt").write_text("the vault code is 1234")
    refused(registry, root / ".." / "secret.txt", "outside the allowed folders")
    refused(registry, f"{root}/../../{tmp_path.name}/secret.txt", "outside the allowed folders")


def test_a_symlink_pointing_outside_is_refused(registry, root, tmp_path):
    (tmp_path / "secret.txt").write_text("the vault code is 1234")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    refused(registry, root / "link.txt", "outside the allowed folders")
    (root / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    refused(registry, root / "linked_dir" / "secret.txt", "outside the allowed folders")
    (root / "inside.txt").symlink_to(root / "notes.txt")  # a link that stays inside is fine
    assert registry.open(root / "inside.txt").name == "notes.txt"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_without_blocking(registry, root):
    os.mkfifo(root / "pipe.txt")
    refused(registry, root / "pipe.txt", "not a regular file .a FIFO.")


def test_a_folder_is_refused(registry, root):
    (root / "sub").mkdir()
    refused(registry, root / "sub", "is a folder")


def test_an_oversized_file_is_refused(registry, root):
    (root / "big.txt").write_text("x" * 1001)
    refused(registry, root / "big.txt", "1001 bytes, over the limit of 1000 bytes")
    (root / "fits.txt").write_text("x" * 1000)
    assert registry.open(root / "fits.txt").characters == 1000


def test_utf16_and_binary_files_get_clear_messages(registry, root):
    (root / "u16.txt").write_text("The meeting is on Tuesday.", encoding="utf-16")  # with a BOM
    refused(registry, root / "u16.txt", "UTF-16 text; the agent reads UTF-8")
    (root / "u16le.txt").write_bytes("The meeting is on Tuesday.".encode("utf-16-le"))  # without one
    refused(registry, root / "u16le.txt", "UTF-16")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    refused(registry, root / "latin1.txt", "not UTF-8 text")
    (root / "bin.dat").write_bytes(b"\x00\x01\x02")
    refused(registry, root / "bin.dat", "binary")
    (root / "empty.txt").write_text("  \n")
    refused(registry, root / "empty.txt", "empty")


def test_missing_and_empty_paths(registry, root):
    refused(registry, root / "nope.txt", "no such file")
    refused(registry, "", "empty document path")


def test_policy_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="max_bytes"):
        DocumentAccess((tmp_path,), max_bytes=0)
    with pytest.raises(ValueError, match="not an existing folder"):
        DocumentAccess((tmp_path / "missing",))
    with pytest.raises(TypeError, match="DocumentAccess"):
        DocumentRegistry("/tmp")  # type: ignore[arg-type]


def test_default_roots_are_the_working_and_temp_folders(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.chdir(tmp_path)
    assert default_roots()[0] == tmp_path.resolve()
    assert Path(tempfile.gettempdir()).resolve() in default_roots()
    assert DocumentAccess().roots == default_roots()


def test_the_agent_reports_refusals_as_tool_errors(root, tmp_path):
    """The router and the tool node turn each refusal into an error ToolMessage."""
    langchain_homer = pytest.importorskip("langchain_homer")
    from homer_agent import build_agent, run_turn
    from tiny import tiny_engine

    engine = tiny_engine(layers=2, name="tiny-access")
    (tmp_path / "secret.txt").write_text("the vault code is 1234")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "big.txt").write_text("x" * 2000)
    graph = build_agent(langchain_homer.HomerLLM(engine=engine, max_tokens=2), mode="router",
                        access=DocumentAccess((root,), max_bytes=1000))
    cases = {"/etc/passwd" if sys.platform != "win32" else "C:/Windows/win.ini": "outside the allowed folders",
             str(root / "link.txt"): "outside the allowed folders",
             str(root / ".." / "secret.txt"): "outside the allowed folders",
             str(root / "big.txt"): "over the limit", str(root): "is a folder"}
    for i, (path, reason) in enumerate(cases.items()):
        turn = run_turn(graph, f"/open {path}", f"t{i}")
        assert not turn.ok and turn.answer is None and reason in turn.error, (path, turn.error)
        assert turn.messages[-1].status == "error"
