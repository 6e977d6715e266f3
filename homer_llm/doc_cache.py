"""A document KV cache for HOMER-compressed states (DESIGN.md section 5, HOMER.md section 13).

Not a token-prefix cache: an entry is one document's compressed state, keyed by the model's
identity (name, weights probe, dtype, device type, attention backend), the HOMER config, the
reuse mode, the prompt's prefix ids and a content hash of the document ids (plus the suffix ids
when the entry is question-specific). Tiers:

- memory (the device the engine runs on, GPU or CPU): a byte budget, LRU eviction, and pinning
  (a pinned entry is never evicted while a request uses it);
- CPU (optional): entries evicted from the memory tier move here, bounded by their own budget,
  and are moved back to the device on a hit;
- disk (optional): one safetensors file per entry, written through on insert. The safetensors
  header's ``__metadata__`` carries a JSON document with the key, the kind of value and sha256
  digests of the tensor index and of the data bytes; all of it is checked BEFORE the bytes are
  handed to the safetensors parser, so a truncated or corrupted file is never loaded: it is
  deleted, counted as ``corrupt``, and the entry is recomputed. Nothing is ever unpickled.

All public methods are thread-safe; concurrent requests for the same key compress it once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
import struct
import sys
import tempfile
import threading
import time
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import reuse
from .engine import CompressedContext, CompressionStats, Progress
from .prompt import PromptParts

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
DEFAULT_MAX_BYTES = 2 * 1024**3

CacheValue = CompressedContext | reuse.LeafStates


# ---------------------------------------------------------------------------------------- values
def value_nbytes(value: CacheValue) -> int:
    if isinstance(value, CompressedContext):
        return value.kv_bytes() + value.last_logits.numel() * value.last_logits.element_size()
    return value.nbytes()


def value_to(value: CacheValue, device: torch.device | str) -> CacheValue:
    """The same value with every tensor on ``device`` (no copy when already there)."""
    if isinstance(value, CompressedContext):
        kv = tuple((k.to(device), v.to(device)) for k, v in value.kv)
        return replace(value, kv=kv, last_logits=value.last_logits.to(device))
    return value.to(device)


def value_device(value: CacheValue) -> torch.device:
    return value.kv[0][0].device if isinstance(value, CompressedContext) else value.hidden[0].device


def encode_value(value: CacheValue) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, json-able metadata) of a cache value."""
    if isinstance(value, CompressedContext):
        tensors = {"last_logits": value.last_logits.contiguous()}
        for i, (k, v) in enumerate(value.kv):
            tensors[f"kv.{i}.k"] = k.contiguous()
            tensors[f"kv.{i}.v"] = v.contiguous()
        meta = {"kind": "context", "layers": len(value.kv), "next_position": value.next_position,
                "stats": asdict(value.stats)}
        return tensors, meta
    if isinstance(value, reuse.LeafStates):
        return value.tensors(), value.meta()
    raise TypeError(f"cannot cache a {type(value).__name__}; expected CompressedContext or LeafStates")


def decode_value(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> CacheValue:
    if not isinstance(meta, dict):
        raise ValueError(f"cache entry metadata must be an object, got {type(meta).__name__}")
    kind = meta.get("kind")
    if kind == "context":
        kv = tuple((tensors[f"kv.{i}.k"], tensors[f"kv.{i}.v"]) for i in range(int(meta["layers"])))
        return CompressedContext(kv, int(meta["next_position"]), tensors["last_logits"],
                                 CompressionStats(**meta["stats"]))
    if kind == "leaves":
        return reuse.LeafStates.from_tensors(tensors, meta)
    raise ValueError(f"unknown cache entry kind {kind!r}")


# ---------------------------------------------------------------------------------------- keys
def ids_digest(ids: tuple[int, ...] | list[int]) -> str:
    """sha256 of a token-id sequence (int64, little-endian)."""
    buf = array("q", ids)
    if buf.itemsize != 8:  # pragma: no cover - every supported platform has 8-byte "q"
        raise RuntimeError("array('q') is not 64-bit here")
    data = buf.tobytes() if sys.byteorder == "little" else _swapped(buf)
    return hashlib.sha256(data).hexdigest()


def _swapped(buf: array) -> bytes:  # pragma: no cover - big-endian hosts only
    buf = array("q", buf)
    buf.byteswap()
    return buf.tobytes()


_probes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_probes_lock = threading.Lock()


def model_identity(engine: Any) -> dict[str, Any]:
    """What makes two engines produce the same states: name, weights probe, dtype, device type,
    attention backend and the resolved HOMER config."""
    model = engine.model
    with _probes_lock:
        probe = _probes.get(model)
        fingerprint = getattr(engine, "fingerprint", None)  # HomerModel: weights, tokenizer and files
        if isinstance(fingerprint, str):
            probe = fingerprint
        elif probe is None:
            h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
            for param in (engine.parts.embed.weight, engine.parts.lm_head.weight):
                h.update(param.detach().reshape(-1)[:256].float().cpu().numpy().tobytes())
            probe = h.hexdigest()[:32]
            _probes[model] = probe
    param = next(model.parameters())
    return {
        "name": str(engine.name),
        "probe": probe,
        "dtype": str(param.dtype),
        "device": param.device.type,
        "attn": engine.parts.attn_implementation,
        "homer": _homer_key(engine.homer),
    }


def _homer_key(homer: Any) -> dict[str, Any]:
    """The HOMER config in a cache key. ``merge_attention``, ``focus_locator`` and
    ``focus_keep_document`` enter it only when they differ from causal merges, the tree locator and
    focus alone, the behaviour of keys that lack these fields, so such stored entries stay hits;
    the defaults (own-leaf merges, the leaf locator) are in the key."""
    out = asdict(homer)
    for name, default in (("merge_attention", "causal"), ("focus_locator", "tree"), ("focus_keep_document", False)):
        if out.get(name) == default:
            del out[name]
    return out


def make_key(
    engine: Any,
    prefix: tuple[int, ...],
    context: tuple[int, ...],
    suffix: tuple[int, ...] | None,
    *,
    mode: str,
    namespace: str = "",
    extra: dict[str, Any] | None = None,
) -> str:
    """Hex sha256 key of one entry. ``suffix`` None: the entry does not depend on the question."""
    blob = {
        "v": FORMAT_VERSION,
        "ns": namespace,
        "model": model_identity(engine),
        "mode": mode,
        "prefix": ids_digest(prefix),
        "context": ids_digest(context),
        "context_len": len(context),
        "suffix": None if suffix is None else ids_digest(suffix),
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------- disk format
class CorruptEntry(ValueError):
    """A disk entry failed its integrity check (truncated, edited, or for another key)."""


def _layout_digest(header: dict[str, Any]) -> str:
    index = {k: v for k, v in header.items() if k != "__metadata__"}
    return hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()


def encode_file(key: str, value: CacheValue) -> bytes:
    """A safetensors file whose ``__metadata__["homer_llm"]`` JSON holds key, kind and digests."""
    tensors, meta = encode_value(value)
    tensors = {name: t.detach().cpu() for name, t in tensors.items()}
    raw = st_save(tensors)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    data = memoryview(raw)[8 + n :]
    header.pop("__metadata__", None)
    info = {
        "format": FORMAT_VERSION,
        "key": key,
        "value": meta,
        "data_bytes": len(data),
        "data_sha256": hashlib.sha256(data).hexdigest(),
        "layout_sha256": _layout_digest(header),
    }
    header["__metadata__"] = {"homer_llm": json.dumps(info, sort_keys=True)}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


def decode_file(blob: bytes, key: str) -> CacheValue:
    """Verify ``blob`` completely, then parse it (safetensors, CPU tensors).

    Raises:
        CorruptEntry: on any size, digest, format or key mismatch (checked before parsing).
    """
    if len(blob) < 8:
        raise CorruptEntry(f"file of {len(blob)} bytes is shorter than a safetensors header")
    n = struct.unpack("<Q", blob[:8])[0]
    if n > len(blob) - 8:
        raise CorruptEntry(f"header length {n} exceeds the file ({len(blob)} bytes): truncated")
    try:
        header = json.loads(blob[8 : 8 + n])
        info = json.loads(header["__metadata__"]["homer_llm"])
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptEntry(f"unreadable header: {err}") from err
    if info.get("format") != FORMAT_VERSION:
        raise CorruptEntry(f"format {info.get('format')!r}, expected {FORMAT_VERSION!r}")
    if info.get("key") != key:
        raise CorruptEntry("entry belongs to another key")
    data = memoryview(blob)[8 + n :]
    if len(data) != info.get("data_bytes"):
        raise CorruptEntry(f"data is {len(data)} bytes, header says {info.get('data_bytes')}: truncated")
    if _layout_digest(header) != info.get("layout_sha256"):
        raise CorruptEntry("tensor index digest mismatch")
    if hashlib.sha256(data).hexdigest() != info.get("data_sha256"):
        raise CorruptEntry("data digest mismatch")
    try:
        return decode_value(_parse(blob), info["value"])
    except Exception as err:  # noqa: BLE001 - self-consistent but forged content: any failure is a reject
        raise CorruptEntry(f"entry does not decode: {type(err).__name__}: {err}") from None


@dataclass(frozen=True)
class EntrySpec:
    """What an entry read for one engine must look like (checked before it is used or kept).

    Attributes:
        kind: "context" or "leaves".
        num_layers, num_kv_heads, head_dim, hidden, vocab: the model's shapes.
        dtype: the model's parameter dtype.
    """

    kind: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    dtype: torch.dtype

    @classmethod
    def for_engine(cls, engine: Any, kind: str) -> EntrySpec:
        p = engine.parts
        weight = p.embed.weight
        return cls(kind, p.num_layers, p.num_kv_heads, p.head_dim, int(weight.shape[1]), int(weight.shape[0]),
                   next(engine.model.parameters()).dtype)

    def check(self, value: CacheValue) -> None:
        """CorruptEntry naming the first mismatch between ``value`` and this spec."""
        kind = "context" if isinstance(value, CompressedContext) else "leaves"
        if kind != self.kind:
            raise CorruptEntry(f"entry is a {kind} entry, expected {self.kind}")
        if isinstance(value, CompressedContext):
            if len(value.kv) != self.num_layers:
                raise CorruptEntry(f"entry has {len(value.kv)} layers, the model {self.num_layers}")
            self._check_kv(value.kv, None)
            if tuple(value.last_logits.shape) != (self.vocab,):
                raise CorruptEntry(f"entry logits of shape {tuple(value.last_logits.shape)}, expected ({self.vocab},)")
            return
        if not 1 <= value.leaf_layers <= self.num_layers or any(len(leaf) != value.leaf_layers for leaf in value.kv):
            raise CorruptEntry(f"entry leaves have {value.leaf_layers} layers, the model {self.num_layers}")
        for leaf, hidden in zip(value.kv, value.hidden, strict=True):
            n = self._check_kv(leaf, None)
            if hidden.dim() != 3 or tuple(hidden.shape) != (1, n, self.hidden) or hidden.dtype != self.dtype:
                raise CorruptEntry(f"entry hidden state of shape {tuple(hidden.shape)}, expected (1, {n}, {self.hidden})")

    def _check_kv(self, kv: tuple, n: int | None) -> int:
        for k, v in kv:
            for t in (k, v):
                if t.dim() != 4 or t.shape[0] != 1 or t.shape[1] != self.num_kv_heads or t.shape[3] != self.head_dim:
                    raise CorruptEntry(f"entry K/V of shape {tuple(t.shape)}, expected (1, {self.num_kv_heads}, "
                                       f"n, {self.head_dim})")
                if t.dtype != self.dtype:
                    raise CorruptEntry(f"entry K/V in {t.dtype}, the model in {self.dtype}")
                n = t.shape[2] if n is None else n
                if t.shape[2] != n:
                    raise CorruptEntry("entry K/V lengths differ between layers")
        return int(n or 0)


def _parse(blob: bytes) -> dict[str, torch.Tensor]:
    """The only place file bytes become tensors (safetensors: no code execution)."""
    return st_load(blob)


# ---------------------------------------------------------------------------------------- the cache
@dataclass
class _Entry:
    value: CacheValue
    nbytes: int
    pins: int = 0


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    cpu_hits: int = 0
    disk_hits: int = 0
    cpu_evictions: int = 0
    disk_evictions: int = 0
    disk_writes: int = 0
    corrupt: int = 0
    uncacheable: int = 0
    disk_errors: int = 0


class DocumentCache:
    """LRU cache of compressed document states with optional CPU and disk tiers.

    Args:
        max_bytes: byte budget of the memory tier (the engine's device). Pinned entries may push
            it over the budget temporarily; they are evicted once unpinned.
        cpu_max_bytes: budget of the CPU tier for entries evicted from the memory tier (0: off).
        disk_dir: folder of the disk tier (None: off).
        disk_max_bytes: disk tier budget (None: unbounded); oldest-accessed files go first.
        mode: reuse mode used by ``get_or_compress``: "agnostic", "leaf" or "exact" (see
            ``homer_llm.reuse``). An engine whose read the question chooses (the hybrid read,
            focus with the leaf locator) is served from cached leaves in "agnostic" mode too; focus
            with the tree locator is cached exactly in every mode.
        generic_suffix: the question-independent suffix of "agnostic" mode (None:
            ``reuse.GENERIC_SUFFIX``).
        suffix_budget: suffix tokens reserved per leaf in "leaf" mode.
        namespace: salt mixed into every key (separate tenants, experiments).
        max_entry_bytes: largest disk file read (or written) as an entry (None: the largest of
            the three budgets plus 64 MiB); a bigger file is rejected from its size alone.

    The disk tier owns only the files it writes: ``<64 hex digits>.safetensors`` whose header
    carries this module's metadata for that very key; the budget sweep, ``clear`` and the size
    count never touch anything else in the folder. Several processes may share one folder: a
    file another process removed or replaced midway is a miss, never an exception. Only regular
    files are read (no FIFOs, devices, directories, and symbolic links are not followed), and an
    entry that fails any check, including :class:`EntrySpec` against the engine it is read for,
    is removed and counted as ``corrupt``.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        cpu_max_bytes: int = 0,
        disk_dir: str | Path | None = None,
        disk_max_bytes: int | None = None,
        mode: str = "agnostic",
        generic_suffix: str | None = None,
        suffix_budget: int = reuse.DEFAULT_SUFFIX_BUDGET,
        namespace: str = "",
        max_entry_bytes: int | None = None,
    ) -> None:
        for name, value in (("max_bytes", max_bytes), ("cpu_max_bytes", cpu_max_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if disk_max_bytes is not None and (not isinstance(disk_max_bytes, int) or disk_max_bytes < 0):
            raise ValueError(f"disk_max_bytes must be None or an int >= 0, got {disk_max_bytes!r}")
        if max_entry_bytes is not None and (not isinstance(max_entry_bytes, int) or max_entry_bytes < 1):
            raise ValueError(f"max_entry_bytes must be None or a positive int, got {max_entry_bytes!r}")
        if not isinstance(suffix_budget, int) or suffix_budget < 1:
            raise ValueError(f"suffix_budget must be a positive int, got {suffix_budget!r}")
        self.mode = reuse.check_mode(mode)
        self.max_bytes = max_bytes
        self.cpu_max_bytes = cpu_max_bytes
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.disk_max_bytes = disk_max_bytes
        self.generic_suffix = reuse.GENERIC_SUFFIX if generic_suffix is None else generic_suffix
        self.suffix_budget = suffix_budget
        self.namespace = namespace
        self.max_entry_bytes = max_entry_bytes if max_entry_bytes is not None else (
            max(max_bytes, cpu_max_bytes, disk_max_bytes or 0) + 64 * 1024**2)
        self._mem: OrderedDict[str, _Entry] = OrderedDict()
        self._cpu: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._cpu_bytes = 0
        self._c = _Counters()
        self._lock = threading.RLock()
        self._key_locks: dict[str, list] = {}  # key -> [lock, users]
        self._owned_memo: dict[tuple, bool] = {}  # (name, inode, size, mtime_ns) -> header says ours
        if self.disk_dir is not None:
            self.disk_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ statistics
    def stats(self) -> dict[str, int]:
        """Counters and sizes: hits, misses, evictions, bytes (memory tier) and tier details."""
        with self._lock:
            c = self._c
            return {
                "hits": c.hits,
                "misses": c.misses,
                "evictions": c.evictions,
                "bytes": self._bytes,
                "entries": len(self._mem),
                "cpu_bytes": self._cpu_bytes,
                "cpu_entries": len(self._cpu),
                "cpu_hits": c.cpu_hits,
                "cpu_evictions": c.cpu_evictions,
                "disk_bytes": self._disk_bytes(),
                "disk_hits": c.disk_hits,
                "disk_writes": c.disk_writes,
                "disk_evictions": c.disk_evictions,
                "corrupt": c.corrupt,
                "uncacheable": c.uncacheable,
                "disk_errors": c.disk_errors,
                "pinned": sum(1 for e in self._mem.values() if e.pins),
            }

    def __len__(self) -> int:
        with self._lock:
            return len(self._mem)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            path = self._path(key)
            return key in self._mem or key in self._cpu or (path is not None and _is_file(path))

    def keys(self) -> list[str]:
        """Memory-tier keys, least recently used first."""
        with self._lock:
            return list(self._mem)

    # ------------------------------------------------------------------ core operations
    def get(
        self, key: str, device: torch.device | str | None = None, *, expect: EntrySpec | None = None
    ) -> CacheValue | None:
        """The value for ``key`` from any tier (promoted to the memory tier), or None. Counts a hit
        or a miss. ``expect``: what a disk entry must match (see :class:`EntrySpec`) to be used."""
        with self._lock:
            value = self._lookup(key, device, expect)
            if value is None:
                self._c.misses += 1
            else:
                self._c.hits += 1
            return value

    def put(self, key: str, value: CacheValue, *, write_disk: bool = True) -> None:
        """Insert (or replace) ``key``; written through to the disk tier when there is one."""
        nbytes = value_nbytes(value)
        with self._lock:
            self._remove_memory(key)
            self._insert(key, _Entry(value, nbytes))
        if write_disk and self.disk_dir is not None:
            if nbytes > self.max_entry_bytes:
                logger.warning("cache entry of %d bytes exceeds max_entry_bytes %d: not written to disk",
                               nbytes, self.max_entry_bytes)
            else:
                self._write_disk(key, value)

    def evict(self, key: str) -> bool:
        """Drop ``key`` from every tier (disk included). False if it was nowhere. Refuses pinned."""
        with self._lock:
            entry = self._mem.get(key)
            if entry is not None and entry.pins:
                raise RuntimeError(f"cache entry {key[:12]} is pinned by a running request")
            found = self._remove_memory(key)
            found = self._remove_cpu(key) or found
            path = self._path(key)
            if path is not None and _is_file(path):
                found = _unlink(path) or found
            return found

    def clear(self, *, disk: bool = True) -> None:
        """Drop every unpinned entry (and the disk tier's files when ``disk``). Counters stay."""
        with self._lock:
            for key in [k for k, e in self._mem.items() if not e.pins]:
                self._remove_memory(key)
            self._cpu.clear()
            self._cpu_bytes = 0
            if disk and self.disk_dir is not None:
                for path, _ in self._own_files():
                    _unlink(path)

    @contextmanager
    def pinned(self, key: str, device: torch.device | str | None = None) -> Iterator[CacheValue | None]:
        """Hold ``key`` in the memory tier (never evicted) for the duration of the block.

        Yields the value (looked up like ``get``, counting a hit or a miss) or None if absent.
        """
        with self._lock:
            value = self.get(key, device)
            entry = self._pin(key) if value is not None else None
        try:
            yield value
        finally:
            if entry is not None:
                with self._lock:
                    entry.pins -= 1
                    self._enforce()

    # ------------------------------------------------------------------ the integration entry point
    def get_or_compress(
        self, engine: Any, parts: PromptParts, progress: Progress | None = None
    ) -> tuple[CompressedContext, bool]:
        """The compressed context for ``parts`` on ``engine``, reusing cached work.

        Returns (context, hit): ``hit`` is True when the document's cached state was reused
        (its compression was skipped). A prompt without a document is compressed directly and
        never cached. The mode (``self.mode``) decides what is cached (module docstring of
        ``homer_llm.reuse``); the returned context is always ready for ``engine.generate``.
        """
        if not parts.context:
            return engine.compress(parts, progress=progress), False
        focus = bool(engine.homer.focus_leaves)
        hybrid = focus and engine.homer.focus_keep_document
        mode = self.mode
        if focus and mode != "exact":
            if not hybrid and engine.homer.focus_locator in ("tree", "lexical"):
                # the tree locator ranks leaves after a tree pruned for this question, the lexical
                # one runs no model before the plain read: nothing to share
                logger.info("HomerConfig.focus_leaves with the %s locator: %s mode falls back to exact "
                            "compression", engine.homer.focus_locator, mode)
                return self._exact(engine, parts, progress)
            # a read the question chooses has nothing question-free to share; its leaves are (the
            # query-aware reuse of "leaf" mode), so that is what is cached in "agnostic" mode too
            mode = "leaf"
        if mode == "exact":
            return self._exact(engine, parts, progress)
        if mode == "agnostic":
            base_parts = reuse.agnostic_parts(engine, parts, self.generic_suffix)
            try:
                engine.plan(base_parts)
            except ValueError as err:  # the generic suffix leaves too little room in a chunk
                logger.warning("question-agnostic prompt cannot be planned (%s): exact compression", err)
                return self._exact(engine, parts, progress)
            key = make_key(engine, base_parts.prefix, base_parts.context, base_parts.suffix,
                           mode="agnostic", namespace=self.namespace)
            with self._use(key, engine, lambda: engine.compress(base_parts, progress=progress)) as (base, hit):
                assert isinstance(base, CompressedContext)
                return reuse.extend(engine, base, parts.suffix), hit
        # leaf
        budget = reuse.suffix_budget_for(engine, parts, self.suffix_budget)
        if len(parts.suffix) > budget:
            logger.info("suffix of %d tokens exceeds the leaf budget %d: exact compression", len(parts.suffix), budget)
            return self._exact(engine, parts, progress)
        key = make_key(engine, parts.prefix, parts.context, None, mode="leaf", namespace=self.namespace,
                       extra={"suffix_budget": budget})

        def build() -> reuse.LeafStates:
            return reuse.build_leaf_states(engine, parts, budget, progress=progress)

        with self._use(key, engine, build, "leaves") as (leaves, hit):
            assert isinstance(leaves, reuse.LeafStates)
            # the merges over the leaves are a count of their own (after the leaves' on a miss):
            # minutes on a large model, not to be spent in silence
            if focus and leaves.num_leaves > 1:
                if hybrid:
                    return reuse.hybrid_from_leaves(engine, parts, leaves, progress=progress), hit
                return reuse.focus_from_leaves(engine, parts, leaves), hit
            return reuse.compress_from_leaves(engine, parts, leaves, progress=progress), hit

    def _exact(self, engine: Any, parts: PromptParts, progress: Progress | None) -> tuple[CompressedContext, bool]:
        key = make_key(engine, parts.prefix, parts.context, parts.suffix, mode="exact", namespace=self.namespace)
        with self._use(key, engine, lambda: engine.compress(parts, progress=progress)) as (ctx, hit):
            assert isinstance(ctx, CompressedContext)
            return ctx, hit

    @contextmanager
    def _use(self, key: str, engine: Any, compute, kind: str = "context") -> Iterator[tuple[CacheValue, bool]]:
        """Single-flight get-or-compute of ``key``; the entry stays pinned while the caller's block
        runs (the per-key lock is released before it, so hits on one document do not queue here)."""
        with self._key_lock(key):
            with self._lock:
                value = self.get(key, engine.device, expect=EntrySpec.for_engine(engine, kind))
                hit = value is not None
                entry = self._pin(key) if hit else None
            if not hit:
                value = compute()
                self.put(key, value)
                with self._lock:
                    entry = self._pin(key)
        try:
            yield value, hit
        finally:
            if entry is not None:
                with self._lock:
                    entry.pins -= 1
                    self._enforce()

    def _pin(self, key: str) -> _Entry | None:
        entry = self._mem.get(key)
        if entry is not None:
            entry.pins += 1
        return entry

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        with self._lock:
            slot = self._key_locks.setdefault(key, [threading.Lock(), 0])
            slot[1] += 1
        try:
            with slot[0]:
                yield
        finally:
            with self._lock:
                slot[1] -= 1
                if slot[1] == 0:
                    self._key_locks.pop(key, None)

    # ------------------------------------------------------------------ tiers (lock held)
    def _lookup(self, key: str, device: torch.device | str | None, expect: EntrySpec | None) -> CacheValue | None:
        entry = self._mem.get(key)
        if entry is not None:
            self._mem.move_to_end(key)
            return entry.value
        entry = self._cpu.pop(key, None)
        if entry is not None:
            self._cpu_bytes -= entry.nbytes
            self._c.cpu_hits += 1
            value = value_to(entry.value, device) if device is not None else entry.value
            self._insert(key, _Entry(value, entry.nbytes))
            return value
        value = self._read_disk(key, expect)
        if value is not None:
            self._c.disk_hits += 1
            if device is not None:
                value = value_to(value, device)
            self._insert(key, _Entry(value, value_nbytes(value)))
        return value

    def _insert(self, key: str, entry: _Entry) -> None:
        if entry.nbytes > self.max_bytes:
            logger.warning("cache entry of %d bytes exceeds the memory budget %d", entry.nbytes, self.max_bytes)
            self._c.uncacheable += 1
            self._to_cpu(key, entry)
            return
        self._mem[key] = entry
        self._bytes += entry.nbytes
        self._enforce()

    def _enforce(self) -> None:
        while self._bytes > self.max_bytes:
            victim = next((k for k, e in self._mem.items() if not e.pins), None)
            if victim is None:
                return  # everything left is pinned: over budget until released
            entry = self._mem.pop(victim)
            self._bytes -= entry.nbytes
            self._c.evictions += 1
            logger.debug("evicted %s (%d bytes)", victim[:12], entry.nbytes)
            self._to_cpu(victim, entry)

    def _to_cpu(self, key: str, entry: _Entry) -> None:
        if self.cpu_max_bytes <= 0 or entry.nbytes > self.cpu_max_bytes:
            return
        self._remove_cpu(key)
        self._cpu[key] = _Entry(value_to(entry.value, "cpu"), entry.nbytes)
        self._cpu_bytes += entry.nbytes
        while self._cpu_bytes > self.cpu_max_bytes:
            _, old = self._cpu.popitem(last=False)
            self._cpu_bytes -= old.nbytes
            self._c.cpu_evictions += 1

    def _remove_memory(self, key: str) -> bool:
        entry = self._mem.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry.nbytes
        return True

    def _remove_cpu(self, key: str) -> bool:
        entry = self._cpu.pop(key, None)
        if entry is None:
            return False
        self._cpu_bytes -= entry.nbytes
        return True

    # ------------------------------------------------------------------ disk tier
    def _path(self, key: str) -> Path | None:
        if self.disk_dir is None:
            return None
        if not all(c in "0123456789abcdef" for c in key) or not key:
            raise ValueError(f"cache keys are hex digests, got {key!r}")
        return self.disk_dir / f"{key}.safetensors"

    def _own_files(self) -> list[tuple[Path, os.stat_result]]:
        """(path, lstat) of the entries this tier wrote, oldest access first (see the class docstring)."""
        if self.disk_dir is None:
            return []
        out = []
        try:
            names = os.listdir(self.disk_dir)
        except OSError:
            return []
        for name in names:
            if not _ENTRY_NAME.fullmatch(name):
                continue
            path = self.disk_dir / name
            try:
                st = os.lstat(path)
            except OSError:  # removed by another process meanwhile
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            memo = (name, st.st_ino, st.st_size, st.st_mtime_ns)
            owned = self._owned_memo.get(memo)
            if owned is None:
                owned = _owned(path, name[:-len(_SUFFIX)], self.max_entry_bytes)
                if len(self._owned_memo) > 4 * len(names) + 64:  # forget files long gone
                    self._owned_memo.clear()
                self._owned_memo[memo] = owned
            if owned:
                out.append((path, st))
        out.sort(key=lambda item: item[1].st_mtime_ns)
        return out

    def _disk_bytes(self) -> int:
        return sum(st.st_size for _, st in self._own_files())

    def _read_disk(self, key: str, expect: EntrySpec | None = None) -> CacheValue | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            blob, ino = _read_regular(path, self.max_entry_bytes)
        except FileNotFoundError:
            return None
        except CorruptEntry as err:
            self._reject(path, None, err)
            return None
        except OSError as err:  # permission, I/O error, a directory removed midway: a miss
            logger.warning("disk cache entry %s unreadable (%s): recomputing", path.name, err)
            self._c.disk_errors += 1
            return None
        try:
            value = decode_file(blob, key)
            if expect is not None:
                expect.check(value)
        except CorruptEntry as err:
            self._reject(path, ino, err)
            return None
        try:
            os.utime(path, follow_symlinks=False)
        except OSError:  # removed by another process: the value read stays valid
            pass
        return value

    def _reject(self, path: Path, ino: int | None, err: Exception) -> None:
        """Count and remove an invalid entry (only the file that was read, when known: another
        process may have put a valid one in its place since)."""
        logger.warning("disk cache entry %s rejected (%s): recomputing", path.name, err)
        self._c.corrupt += 1
        try:
            st = os.lstat(path)
        except OSError:
            return
        if ino is not None and st.st_ino != ino:
            return
        if stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(path)
            except OSError:
                logger.warning("disk cache: %s is a non-empty directory, left in place", path)
            return
        _unlink(path)

    def _write_disk(self, key: str, value: CacheValue) -> None:
        path = self._path(key)
        assert path is not None
        blob = encode_file(key, value)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX, suffix=".part")
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            try:
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(path)
            except FileNotFoundError:
                pass
            os.replace(tmp, path)
            tmp = None
        except OSError as err:  # full disk, folder removed, a directory in the way: the entry stays in memory
            logger.warning("disk cache entry %s not written (%s)", path.name, err)
            with self._lock:
                self._c.disk_errors += 1
            return
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        with self._lock:
            self._c.disk_writes += 1
            self._enforce_disk(keep=path)

    def _enforce_disk(self, keep: Path) -> None:
        if self.disk_max_bytes is None or self.disk_dir is None:
            return
        self._sweep_temporaries()
        files = self._own_files()
        total = sum(st.st_size for _, st in files)
        for path, st in files:
            if total <= self.disk_max_bytes:
                break
            if path == keep:
                continue
            total -= st.st_size
            if _unlink(path):
                self._c.disk_evictions += 1

    def _sweep_temporaries(self) -> None:
        """Remove this tier's temporary files older than ``_STALE_TMP_SECONDS`` (a writer killed midway)."""
        assert self.disk_dir is not None
        try:
            names = [n for n in os.listdir(self.disk_dir) if n.startswith(_TMP_PREFIX) and n.endswith(".part")]
        except OSError:
            return
        now = time.time()
        for name in names:
            path = self.disk_dir / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > _STALE_TMP_SECONDS:
                _unlink(path)


# ---------------------------------------------------------------------------------------- file helpers
_SUFFIX = ".safetensors"
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.safetensors")
_TMP_PREFIX = ".homer-tmp-"
_STALE_TMP_SECONDS = 3600.0
_HEADER_LIMIT = 64 * 1024**2


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:  # already gone (another process), or not ours to remove
        return False


def _read_regular(path: Path, limit: int, header_only: bool = False) -> tuple[bytes, int]:
    """(bytes, inode) of the regular file at ``path``, at most ``limit`` bytes.

    Opened without following a symbolic link and without blocking (a FIFO), then checked with
    fstat: anything but a regular file, or a file over ``limit``, is a CorruptEntry. A file that
    shrinks while read (truncated by someone) is one too. ``header_only``: only the safetensors
    header is read (length-checked against the file size first).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CorruptEntry: not a regular file, too large, or short.
        OSError: any other failure to open or read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CorruptEntry("a symbolic link, not an entry file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptEntry(f"not a regular file (mode {stat.filemode(st.st_mode)})")
        if not header_only and st.st_size > limit:
            raise CorruptEntry(f"file of {st.st_size} bytes is over the {limit}-byte entry limit")
        want = st.st_size
        if header_only:
            head = os.pread(fd, 8, 0)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            if len(head) < 8 or n > min(st.st_size - 8, _HEADER_LIMIT):
                raise CorruptEntry("no valid header")
            want = 8 + n
        chunks, got = [], 0
        while got < want:
            block = os.read(fd, min(want - got, 1 << 24))
            if not block:
                raise CorruptEntry(f"file ended after {got} of {want} bytes")
            chunks.append(block)
            got += len(block)
        return b"".join(chunks), st.st_ino
    finally:
        os.close(fd)


def _owned(path: Path, key: str, limit: int) -> bool:
    """Whether the regular file at ``path`` is this tier's entry for ``key`` (its header says so)."""
    try:
        head, _ = _read_regular(path, limit, header_only=True)
        header = json.loads(head[8:])
        info = json.loads(header["__metadata__"]["homer_llm"])
        return isinstance(info, dict) and info.get("key") == key
    except (OSError, CorruptEntry, ValueError, KeyError, TypeError):
        return False
