"""The document cache's disk tier under hostile conditions: foreign files in its folder, special
files at an entry's path, forged but self-consistent entries, and several processes sharing one
folder while writers are killed midway and files are damaged underneath them.

The fault-injection tests print their figures (operations, processes, errors seen by callers,
wrong values served, entries lost); docs/reliability.md quotes them.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import signal
import stat
import threading
import time

import pytest
import torch
from safetensors.torch import save as st_save

from homer_llm import CompressedContext, CompressionStats, HomerModel, reuse
from homer_llm.doc_cache import DocumentCache, EntrySpec, encode_file

DOC = "".join(f"Line {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7} coins. " for i in range(24))
FORK = multiprocessing.get_context("fork")  # the workers need no fresh interpreter (torch import: seconds)


pytestmark = pytest.mark.usefixtures("one_thread")


def key(i: int) -> str:
    return f"{i:064x}"


def fake_ctx(n_tokens: int, *, layers: int = 2, heads: int = 2, dim: int = 4, seed: int = 0,
             dtype=torch.float32, vocab: int = 16) -> CompressedContext:
    g = torch.Generator().manual_seed(seed)
    kv = tuple((torch.randn(1, heads, n_tokens, dim, generator=g).to(dtype),
                torch.randn(1, heads, n_tokens, dim, generator=g).to(dtype)) for _ in range(layers))
    return CompressedContext(kv, n_tokens, torch.randn(vocab, generator=g), CompressionStats(n_tokens, n_tokens, 0, 1, 0, 0.0))


def same(a: CompressedContext, b: CompressedContext) -> bool:
    return len(a.kv) == len(b.kv) and all(
        torch.equal(x, y) for (ka, va), (kb, vb) in zip(a.kv, b.kv, strict=True) for x, y in ((ka, kb), (va, vb))
    ) and torch.equal(a.last_logits, b.last_logits) and a.next_position == b.next_position


SPEC = EntrySpec("context", num_layers=2, num_kv_heads=2, head_dim=4, hidden=8, vocab=16, dtype=torch.float32)
"""What every worker's entries look like (``fake_ctx`` defaults): reads are checked against it."""


def entry(tmp_path, k: str):
    return tmp_path / f"{k}.safetensors"


# ---------------------------------------------------------------------------------------- 4. foreign files
def test_budget_sweep_and_clear_leave_foreign_files_alone(tmp_path):
    foreign = {
        "model.safetensors": st_save({"w": torch.ones(4096)}),
        "notes.safetensors": b"not even safetensors",
        # our naming, a valid safetensors file, but not written by the cache (no metadata for this key)
        f"{key(99)}.safetensors": st_save({"w": torch.zeros(4096)}),
    }
    for name, blob in foreign.items():
        (tmp_path / name).write_bytes(blob)
    one = len(encode_file(key(1), fake_ctx(8)))
    cache = DocumentCache(disk_dir=tmp_path, disk_max_bytes=2 * one)
    for i in range(1, 5):
        cache.put(key(i), fake_ctx(8, seed=i))
    assert cache.stats()["disk_evictions"] == 2
    assert cache.stats()["disk_bytes"] == 2 * one  # foreign files are not counted either
    cache.clear()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(foreign), left
    for name, blob in foreign.items():
        assert (tmp_path / name).read_bytes() == blob


# ---------------------------------------------------------------------------------------- 6. special files
def _get_with_timeout(cache: DocumentCache, k: str, seconds: float = 10.0):
    out: list = []
    thread = threading.Thread(target=lambda: out.append(cache.get(k)), daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), out


def test_fifo_at_an_entry_path_is_a_miss_not_a_hang(tmp_path):
    path = entry(tmp_path, key(1))
    os.mkfifo(path)
    cache = DocumentCache(disk_dir=tmp_path)
    try:
        hung, out = _get_with_timeout(cache, key(1))
        assert not hung, "get() blocked on a FIFO"
        assert out == [None] and cache.stats()["corrupt"] == 1
        assert not path.exists()
    finally:
        if path.exists():  # release a reader blocked in open() (the behaviour being guarded against)
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)


def test_symlink_to_dev_zero_is_never_read(tmp_path):
    path = entry(tmp_path, key(1))
    os.symlink("/dev/zero", path)
    cache = DocumentCache(disk_dir=tmp_path)
    hung, out = _get_with_timeout(cache, key(1))
    assert not hung and out == [None]
    assert not os.path.lexists(path) and os.path.exists("/dev/zero")


def test_symlink_to_a_valid_entry_is_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    DocumentCache(disk_dir=elsewhere).put(key(1), fake_ctx(4))
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    os.symlink(entry(elsewhere, key(1)), entry(cache_dir, key(1)))
    cache = DocumentCache(disk_dir=cache_dir)
    assert cache.get(key(1)) is None and cache.stats()["corrupt"] == 1
    assert entry(elsewhere, key(1)).exists(), "the link's target must survive"


def test_directory_at_an_entry_path(tmp_path):
    path = entry(tmp_path, key(1))
    path.mkdir()
    cache = DocumentCache(disk_dir=tmp_path)
    for _ in range(3):
        assert cache.get(key(1)) is None
    cache.put(key(1), fake_ctx(4))  # the empty directory gives way to the entry
    assert DocumentCache(disk_dir=tmp_path).get(key(1)) is not None
    # a non-empty directory stays, and every call is still a plain miss
    other = entry(tmp_path, key(2))
    other.mkdir()
    (other / "x").write_text("x")
    cache.put(key(2), fake_ctx(4))
    assert DocumentCache(disk_dir=tmp_path).get(key(2)) is None
    assert cache.stats()["disk_errors"] >= 1


def test_oversized_file_is_rejected_from_its_size(tmp_path):
    path = entry(tmp_path, key(1))
    with open(path, "wb") as fh:
        fh.truncate(8 * 1024**3)  # sparse: 8 GiB of zeros that are never read
    cache = DocumentCache(max_bytes=1024**2, disk_dir=tmp_path)
    started = time.perf_counter()
    assert cache.get(key(1)) is None and cache.stats()["corrupt"] == 1
    assert time.perf_counter() - started < 2 and not path.exists()


def _forge(engine: HomerModel, what: str):
    p = engine.parts
    layers, heads, dim = p.num_layers, p.num_kv_heads, p.head_dim
    vocab = int(p.embed.weight.shape[0])
    if what == "layers":
        return fake_ctx(5, layers=layers - 1, heads=heads, dim=dim, vocab=vocab)
    if what == "heads":
        return fake_ctx(5, layers=layers, heads=heads + 1, dim=dim, vocab=vocab)
    if what == "head_dim":
        return fake_ctx(5, layers=layers, heads=heads, dim=dim * 2, vocab=vocab)
    if what == "dtype":
        return fake_ctx(5, layers=layers, heads=heads, dim=dim, vocab=vocab, dtype=torch.bfloat16)
    if what == "vocab":
        return fake_ctx(5, layers=layers, heads=heads, dim=dim, vocab=vocab + 3)
    assert what == "kind"
    g = torch.Generator().manual_seed(0)
    return reuse.LeafStates(kv=(tuple((torch.randn(1, heads, 3, dim, generator=g), torch.randn(1, heads, 3, dim,
                                                                                               generator=g))
                                      for _ in range(2)),),
                            hidden=(torch.randn(1, 3, 64, generator=g),), prefix_len=1, context_len=2, suffix_budget=4)


@pytest.mark.parametrize("what", ["layers", "heads", "head_dim", "dtype", "vocab", "kind"])
def test_forged_self_consistent_entry_is_rejected_removed_and_not_kept(tiny_homer, tmp_path, what):
    parts = tiny_homer.prepare_question(DOC, "How many coins are in box 3?")
    fresh, _ = DocumentCache(mode="exact").get_or_compress(tiny_homer, parts)
    cache = DocumentCache(disk_dir=tmp_path, mode="exact")
    cache.get_or_compress(tiny_homer, parts)
    (path,) = tmp_path.glob("*.safetensors")
    k = path.stem
    path.write_bytes(encode_file(k, _forge(tiny_homer, what)))  # valid digests, wrong shape for this model

    second = DocumentCache(disk_dir=tmp_path, mode="exact")
    got, hit = second.get_or_compress(tiny_homer, parts)
    assert not hit and same(got, fresh)
    assert second.stats()["corrupt"] == 1
    kept = second.get(k)
    assert kept is not None and same(kept, fresh), "the forged entry stayed cached"
    again, hit = DocumentCache(disk_dir=tmp_path, mode="exact").get_or_compress(tiny_homer, parts)
    assert hit and same(again, fresh), "the file was not replaced by a valid entry"


# ---------------------------------------------------------------------------------------- 3. several processes
def _quiet() -> None:
    """Set up a forked worker process (the module's ``one_thread`` fixture covers only the parent)."""
    logging.getLogger("homer_llm").setLevel(logging.CRITICAL)
    torch.set_num_threads(1)


def _worker(folder: str, wid: int, ops: int, budget: int | None, keys: int, out: str, evicts: bool) -> None:
    """Random put/get (and evict/clear) on a shared folder; every hit is checked against the value
    its key stands for. Writes its counts to ``out``."""
    _quiet()
    rng = random.Random(wid)
    cache = DocumentCache(max_bytes=2_000, disk_dir=folder, disk_max_bytes=budget)
    counts = {"ops": 0, "errors": 0, "wrong": 0, "hits": 0, "misses": 0, "puts": 0, "error_types": []}
    for _ in range(ops):
        i = rng.randrange(keys)
        roll = rng.random()
        try:
            if roll < 0.45:
                cache.put(key(i), fake_ctx(6, seed=i))
                counts["puts"] += 1
            elif roll < 0.95 or not evicts:
                value = cache.get(key(i), expect=SPEC)
                if value is None:
                    counts["misses"] += 1
                else:
                    counts["hits"] += 1
                    counts["wrong"] += not same(value, fake_ctx(6, seed=i))
                cache.stats()
                key(i) in cache  # noqa: B015 - __contains__ stats the file too
            elif roll < 0.99:
                cache.evict(key(i))
            else:
                cache.clear()
        except Exception as err:  # noqa: BLE001 - what the test counts
            counts["errors"] += 1
            counts["error_types"].append(type(err).__name__)
        counts["ops"] += 1
    with open(out, "w") as fh:
        json.dump(counts, fh)


def _run_workers(folder, n: int, ops: int, budget: int | None, keys: int, tmp_path, evicts: bool = True):
    procs = []
    for wid in range(n):
        out = str(tmp_path / f"w{wid}.json")
        proc = FORK.Process(target=_worker, args=(str(folder), wid, ops, budget, keys, out, evicts))
        proc.start()
        procs.append((proc, out))
    return procs


def _collect(procs) -> dict:
    total = {"ops": 0, "errors": 0, "wrong": 0, "hits": 0, "misses": 0, "puts": 0, "error_types": []}
    for proc, out in procs:
        proc.join(60)
        assert proc.exitcode == 0, f"worker exit code {proc.exitcode}"
        with open(out) as fh:
            counts = json.load(fh)
        for name in total:
            total[name] += counts[name]
    return total


def test_processes_sharing_a_budgeted_folder_see_no_errors(tmp_path):
    folder = tmp_path / "shared"
    one = len(encode_file(key(1), fake_ctx(6)))
    procs = _run_workers(folder, 4, 200, 4 * one, 12, tmp_path)
    total = _collect(procs)
    print(f"\nshared budgeted folder: 4 processes, {total['ops']} operations, {total['errors']} errors "
          f"{sorted(set(total['error_types']))}, {total['wrong']} wrong values, {total['hits']} hits, "
          f"{total['misses']} misses")
    assert total["ops"] == 800
    assert total["errors"] == 0, total["error_types"]
    assert total["wrong"] == 0


def _killed_writer(folder: str, first: int, ready) -> None:
    _quiet()
    cache = DocumentCache(max_bytes=2_000, disk_dir=folder)
    ready.set()
    i = first
    while True:  # until SIGKILL
        cache.put(key(i), fake_ctx(64, seed=i))
        i += 1


_DAMAGES = ("truncate", "flip", "fifo", "directory", "symlink", "empty", "forge")


def _damage(path, how: str) -> bool:
    """Damage one entry file in place (what a crash, a full disk or another program could do).
    Only regular files are damaged (opening a FIFO left by an earlier damage would block here)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        if how == "truncate":
            os.truncate(path, max(0, os.path.getsize(path) // 2))
        elif how == "flip":
            with open(path, "r+b") as fh:
                fh.seek(os.path.getsize(path) - 5)
                byte = fh.read(1)
                fh.seek(-1, os.SEEK_CUR)
                fh.write(bytes([byte[0] ^ 0x40]))
        elif how == "empty":
            open(path, "wb").close()
        elif how == "forge":  # valid digests for this key, but a layer count no worker's model has
            path.write_bytes(encode_file(path.stem, fake_ctx(6, layers=3, seed=10_000)))
        else:
            os.unlink(path)
            if how == "fifo":
                os.mkfifo(path)
            elif how == "directory":
                os.mkdir(path)
            else:
                os.symlink("/dev/zero", path)
        return True
    except OSError:  # removed by a worker meanwhile
        return False


def test_fault_injection_killed_writers_and_damaged_files(tmp_path):
    """Four workers (random put/get/evict/clear over a byte budget), writers killed with SIGKILL
    midway, and a damager replacing entry files with truncated, bit-flipped, empty, forged files,
    FIFOs, directories and links to /dev/zero. Then a second phase without budget or evictions,
    where every worker's entries must survive unless the damager hit them."""
    folder = tmp_path / "shared"
    folder.mkdir()
    one = len(encode_file(key(1), fake_ctx(6)))
    started = time.perf_counter()
    procs = _run_workers(folder, 4, 250, 5 * one, 16, tmp_path)
    damaged = killed = 0
    rng = random.Random(0)
    writer_first = 1_000_000
    deadline = time.perf_counter() + 120
    while any(p.is_alive() for p, _ in procs):
        assert time.perf_counter() < deadline, "workers did not finish"
        ready = FORK.Event()
        writer = FORK.Process(target=_killed_writer, args=(str(folder), writer_first, ready))
        writer.start()
        ready.wait(10)
        until = time.perf_counter() + rng.uniform(0.05, 0.3)
        while time.perf_counter() < until:  # damage files while the writer writes, then kill it
            files = [p for p in folder.iterdir() if p.name.endswith(".safetensors")]
            if files:
                damaged += _damage(rng.choice(files), rng.choice(_DAMAGES))
            time.sleep(0.02)
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        killed += 1
        writer_first += 1_000
    total = _collect(procs)
    temporaries = [p.name for p in folder.iterdir() if p.name.startswith(".homer-tmp-")]
    print(f"\nfault injection, phase 1: 4 workers + {killed} writers killed with SIGKILL, {damaged} files damaged, "
          f"{len(temporaries)} temporary files left by killed writers, "
          f"{total['ops']} operations, {total['errors']} errors {sorted(set(total['error_types']))}, "
          f"{total['wrong']} wrong values, {total['hits']} hits, {total['misses']} misses")
    assert total["errors"] == 0, total["error_types"]
    assert total["wrong"] == 0

    # phase 2: every worker writes its own keys (no budget, no evictions) while the damager runs;
    # afterwards each key the damager did not touch must read back whole
    shared = folder.parent / "phase2"
    hit_by_damager: set[str] = set()
    procs = [(FORK.Process(target=_writer_then_reader, args=(str(shared), w, 40, str(tmp_path / f"p{w}.json"))),
              str(tmp_path / f"p{w}.json")) for w in range(4)]
    for proc, _ in procs:
        proc.start()
    while any(p.is_alive() for p, _ in procs):
        files = [p for p in shared.iterdir() if p.name.endswith(".safetensors")] if shared.exists() else []
        if files:
            victim = rng.choice(files)
            hit_by_damager.add(victim.stem)  # counted as hit even when the damage found it gone
            _damage(victim, rng.choice(_DAMAGES))
        time.sleep(0.02)
        assert time.perf_counter() < deadline + 60, "writers did not finish"
    results = {}
    for proc, out in procs:
        proc.join(60)
        assert proc.exitcode == 0
        with open(out) as fh:
            results.update(json.load(fh))
    errors = sum(r["errors"] for r in results.values())
    fresh = DocumentCache(disk_dir=shared)
    lost = [k for k in results if k not in hit_by_damager and not _reads_back(fresh, k)]
    wrong_after = [k for k in results
                   if (v := fresh.get(k, expect=SPEC)) is not None and not same(v, fake_ctx(6, seed=int(k, 16)))]
    print(f"fault injection, phase 2: 4 writers, {len(results)} entries written, {len(hit_by_damager)} damaged, "
          f"{errors} errors, {len(lost)} undamaged entries lost, {len(wrong_after)} wrong values, "
          f"{time.perf_counter() - started:.1f} s in all")
    assert errors == 0 and not lost and not wrong_after


def _reads_back(cache: DocumentCache, k: str) -> bool:
    value = cache.get(k, expect=SPEC)
    return value is not None and same(value, fake_ctx(6, seed=int(k, 16)))


def _writer_then_reader(folder: str, wid: int, n: int, out: str) -> None:
    _quiet()
    cache = DocumentCache(max_bytes=2_000, disk_dir=folder)
    results = {}
    for j in range(n):
        i = wid * 1_000 + j
        record = {"errors": 0}
        try:
            cache.put(key(i), fake_ctx(6, seed=i))
            cache.get(key(i - 1) if j else key(i))
        except Exception:  # noqa: BLE001 - what the test counts
            record["errors"] += 1
        results[key(i)] = record
    with open(out, "w") as fh:
        json.dump(results, fh)
