"""The calibration bias table B[l][r] (HOMER.md section 6): build, save, load, cache.

B[l][r] is the mean, over HOMER-shaped chunks of generic text, of the max-over-heads logit of the
last query to the key at position distance r, at layer l. Subtracting it removes the recency bias
that would otherwise make pruning keep mostly the tokens nearest the question.

The official code ships only precomputed tables for Llama-2; this recipe is this project's own:
chunks of seeded synthetic prose wrapped in the model's own chat template (or BOS + text without
one), and a smoothing over distance that widens with r, because a mean over a few samples per
exact distance is noisy while the bias itself varies slowly at long range.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import compat
from .engine import Progress
from .prompt import DOCUMENT_PLACEHOLDER, PromptParts, split_chat, split_text
from .significance import last_query_logits

logger = logging.getLogger(__name__)

TABLE_VERSION = "1"

_WORDS = (
    "the a an this that these some many few every other each small large old new early late long short "
    "city river market school garden village road bridge house window letter story book song paper table "
    "people child teacher farmer doctor writer captain friend neighbour traveller student worker family "
    "walked carried opened wrote found built watched answered followed noticed remembered prepared "
    "quickly slowly quietly carefully often rarely always never almost nearly again together "
    "morning evening winter summer season year moment hour week history reason method question problem "
    "green bright heavy quiet busy simple strange careful patient honest warm cold distant familiar "
    "and but because while although after before when where since until so then also however"
).split()


def generic_text(n_words: int, seed: int) -> str:
    """Seeded, grammar-free but prose-shaped English text (no third-party corpus needed)."""
    rng = random.Random(seed)
    sentences, count = [], 0
    while count < n_words:
        length = rng.randint(6, 18)
        words = [rng.choice(_WORDS) for _ in range(length)]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", ".", ",", ";", "?"]))
        count += length
        if rng.random() < 0.15:
            sentences.append("\n\n")
    return " ".join(sentences).replace(" \n\n ", "\n\n")


def calibration_parts(tokenizer, chunk_len: int, index: int, seed: int = 0) -> PromptParts:
    """One HOMER-shaped calibration chunk: template prefix + generic text + template suffix, <= M tokens."""
    question = "What is the main point of the text above?"
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": f"Read this document.\n\n{DOCUMENT_PLACEHOLDER}\n\n{question}"}]
        shell = split_chat(tokenizer, messages, "")
    else:
        shell = split_text(tokenizer, "Read this document.\n\n", "", f"\n\n{question}\nAnswer:")
    room = chunk_len - len(shell.prefix) - len(shell.suffix)
    if room < 4:
        raise ValueError(
            f"chunk_len {chunk_len} is too short to calibrate: the calibration prompt's template alone "
            f"takes {len(shell.prefix) + len(shell.suffix)} tokens; raise chunk_len or use pruning='uncalibrated'"
        )
    ids: list[int] = []
    words = 400
    while len(ids) < room:
        ids = tokenizer(generic_text(words, seed * 100_003 + index), add_special_tokens=False)["input_ids"]
        words *= 2
    return PromptParts(shell.prefix, tuple(ids[:room]), shell.suffix)


def smooth_over_distance(table: torch.Tensor) -> torch.Tensor:
    """Average each row over a window [r - r//8, r + r//8] (exact for r < 8). table: [L, M]."""
    L, M = table.shape
    csum = torch.nn.functional.pad(table.cumsum(dim=1), (1, 0))
    r = torch.arange(M)
    lo = (r - r // 8).clamp(min=0)
    hi = (r + r // 8 + 1).clamp(max=M)
    return (csum[:, hi] - csum[:, lo]) / (hi - lo).to(table.dtype)


@torch.inference_mode()
def build_bias(parts: compat.ModelParts, samples: list[PromptParts], chunk_len: int,
               progress: Progress | None = None) -> torch.Tensor:
    """Measure B [L, chunk_len] (float32, CPU) from full (unpruned) passes over ``samples``.

    ``progress(done, total)`` after each layer pass (total: ``len(samples) * L``).
    """
    L = parts.num_layers
    done, passes = 0, len(samples) * L
    total = torch.zeros(L, chunk_len, dtype=torch.float64)
    count = torch.zeros(chunk_len, dtype=torch.float64)
    for sample in samples:
        ids = torch.tensor(sample.ids)
        n = ids.numel()
        if n > chunk_len:
            raise ValueError(f"calibration sample of {n} tokens exceeds chunk_len {chunk_len}")
        positions = torch.arange(n)
        hidden = compat.embed(parts, ids)
        pos_emb = compat.position_embeddings(parts, hidden, positions)
        last = (pos_emb[0][:, -1:], pos_emb[1][:, -1:])
        mask = compat.attention_mask(parts, n, 0, hidden.dtype, hidden.device)
        distance = (n - 1) - positions
        for index in range(L):
            query = compat.last_query(parts, index, hidden[:, -1:], last)
            hidden, (keys, _) = compat.run_layer(parts, index, hidden, pos_emb, mask)
            logits = last_query_logits(query, keys, compat.attention_scaling(parts, index)).double().cpu()
            total[index].index_add_(0, distance, logits)
            done += 1
            if progress is not None:
                progress(done, passes)
        count.index_add_(0, distance, torch.ones(n, dtype=torch.float64))
    seen = count > 0
    if not bool(seen.any()):
        raise ValueError("no calibration samples")
    mean = torch.zeros_like(total)
    mean[:, seen] = total[:, seen] / count[seen]
    # distances no sample reached (only possible beyond the longest sample) take the farthest seen value
    farthest = int(torch.nonzero(seen).max())
    mean[:, farthest + 1 :] = mean[:, farthest : farthest + 1]
    return smooth_over_distance(mean).float()


def cache_dir() -> Path:
    """Where homer-llm keeps derived files: $HOMER_LLM_CACHE, else $XDG_CACHE_HOME/homer-llm."""
    env = os.environ.get("HOMER_LLM_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "homer-llm"


def table_key(model_identity: str, model_config: dict, chunk_len: int, samples: int) -> str:
    """Stable key for one model + RoPE setting + chunk length + sample count."""
    relevant = {k: model_config.get(k) for k in sorted(model_config) if "rope" in k or k in (
        "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
        "vocab_size", "model_type",
    )}
    blob = json.dumps([TABLE_VERSION, model_identity, relevant, chunk_len, samples], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def weights_sample(parts: compat.ModelParts, samples: int = 64) -> str:
    """Digest of every weight's shape and dtype plus ``samples`` values spread evenly across it."""
    h = hashlib.sha256()
    with torch.no_grad():
        for module in (parts.embed, parts.layers, parts.norm, parts.lm_head):
            for name, tensor in module.named_parameters():
                flat = tensor.detach().reshape(-1)
                h.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
                if flat.numel() and flat.device.type != "meta":
                    # integer steps: float32 linspace rounds past 2**24 elements and can index one past the end
                    index = torch.arange(min(samples, flat.numel()), device=flat.device) * (flat.numel() - 1) // max(min(samples, flat.numel()) - 1, 1)
                    h.update(flat[index].float().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def save_bias(path: Path, table: torch.Tensor, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
    try:
        save_file({"bias": table.contiguous()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_bias(path: Path, num_layers: int, chunk_len: int) -> torch.Tensor | None:
    """The stored table, or None if missing, unreadable or of the wrong shape (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        table = load_file(str(path))["bias"]
    except Exception as err:  # corrupted file: rebuild rather than fail
        logger.warning("ignoring unreadable calibration table %s: %s", path, err)
        return None
    if tuple(table.shape) != (num_layers, chunk_len) or not bool(torch.isfinite(table).all()):
        logger.warning("ignoring calibration table %s of shape %s", path, tuple(table.shape))
        return None
    return table


def get_bias(
    parts: compat.ModelParts,
    tokenizer,
    model_identity: str,
    model_config: dict,
    chunk_len: int,
    samples: int,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Load B for this model from the cache dir, building and saving it on first use.

    ``progress(done, total)``: the build's layer passes (only when the table is built; a table
    found on disk reports nothing).

    The key holds ``model_identity`` (``HomerModel`` passes its name and fingerprint: weights,
    tokenizer, files) and a sample of the weights in ``parts`` themselves, so two models with the
    same name and other weights never share a table.
    """
    key = table_key(f"{model_identity}@{weights_sample(parts)}", model_config, chunk_len, samples)
    path = cache_dir() / "calibration" / f"{key}.safetensors"
    table = load_bias(path, parts.num_layers, chunk_len)
    if table is not None:
        return table
    logger.info("building HOMER calibration table for %s (%d samples of %d tokens)", model_identity, samples, chunk_len)
    chunks = [calibration_parts(tokenizer, chunk_len, i) for i in range(samples)]
    started = time.perf_counter()
    table = build_bias(parts, chunks, chunk_len, progress)
    logger.info("calibration table built in %.0f s: %s", time.perf_counter() - started, path)
    save_bias(path, table, {"model": model_identity, "chunk_len": str(chunk_len), "samples": str(samples)})
    return table
