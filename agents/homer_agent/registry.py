"""Opened documents, kept outside the graph state.

LangGraph checkpointers serialize the state after every step, so the state holds a small
reference per document (``DocumentRef``: id, resolved path, name, sha256, characters), never its
text or tensors. The text lives here, in process memory. A conversation resumed in another
process has the references but an empty registry: ``DocumentRegistry.resolve`` re-opens the file
from its path (through the same access policy) and checks its content hash, so a file changed
since it was opened is reported instead of silently answered from.

Document ids are content ids (``doc-`` + the first 12 hex digits of the text's sha256), so
re-opening the same text gives the same id.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from typing import TypedDict

from homer_llm import check_document

from .access import DocumentAccess, DocumentAccessError


class DocumentChangedError(DocumentAccessError):
    """The file behind a document reference no longer holds the text it was opened with."""


class DocumentRef(TypedDict):
    """What the graph state keeps of an opened document (JSON-serializable)."""

    id: str
    path: str
    name: str
    sha256: str
    characters: int


@dataclass(frozen=True)
class Document:
    """One opened document."""

    id: str
    path: str
    name: str
    text: str
    sha256: str

    @property
    def characters(self) -> int:
        return len(self.text)

    def ref(self) -> DocumentRef:
        """The state's reference to this document."""
        return DocumentRef(id=self.id, path=self.path, name=self.name, sha256=self.sha256,
                           characters=self.characters)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def document_id(text: str) -> str:
    """The content id of ``text``."""
    return "doc-" + text_sha256(text)[:12]


class DocumentRegistry:
    """Thread-safe id -> Document map whose files are read through a ``DocumentAccess`` policy.

    Args:
        access: the policy every ``open`` goes through (default: ``DocumentAccess()``: the
            current directory and the temp folder, 4 MiB).
    """

    def __init__(self, access: DocumentAccess | None = None) -> None:
        if access is not None and not isinstance(access, DocumentAccess):
            raise TypeError(f"access must be a DocumentAccess, got {type(access).__name__}")
        self.access = access if access is not None else DocumentAccess()
        self._docs: dict[str, Document] = {}
        self._lock = threading.Lock()

    def open(self, path: str | os.PathLike[str]) -> Document:
        """Read an allowed UTF-8 text file and register it.

        Raises:
            DocumentAccessError: refused by the policy, missing, not a regular file, too large,
                not UTF-8 text, empty or binary.
        """
        resolved, text = self.access.read_text(path)
        try:
            check_document(text)
        except ValueError as err:
            raise DocumentAccessError(f"{str(path)!r}: {err}") from None
        return self._add(text, path=str(resolved), name=resolved.name)

    def add(self, text: str, *, name: str = "document") -> Document:
        """Register ``text`` directly (no file: it cannot be re-opened in another process)."""
        check_document(text)
        return self._add(text, path="", name=name)

    def _add(self, text: str, *, path: str, name: str) -> Document:
        sha = text_sha256(text)
        doc = Document("doc-" + sha[:12], path, name, text, sha)
        with self._lock:
            self._docs.setdefault(doc.id, doc)
            return self._docs[doc.id]

    def get(self, doc_id: str) -> Document:
        """The registered document with id ``doc_id``.

        Raises:
            KeyError: unknown id (the message lists the known ones).
        """
        with self._lock:
            if doc_id in self._docs:
                return self._docs[doc_id]
            known = sorted(self._docs)
        raise KeyError(f"unknown document id {doc_id!r}; open documents: {known}")

    def resolve(self, ref: DocumentRef) -> Document:
        """The document behind a state reference, re-opened from its path when not registered.

        Raises:
            DocumentAccessError: the file cannot be read any more (moved, refused by the policy).
            DocumentChangedError: the file's content differs from the one the reference was made from.
        """
        with self._lock:
            doc = self._docs.get(ref["id"])
        if doc is not None:
            return doc
        if not ref.get("path"):
            raise DocumentAccessError(f"document {ref['id']} was added as text, not from a file; "
                                      "it cannot be re-opened here")
        try:
            resolved, text = self.access.read_text(ref["path"])
        except DocumentAccessError as err:
            raise DocumentAccessError(f"document {ref['id']} cannot be re-opened: {err}") from None
        sha = text_sha256(text)
        if sha != ref["sha256"]:
            raise DocumentChangedError(
                f"document {ref['id']} ({ref['path']}) changed since it was opened "
                f"(sha256 {ref['sha256'][:12]}..., now {sha[:12]}...); open it again to use the new text")
        return self._add(text, path=str(resolved), name=ref.get("name") or resolved.name)

    def __contains__(self, doc_id: str) -> bool:
        with self._lock:
            return doc_id in self._docs

    def __len__(self) -> int:
        with self._lock:
            return len(self._docs)
