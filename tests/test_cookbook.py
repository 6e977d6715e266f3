"""The cookbook: every notebook is committed without outputs, indexed, and runs top to bottom."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

COOKBOOK = Path(__file__).resolve().parent.parent / "cookbook"
NOTEBOOKS = sorted(COOKBOOK.glob("[0-9][0-9]_*.ipynb"))


def test_the_cookbook_has_its_numbered_notebooks():
    names = [p.name[:2] for p in NOTEBOOKS]
    assert names == ["01", "02", "03", "04", "05", "06"]
    index = (COOKBOOK / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"({path.name})" in index, f"{path.name} missing from cookbook/README.md"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    """Execute in a fresh kernel (this interpreter) from the repository root, on the default model."""
    from nbclient import NotebookClient

    pytest.importorskip("ipykernel")
    monkeypatch.setenv("HOMER_COOKBOOK_TOKENS", os.environ.get("HOMER_COOKBOOK_TOKENS", "16000"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(book, timeout=3600, kernel_name="python3",
                            resources={"metadata": {"path": str(COOKBOOK.parent)}})
    client.execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    assert all(c.execution_count for c in book.cells if c.cell_type == "code")


# ---------------------------------------------------------------------------------------- the agent notebook
AGENT_NOTEBOOK = COOKBOOK / "04_langgraph_agent.ipynb"


def _run_agent_notebook(monkeypatch, **env: str) -> str:
    """Execute the agent notebook with ``env`` set; returns its printed output."""
    from nbclient import NotebookClient

    pytest.importorskip("ipykernel")
    pytest.importorskip("langgraph.checkpoint.sqlite")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    book = nbformat.read(AGENT_NOTEBOOK, as_version=4)
    NotebookClient(book, timeout=3600, kernel_name="python3",
                   resources={"metadata": {"path": str(COOKBOOK.parent)}}).execute()
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def test_agent_notebook_runs_the_router_on_the_default_model(monkeypatch):
    """The default model's template renders no tools: the router drives them (a short document)."""
    monkeypatch.delenv("HOMER_COOKBOOK_AGENT_MODEL", raising=False)
    text = _run_agent_notebook(monkeypatch, HOMER_COOKBOOK_TOKENS="1200")
    assert "mode: router" in text and "'disk_hits': 1" in text and "outside the allowed folders" in text


@pytest.mark.slow
def test_agent_notebook_runs_model_driven_on_qwen_1_5b(monkeypatch):
    """Qwen2.5-Coder-1.5B's template renders tools: the model chooses them (HOMER over a 4k-token
    document with 2k chunks, so the document spans several leaves)."""
    from real_models import QWEN_SKIP, qwen_path

    path = qwen_path("1.5b")
    if path is None:
        pytest.skip(QWEN_SKIP)
    text = _run_agent_notebook(monkeypatch, HOMER_COOKBOOK_AGENT_MODEL=str(path), HOMER_COOKBOOK_TOKENS="4096",
                               HOMER_COOKBOOK_CHUNK_LEN="2048")
    print(text)  # the answers, for the record (pytest -s)
    assert "mode: model" in text and "-> open_document(" in text and "-> ask_document(" in text
