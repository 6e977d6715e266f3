"""Which files the agent may read: allowed roots, regular files only, a size cap, UTF-8 text.

The model (or a document it read) chooses the paths the agent opens, so every path is checked
here before a byte is read:

1. the path is made absolute (``~`` expanded, relative to the current directory) and resolved:
   every symlink and ``..`` is followed, so a link inside an allowed root that points outside it
   is judged by its target;
2. the resolved path must lie under one of the allowed roots (themselves resolved);
3. no component below the root may be hidden (``.ssh``, ``.env``, ``.git``...), so a root that
   happens to be a home folder does not expose its credentials (``allow_hidden=True`` lifts this);
4. the file is opened without following a last-moment symlink and without blocking
   (``O_NOFOLLOW | O_NONBLOCK``), then ``fstat`` must show a regular file (no FIFO, device,
   socket or directory) of at most ``max_bytes`` bytes;
5. the bytes must decode as UTF-8 (a UTF-16 or binary file gets a message saying so).

Default roots: the current working directory and the system temporary folder (where the sample
commands write their documents). Pass ``roots`` (CLI ``--allow-root DIR``, repeatable) to choose
others; the defaults then no longer apply.
"""

from __future__ import annotations

import codecs
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
"""Largest document read by default (4 MiB, about a million tokens of English)."""


class DocumentAccessError(ValueError):
    """A path the access policy refuses, or a file that is not readable UTF-8 text."""


def default_roots() -> tuple[Path, ...]:
    """The current working directory and the system temporary folder, resolved."""
    roots = []
    for root in (Path.cwd(), Path(tempfile.gettempdir())):
        resolved = root.resolve()
        if resolved not in roots:
            roots.append(resolved)
    return tuple(roots)


def _resolve_root(root: str | os.PathLike[str]) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"allowed root {str(root)!r} is not an existing folder")
    return path


@dataclass(frozen=True)
class DocumentAccess:
    """The access policy of a document registry.

    Attributes:
        roots: folders documents may be read from (resolved; default: ``default_roots()``).
        max_bytes: the largest file read, in bytes.
        allow_hidden: allow hidden files and folders (names starting with ".") below a root.
    """

    roots: tuple[Path, ...] = field(default_factory=default_roots)
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_hidden: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_bytes, int) or isinstance(self.max_bytes, bool) or self.max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int, got {self.max_bytes!r}")
        if not self.roots:
            raise ValueError("at least one allowed root is needed")
        object.__setattr__(self, "roots", tuple(_resolve_root(r) for r in self.roots))

    @classmethod
    def from_options(
        cls, roots: Iterable[str | os.PathLike[str]] | None = None, max_bytes: int | None = None,
        allow_hidden: bool = False,
    ) -> DocumentAccess:
        """A policy from optional CLI-style values (None: the defaults)."""
        chosen = tuple(roots) if roots else default_roots()
        return cls(chosen, DEFAULT_MAX_BYTES if max_bytes is None else max_bytes, allow_hidden)

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """The resolved path of ``path`` if the policy allows it.

        Raises:
            DocumentAccessError: empty path, outside every root, or hidden.
        """
        if not str(path).strip():
            raise DocumentAccessError("empty document path")
        if "\x00" in str(path):
            raise DocumentAccessError(f"document path {str(path)!r} contains a NUL byte")
        resolved = Path(path).expanduser().absolute().resolve()
        root = next((r for r in self.roots if resolved == r or resolved.is_relative_to(r)), None)
        if root is None:
            allowed = ", ".join(str(r) for r in self.roots)
            raise DocumentAccessError(
                f"{str(path)!r} resolves to {str(resolved)!r}, outside the allowed folders ({allowed}); "
                "allow another folder with --allow-root (DocumentAccess(roots=...))")
        hidden = [part for part in resolved.relative_to(root).parts if part.startswith(".")]
        if hidden and not self.allow_hidden:
            raise DocumentAccessError(f"{str(path)!r} is or lies in a hidden file or folder ({hidden[0]!r}), "
                                      "which the agent does not read")
        return resolved

    def read_text(self, path: str | os.PathLike[str]) -> tuple[Path, str]:
        """(resolved path, text) of an allowed UTF-8 text file.

        Raises:
            DocumentAccessError: refused by the policy, missing, not a regular file, too large,
                or not UTF-8 text.
        """
        resolved = self.resolve(path)
        data = self._read_bytes(path, resolved)
        return resolved, decode_utf8(data, str(path))

    def _read_bytes(self, shown: str | os.PathLike[str], resolved: Path) -> bytes:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(resolved, flags)
        except FileNotFoundError:
            raise DocumentAccessError(f"no such file: {str(shown)!r}") from None
        except IsADirectoryError:
            raise DocumentAccessError(f"{str(shown)!r} is a folder, not a regular file") from None
        except OSError as err:
            raise DocumentAccessError(f"cannot open {str(shown)!r}: {err.strerror or err}") from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise DocumentAccessError(f"{str(shown)!r} is a folder, not a regular file")
            if not stat.S_ISREG(info.st_mode):
                raise DocumentAccessError(f"{str(shown)!r} is not a regular file ({_kind(info.st_mode)})")
            if info.st_size > self.max_bytes:
                raise DocumentAccessError(
                    f"{str(shown)!r} is {info.st_size} bytes, over the limit of {self.max_bytes} bytes "
                    "(--max-document-bytes)")
            chunks, total = [], 0
            while total <= self.max_bytes:  # the file may grow after fstat: read at most max+1
                chunk = os.read(fd, min(1 << 20, self.max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > self.max_bytes:
                raise DocumentAccessError(f"{str(shown)!r} grew over the limit of {self.max_bytes} bytes")
            return b"".join(chunks)
        finally:
            os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"


def decode_utf8(data: bytes, shown: str) -> str:
    """``data`` as UTF-8 text (a UTF-8 byte-order mark is dropped).

    Raises:
        DocumentAccessError: UTF-16/32 (by byte-order mark or NUL pattern), or other non-UTF-8 bytes.
    """
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise DocumentAccessError(f"{shown!r} is UTF-32 text; the agent reads UTF-8: convert it first "
                                  "(e.g. iconv -f UTF-32 -t UTF-8)")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _looks_utf16(data):
        raise DocumentAccessError(f"{shown!r} is UTF-16 text; the agent reads UTF-8: convert it first "
                                  "(e.g. iconv -f UTF-16 -t UTF-8)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DocumentAccessError(f"{shown!r} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    return text.removeprefix("\ufeff")


def _looks_utf16(data: bytes) -> bool:
    """Mostly-ASCII UTF-16 without a byte-order mark: a NUL in every other byte."""
    sample = data[:4096]
    if len(sample) < 4:
        return False
    evens, odds = sample[0::2], sample[1::2]
    for zeros, chars in ((odds, evens), (evens, odds)):
        texty = sum(1 for b in chars if 32 <= b < 127 or b in (9, 10, 13))
        if zeros.count(0) > 0.9 * len(zeros) and texty > 0.9 * len(chars):
            return True
    return False
