"""A persistent checkpointer: conversations in a SQLite file (``langgraph-checkpoint-sqlite``).

    with sqlite_checkpointer("agent.sqlite") as saver:
        graph = build_agent(llm, checkpointer=saver)

The state holds document references (ids and resolved paths, with content hashes), so a thread
resumed in a new process re-opens its documents from disk; give the HomerLLM's
``DocumentCache`` a ``disk_dir`` too and their compressed states are found again as well
(``default_cache_dir``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

INSTALL_HINT = 'pip install "homer-llm[agents]"  (or: pip install langgraph-checkpoint-sqlite)'


def default_cache_dir(checkpoint: str | os.PathLike[str]) -> Path:
    """The document cache's disk folder that goes with a checkpoint file: ``<file>.kv`` beside it."""
    path = Path(checkpoint)
    return path.with_name(path.name + ".kv")


@contextmanager
def sqlite_checkpointer(path: str | os.PathLike[str]) -> Iterator[Any]:
    """A ``SqliteSaver`` on ``path`` (created if missing; its folder must exist); closed on exit.

    Raises:
        ImportError: langgraph-checkpoint-sqlite is not installed (the message says how to install it).
        ValueError: the folder of ``path`` does not exist, or ``path`` is not a SQLite database.
    """
    try:
        from langgraph.checkpoint.sqlite import SqliteSaver
    except ImportError as err:
        raise ImportError(f"the SQLite checkpointer needs langgraph-checkpoint-sqlite: {INSTALL_HINT}") from err
    file = Path(path).expanduser()
    if not file.parent.is_dir():
        raise ValueError(f"checkpoint folder {str(file.parent)!r} does not exist")
    conn = sqlite3.connect(str(file), check_same_thread=False)  # SqliteSaver locks around its use
    try:
        saver = SqliteSaver(conn)
        try:
            saver.setup()
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{str(path)!r} is not a usable SQLite checkpoint file: {err}") from None
        yield saver
    finally:
        conn.close()
