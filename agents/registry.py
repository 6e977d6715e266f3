"""Opened documents, kept outside the graph state.

LangGraph checkpointers serialize the state after every step, so the state holds document ids
only; the text lives here, in process memory, keyed by a content id. The id is derived from the
text (``doc-`` + 12 hex digits of its sha256), so re-opening the same file gives the same id and a
checkpointed conversation resumed in a new process can re-open its documents from their paths.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from homer_llm import check_document


@dataclass(frozen=True)
class Document:
    """One opened document."""

    id: str
    path: str
    name: str
    text: str

    @property
    def characters(self) -> int:
        return len(self.text)


def document_id(text: str) -> str:
    return "doc-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class DocumentRegistry:
    """Thread-safe id -> Document map."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}
        self._lock = threading.Lock()

    def open(self, path: str | Path) -> Document:
        """Read a UTF-8 text file and register it.

        Raises:
            ValueError: the file is missing, not UTF-8 text, empty, or binary.
        """
        file = Path(path).expanduser()
        if not file.is_file():
            raise ValueError(f"no such file: {str(path)!r}")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{str(path)!r} is not UTF-8 text: {err}") from err
        return self.add(text, path=str(file), name=file.name)

    def add(self, text: str, *, path: str = "", name: str = "") -> Document:
        """Register ``text`` directly (no file); returns its Document."""
        check_document(text)
        doc = Document(document_id(text), path, name or path or "document", text)
        with self._lock:
            self._docs.setdefault(doc.id, doc)
            return self._docs[doc.id]

    def get(self, doc_id: str) -> Document:
        """The document with id ``doc_id``.

        Raises:
            KeyError: unknown id (the message lists the known ones).
        """
        with self._lock:
            if doc_id in self._docs:
                return self._docs[doc_id]
            known = sorted(self._docs)
        raise KeyError(f"unknown document id {doc_id!r}; open documents: {known}")

    def __contains__(self, doc_id: str) -> bool:
        with self._lock:
            return doc_id in self._docs

    def __len__(self) -> int:
        with self._lock:
            return len(self._docs)
