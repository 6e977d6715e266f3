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
