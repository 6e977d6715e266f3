"""``HomerModel``: the one user-facing class of the engine.

Loads a model (the embedded default, a local folder, or a hub id), and turns prompt parts into a
compressed cache and text. Shared instances per (model, device, dtype, backend, HOMER config) are
available through ``HomerModel.shared`` so integrations never load the same weights twice; every
public method that touches the model holds ``self.lock``, so concurrent callers are serialized.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import compat
from .calibration import get_bias
from .config import GenerationConfig, HomerConfig
from .engine import CompressedContext, Progress, compress
from .focus import choose_leaves, focus_spans, focused_parts, leaf_attention, leaf_relevance
from .generation import Generation, TextStream, generate
from .hybrid import hybrid_chunk_len, hybrid_context
from .lexical import lexical_relevance
from .prompt import PromptParts, split_chat, split_text
from .schedule import Plan, make_plan
from .spans import word_spans

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """None/"auto": bfloat16 on CUDA and on CPUs with AMX tiles, float32 on other CPUs.

    AMX runs bfloat16 matmuls in hardware: on a 2-core AMX Xeon HOMER ran 4-5x faster in bfloat16
    than in float32, with 98 of 100 passkey verdicts equal (docs/method.md).
    Without AMX, bfloat16 matmuls gain little or lose on the CPU, so float32 stays.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16
        if device.startswith("cpu") and compat.cpu_has_amx():
            logger.info("this CPU has AMX tiles: dtype='auto' is bfloat16 (dtype='float32' for full precision)")
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")
    return _DTYPES[dtype]


def resolve_device(device: str | None) -> str:
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


# ---------------------------------------------------------------------------------------- fingerprints
_SAMPLE_BLOCKS = 16
_SAMPLE_BLOCK_BYTES = 64 * 1024
_WHOLE_FILE_BYTES = 64 * 1024 * 1024
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
_file_digests: dict[tuple, str] = {}
_file_digests_lock = threading.Lock()


def _file_digest(path: Path, st) -> str:
    """Digest of one model file: the whole content for small files (configs, tokenizers); for
    weight files, the safetensors header (every tensor's name, dtype, shape and offsets) and
    ``_SAMPLE_BLOCKS`` blocks spread evenly over the file. Cached per (path, inode, size, mtime)."""
    memo = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _file_digests_lock:
        if memo in _file_digests:
            return _file_digests[memo]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if st.st_size <= _WHOLE_FILE_BYTES and not path.name.endswith(_WEIGHT_SUFFIXES):
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            if path.suffix == ".safetensors":
                head = fh.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                h.update(head + fh.read(min(n, 100 * 1024 * 1024)))
            for i in range(_SAMPLE_BLOCKS):
                fh.seek(st.st_size * i // _SAMPLE_BLOCKS)
                h.update(fh.read(_SAMPLE_BLOCK_BYTES))
    digest = h.hexdigest()
    with _file_digests_lock:
        _file_digests[memo] = digest
    return digest


def files_fingerprint(folder: str | Path) -> str | None:
    """Fingerprint of a local model folder's files (None when ``folder`` is not a local folder).

    Every regular file directly in the folder counts by name, size, mtime (ns) and
    :func:`_file_digest`, so replacing a weight file in place, or a second folder with the same
    relative name and other weights, gives another fingerprint. Costs a stat per file and about
    1 MiB of reads per weight file (the header plus the sampled blocks), not a full read.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        try:
            st = path.stat()
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        try:
            h.update(_file_digest(path, st).encode())
        except OSError as err:  # unreadable file: the load that follows reports it
            h.update(f"unreadable:{err.errno}".encode())
    return h.hexdigest()[:32]


def state_fingerprint(model: torch.nn.Module, samples: int = 64) -> str:
    """Fingerprint of a loaded model's state: every parameter's and buffer's name, shape and dtype
    plus ``samples`` values taken evenly across it (a few ms even for an 8B model)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in _named_state(model):
            flat = tensor.detach().reshape(-1)
            h.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
            if flat.numel():
                # integer steps: float32 linspace rounds past 2**24 elements and can index one past the end
                index = torch.arange(min(samples, flat.numel()), device=flat.device) * (flat.numel() - 1) // max(min(samples, flat.numel()) - 1, 1)
                h.update(flat[index].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def _named_state(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    seen: set[int] = set()
    out = []
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]:
        if id(tensor) not in seen and tensor.device.type != "meta":
            seen.add(id(tensor))
            out.append((name, tensor))
    return out


def tokenizer_fingerprint(tokenizer: Any, *, deep: bool = True) -> str:
    """Fingerprint of what a tokenizer does to text: its class, size, special tokens and chat
    template, and with ``deep`` its whole definition (the fast backend's serialization: vocabulary,
    merges, normalizer, pre-tokenizer; else the vocabulary). The deep part costs about 0.5 s for a
    150k-token vocabulary; :meth:`HomerModel.fingerprint` skips it when the tokenizer's files are
    already in :func:`files_fingerprint`."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    for attr in ("chat_template", "bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)!r}\0".encode("utf-8", "surrogatepass"))
    h.update(repr(getattr(tokenizer, "all_special_tokens", None)).encode("utf-8", "surrogatepass"))
    try:
        h.update(f"len={len(tokenizer)}".encode())  # counts tokens added after loading
    except TypeError:
        pass
    if not deep:
        return h.hexdigest()[:32]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        h.update(backend.to_str().encode("utf-8", "surrogatepass"))
    except Exception:  # noqa: BLE001 - no fast backend, or one that cannot serialize: the vocabulary instead
        try:
            vocab = tokenizer.get_vocab()
        except (AttributeError, NotImplementedError):
            vocab = {}
        h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------- size guard
CHARS_PER_TOKEN_BOUND = 16
"""A document of more than ``max_input_tokens * CHARS_PER_TOKEN_BOUND`` characters is refused before
it is tokenized (tokenizing tens of MB takes GBs of memory); tokenizers average 1-6 characters a token."""


@dataclass(frozen=True)
class SizeLimits:
    """Up-front limits on one compression, checked from its plan before any model work.

    Attributes:
        max_input_tokens: most prompt tokens (None: no limit). Default 2,097,152 (2**21: a
            context of 2**20 tokens with its prompt fits).
        max_seconds: most estimated compression seconds on this device (None: no limit).
            Default 86,400 (24 hours: the estimate is a model, see :meth:`HomerModel.estimate`,
            so the default only stops work that is far out of reach).
        max_memory_bytes: most estimated peak bytes beyond the loaded weights (None: what the
            device has available now: MemAvailable on CPU, free memory on CUDA).
        check_memory: compare the memory estimate at all.
    """

    max_input_tokens: int | None = 1 << 21
    max_seconds: float | None = 24 * 3600.0
    max_memory_bytes: int | None = None
    check_memory: bool = True

    def __post_init__(self) -> None:
        for name in ("max_input_tokens", "max_memory_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"SizeLimits.{name} must be a positive int or None, got {value!r}")
        s = self.max_seconds
        if s is not None and (isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or s <= 0):
            raise ValueError(f"SizeLimits.max_seconds must be a positive finite number or None, got {s!r}")
        if not isinstance(self.check_memory, bool):
            raise TypeError(f"SizeLimits.check_memory must be a bool, got {self.check_memory!r}")

    @classmethod
    def off(cls) -> SizeLimits:
        """No limit at all."""
        return cls(max_input_tokens=None, max_seconds=None, check_memory=False)


@dataclass(frozen=True)
class CostEstimate:
    """What one compression is expected to cost (``HomerModel.estimate``).

    Attributes:
        tokens: prompt tokens.
        layer_token_passes: sum over the plan's nodes of tokens x decoder layers run.
        flops: estimated floating-point operations.
        seconds: flops over this device's measured matmul rate (halved: a forward pass runs below
            matmul peak).
        peak_bytes: estimated peak memory beyond the weights (``kv_bytes``, one chunk's
            activations and attention scores, the token ids).
        kv_bytes: the most K/V alive at once (``CompressionStats.peak_kv_bytes`` as predicted).
        available_bytes: memory the device has available now (None: unknown).
    """

    tokens: int
    layer_token_passes: int
    flops: float
    seconds: float
    peak_bytes: int
    available_bytes: int | None
    kv_bytes: int = 0


_rates: dict[tuple[str, str], float] = {}
_rates_lock = threading.Lock()


def device_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured matmul rate (FLOP/s) of ``dtype`` on ``device``: best of 3 products of
    [256, 1024] x [1024, 1024] (about 0.5 GFLOP each), once per process."""
    memo = (str(device), str(dtype))
    with _rates_lock:
        if memo in _rates:
            return _rates[memo]
    a = torch.randn(256, 1024, device=device).to(dtype)
    b = torch.randn(1024, 1024, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up: first-call dispatch and allocation
    best = math.inf
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    rate = 2 * 256 * 1024 * 1024 / max(best, 1e-9)
    with _rates_lock:
        _rates[memo] = rate
    return rate


def available_memory(device: torch.device) -> int | None:
    """Bytes available on ``device`` now: CUDA free memory, or the CPU's MemAvailable (Linux)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:
            return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _live_kv_peak(plan: Plan) -> int:
    """Most token-layers of K/V alive at once while the plan runs (multiply by the bytes of one
    token-layer): the running node's, all its layers so far, plus the finished left siblings
    waiting, each pruned to its kept tokens."""
    affixes = plan.prefix_len + plan.suffix_len
    peak = 0

    def run(node, waiting: int) -> int:  # returns the finished node's K/V (token-layers)
        nonlocal peak
        if node.is_leaf:
            tokens = affixes + node.natural_ctx
        else:
            left = run(node.left, waiting)
            run(node.right, waiting + left)
            tokens = affixes + node.left.keep_ctx + node.right.keep_ctx
        peak = max(peak, waiting + tokens * node.layer_end)
        return (affixes + node.keep_ctx) * node.layer_end

    run(plan.root, 0)
    return peak


_TOKENIZERS: dict[str, Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def local_tokenizer(model: str | Path | None) -> Any:
    """The tokenizer of ``model`` (a local folder or a locally cached hub id; None: the embedded
    default model), loaded once per process with no weights and no hub access.

    Raises:
        ValueError: the tokenizer cannot be loaded from ``model``.
    """
    from transformers import AutoTokenizer

    if model is None:
        from .default_model import default_model_path

        path = str(default_model_path())
    else:
        path = str(model)
    with _TOKENIZERS_LOCK:
        if path not in _TOKENIZERS:
            try:
                _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError) as err:
                raise ValueError(f"cannot load the tokenizer of {path!r}: {err}") from err
        return _TOKENIZERS[path]


def _gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


@dataclass(frozen=True)
class Answer:
    """Result of ``HomerModel.ask`` / ``answer``: the text plus what it cost."""

    text: str
    input_tokens: int
    cache_tokens: int
    output_tokens: int
    finish_reason: str
    compress_seconds: float
    generate_seconds: float
    peak_kv_bytes: int
    tree_height: int


def resolve_merge_attention(homer: HomerConfig, attn_implementation: str) -> str:
    """The merge attention ``homer`` asks for on a model whose attention backend is ``attn_implementation``.

    "auto" becomes "own-leaf" (a context token reads only its own leaf in merged nodes; passkey on
    the default model at or above "causal" at 1x-8x; perplexity at 8x unchanged with recent text
    whole after the cache, 4 % worse with the cache alone: docs/method.md) where the backend takes an
    arbitrary mask and no focus is asked for, else "causal". An explicit
    "own-leaf" on a backend without masks is a ValueError.
    """
    maskable = attn_implementation in compat.MASKABLE_ATTENTION
    if homer.merge_attention == "own-leaf" and not maskable:
        raise ValueError(f"HomerConfig.merge_attention='own-leaf' needs an arbitrary mask, one of "
                         f"{compat.MASKABLE_ATTENTION}, not {attn_implementation!r}")
    if homer.merge_attention != "auto":
        return homer.merge_attention
    if not maskable:
        logger.info("merge_attention='auto': %s takes no arbitrary mask, merges stay causal", attn_implementation)
        return "causal"
    return "causal" if homer.focus_leaves and not homer.focus_keep_document else "own-leaf"


class HomerModel:
    """A causal LM driven by HOMER.

    Attributes:
        model: the transformers model (eval mode).
        tokenizer: its tokenizer.
        name: model identity (path or hub id) used in cache keys and metadata.
        homer: the HomerConfig with chunk_len / cache_len resolved for this model.
        lock: re-entrant lock serializing all model work.
    """

    _shared: dict[tuple, HomerModel] = {}
    _shared_lock = threading.Lock()

    def __init__(
        self, model, tokenizer, *, name: str, homer: HomerConfig | None = None, limits: SizeLimits | None = None,
        source_fingerprint: str | None = None,
    ) -> None:
        """Wrap a loaded transformers model.

        Args:
            limits: up-front size limits of every compression (None: ``SizeLimits()``; see
                :meth:`estimate`).
            source_fingerprint: :func:`files_fingerprint` of the folder the weights came from, if
                any; part of :attr:`fingerprint`.
        """
        homer = homer or HomerConfig()
        if limits is not None and not isinstance(limits, SizeLimits):
            raise TypeError(f"limits must be a SizeLimits or None, got {type(limits).__name__}")
        self.limits = limits or SizeLimits()
        self._source_fingerprint = source_fingerprint
        self._fingerprint: str | None = None
        if homer.rope_scaling is not None:
            if getattr(model, "hf_device_map", None):
                raise ValueError("HomerConfig.rope_scaling is not supported on a model spread with device_map")
            compat.check_supported(model)  # an unsupported model gets its own error, not one from building the view
            model = compat.scaled_model(model, homer.rope_scaling, homer.rope_factor)  # shares every weight
            name = f"{name}+{homer.rope_scaling}{homer.rope_factor:g}"
        self.parts = compat.model_parts(model)
        homer = replace(homer, merge_attention=resolve_merge_attention(homer, self.parts.attn_implementation))
        compat.use_sdpa_repeat_kv(model)  # float32 GQA on CUDA only: keeps long plain prefills off sdpa's math kernel
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        chunk = homer.chunk_len or self.parts.window // 2
        if chunk > self.parts.window:
            raise ValueError(f"chunk_len {chunk} exceeds the model window {self.parts.window}")
        if homer.cache_len is not None and homer.cache_len > chunk:
            # the final cache is the root of the merge tree, one node of at most chunk_len tokens
            raise ValueError(f"cache_len {homer.cache_len} exceeds chunk_len {chunk}: the final cache "
                             "holds at most one chunk; raise chunk_len or lower cache_len")
        if homer.focus_leaves and homer.focus_keep_document:
            # the hybrid read: one leaf and its margins must fit after the compressed cache
            chunk = hybrid_chunk_len(self.parts.window, chunk, homer.focus_margin)
            if homer.cache_len is not None and homer.cache_len > chunk:
                raise ValueError(f"cache_len {homer.cache_len} exceeds the hybrid read's chunk_len {chunk} "
                                 f"(hybrid.hybrid_chunk_len of a {self.parts.window}-token window); lower cache_len")
        self.homer = replace(homer, chunk_len=chunk, cache_len=homer.cache_len or chunk)
        self.lock = threading.RLock()
        self._bias: torch.Tensor | None = None
        self._variants: dict[HomerConfig, HomerModel] = {}
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        homer: HomerConfig | None = None,
        device_map: str | dict | None = None,
        limits: SizeLimits | None = None,
        **model_kwargs: Any,
    ) -> HomerModel:
        """Load ``model`` (None: the embedded default SmolLM2-135M-Instruct) for HOMER.

        Args:
            model: local folder or hub id (hub ids need network access the first time).
            device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
            dtype: "float32", "bfloat16", "float16", a torch dtype, or None ("auto").
            attn_implementation: "sdpa" (default), "eager" or "flash_attention_2".
            device_map: passed to transformers/accelerate to spread layers over devices.
            limits: up-front size limits (None: ``SizeLimits()``; ``SizeLimits.off()``: none).

        Raises:
            ValueError: a missing folder, a folder without a readable config.json, or a model
                transformers cannot load (one line naming the path).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if attn_implementation not in compat.SUPPORTED_ATTENTION:
            raise ValueError(f"attn_implementation must be one of {compat.SUPPORTED_ATTENTION}, got {attn_implementation!r}")
        if attn_implementation == "flash_attention_2":
            import importlib.util

            if importlib.util.find_spec("flash_attn") is None:
                raise ValueError("attn_implementation='flash_attention_2' needs the flash-attn package installed")
        if model is None:
            from .default_model import default_model_path

            path: str = str(default_model_path())
        else:
            if not isinstance(model, str | Path):
                raise TypeError(f"model must be a folder path, a hub id or None, got {type(model).__name__}")
            path = str(model)
            check_model_source(path)
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        source = files_fingerprint(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            kwargs = dict(dtype=torch_dtype, attn_implementation=attn_implementation, **model_kwargs)
            if device_map is not None:
                kwargs["device_map"] = device_map
            lm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - config validation errors of every kind (huggingface_hub's own too)
            detail = " ".join(str(err).split())
            detail = detail if len(detail) <= 400 else detail[:400] + "..."
            raise ValueError(f"cannot load model {path!r}: {type(err).__name__}: {detail}") from err
        if device_map is None:
            lm.to(device)
        return cls(lm, tokenizer, name=path if model is not None else "SmolLM2-135M-Instruct", homer=homer,
                   limits=limits, source_fingerprint=source)

    @staticmethod
    def shared_key(model: str | Path | None = None, **kwargs: Any) -> tuple:
        """The key of :meth:`shared`: the model and the settings that differ from the defaults.

        Settings equal to the defaults do not split the key, so passing dtype="auto" or
        homer=HomerConfig() shares the engine of a caller that passed nothing.
        A local folder also enters the key by :func:`files_fingerprint`, so a folder whose files
        changed (weights replaced in place) loads afresh instead of sharing the stale engine.
        """
        defaults = {"device": None, "dtype": None, "attn_implementation": "sdpa", "homer": None, "limits": None}
        explicit = {k: v for k, v in kwargs.items()
                    if not (k in defaults and (v == defaults[k] or (k == "dtype" and v == "auto")
                                               or (k == "homer" and v == HomerConfig())
                                               or (k == "limits" and v == SizeLimits())))}
        files = files_fingerprint(model) if isinstance(model, str | Path) else None
        return (str(model), files, tuple(sorted((k, repr(v)) for k, v in explicit.items())))

    @classmethod
    def shared(cls, model: str | Path | None = None, **kwargs: Any) -> HomerModel:
        """A process-wide instance per (model, settings): loaded once, reused by every caller."""
        key = cls.shared_key(model, **kwargs)
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls.load(model, **kwargs)
            return cls._shared[key]

    # ------------------------------------------------------------------ properties
    @property
    def window(self) -> int:
        """The model's native context window (max_position_embeddings)."""
        return self.parts.window

    @property
    def chunk_len(self) -> int:
        assert self.homer.chunk_len is not None
        return self.homer.chunk_len

    @property
    def device(self) -> torch.device:
        return self.parts.embed_device

    def count_tokens(self, text: str) -> int:
        from .prompt import check_text

        check_text("text", text)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def fingerprint(self) -> str:
        """What makes this engine's states and answers what they are, besides the HOMER config:
        the loaded weights (:func:`state_fingerprint`), the tokenizer (:func:`tokenizer_fingerprint`)
        and the files it was loaded from (:func:`files_fingerprint`). Computed once."""
        if self._fingerprint is None:
            h = hashlib.sha256(state_fingerprint(self.model).encode())
            deep = self._source_fingerprint is None  # else the tokenizer's files are in the source's
            h.update(tokenizer_fingerprint(self.tokenizer, deep=deep).encode())
            h.update(str(self._source_fingerprint).encode())
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    # ------------------------------------------------------------------ prompts
    def prepare_chat(
        self,
        messages: Sequence[dict[str, Any]],
        document: str | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> PromptParts:
        """Render chat ``messages`` (one content holding DOCUMENT_PLACEHOLDER) around ``document``."""
        if document is not None:
            self.check_document(document)
        if getattr(self.tokenizer, "chat_template", None):
            return split_chat(self.tokenizer, messages, document, tools=tools)
        if tools:
            raise ValueError(f"model {self.name!r} has no chat template, so tools cannot be rendered")
        return _raw_chat(self.tokenizer, messages, document)

    def prepare_question(
        self, document: str, question: str, *, system: str | None = None,
        instruction: str | None = None, answer_prefix: str | None = None,
    ) -> PromptParts:
        """The standard document-QA prompt: [instruction,] the document, then the question, in one user turn.

        Args:
            system: system prompt (None: the chat template's default, if any).
            instruction: text before the document in the user turn. It is part of HOMER's prefix,
                so every chunk sees it; small models follow a task stated here better than in
                the system prompt.
            answer_prefix: text the assistant's answer starts with: a final assistant message that
                is continued (see ``split_chat``), so it is the end of the suffix. HOMER scores tokens by the attention of the
                prompt's last token, so a prefix naming what is sought (e.g. "The pass key is")
                steers which document tokens survive pruning.
        """
        from .prompt import DOCUMENT_PLACEHOLDER

        self.check_document(document)
        if not isinstance(question, str):
            raise TypeError(f"question must be str, got {type(question).__name__}")
        if not question.strip():
            raise ValueError(f"the question is empty: {question!r}")
        from .prompt import check_text

        check_text("question", question)
        for name, value in (("answer_prefix", answer_prefix), ("instruction", instruction), ("system", system)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be str or None, got {type(value).__name__}")
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        head = f"{instruction.strip()}\n\n" if instruction and instruction.strip() else ""
        messages.append({"role": "user", "content": f"{head}{DOCUMENT_PLACEHOLDER}\n\n{question.strip()}"})
        if answer_prefix:
            messages.append({"role": "assistant", "content": answer_prefix})
        return self.prepare_chat(messages, document)

    def check_document(self, document: Any) -> None:
        """:func:`check_document`, plus the character bound of :attr:`limits` (checked before
        tokenizing, which alone takes GBs of memory for tens of MB of text)."""
        check_document(document)
        limit = self.limits.max_input_tokens
        if limit is not None and len(document) > limit * CHARS_PER_TOKEN_BOUND:
            raise ValueError(
                f"the document has {len(document):,} characters, more than max_input_tokens={limit:,} tokens can "
                f"hold at {CHARS_PER_TOKEN_BOUND} characters a token; raise the limit "
                "(SizeLimits(max_input_tokens=...), CLI --max-input-tokens) or turn it off (SizeLimits.off(), "
                "CLI --no-size-limit)")

    # ------------------------------------------------------------------ the method
    def plan(self, parts: PromptParts) -> Plan:
        """The HOMER schedule for ``parts`` (raises ValueError if it cannot fit or exceeds
        ``limits.max_input_tokens``)."""
        if not isinstance(parts, PromptParts):
            raise TypeError(f"expected PromptParts, got {type(parts).__name__}")
        limit = self.limits.max_input_tokens
        if limit is not None and len(parts) > limit:
            raise ValueError(
                f"the prompt has {len(parts):,} tokens, more than max_input_tokens={limit:,}; raise the limit "
                "(SizeLimits(max_input_tokens=...), CLI --max-input-tokens) or turn it off (SizeLimits.off(), "
                "CLI --no-size-limit)")
        return make_plan(
            len(parts.prefix),
            len(parts.context),
            len(parts.suffix),
            chunk_len=self.chunk_len,
            cache_len=self.homer.cache_len or self.chunk_len,
            num_layers=self.parts.num_layers,
            warmup_layers=self.homer.warmup_layers,
        )

    def with_config(self, homer: HomerConfig) -> HomerModel:
        """This engine with other HOMER settings: the same weights, tokenizer, name, limits and source
        files (so the same :attr:`fingerprint`, computed once); built once per ``homer`` and kept.

        A ``homer`` with ``rope_scaling`` wraps the weights in a RoPE-scaled view (see ``__init__``).
        """
        if not isinstance(homer, HomerConfig):
            raise TypeError(f"homer must be a HomerConfig, got {type(homer).__name__}")
        with self.lock:
            if homer not in self._variants:
                variant = HomerModel(self.model, self.tokenizer, name=self.name, homer=homer, limits=self.limits,
                                     source_fingerprint=self._source_fingerprint)
                if homer.rope_scaling is None and self.homer.rope_scaling is None:
                    variant._fingerprint = self._fingerprint  # the same weights and files: no second pass
                self._variants[homer] = variant
            return self._variants[homer]

    def bias_table(self, progress: Progress | None = None) -> torch.Tensor | None:
        """The calibration table for this model (built once, then loaded), or None if unused.

        ``progress(done, total)``: the layer passes of a first build (a one-time cost of
        ``calibration_samples`` full passes of ``chunk_len`` tokens; nothing when found on disk).
        """
        if self.homer.pruning != "calibrated":
            return None
        if self._bias is None:
            with self.lock:
                if self._bias is None:
                    self._bias = get_bias(
                        self.parts, self.tokenizer, f"{self.name}@{self.fingerprint}", self.model.config.to_dict(),
                        self.chunk_len, self.homer.calibration_samples, progress,
                    )
        return self._bias

    def spans_for(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Word-span ids of prompt ``ids`` ([n] long) when ``prune_unit == "word"``, else None."""
        if self.homer.prune_unit != "word":
            return None
        return word_spans(self.tokenizer, ids.tolist())

    # ------------------------------------------------------------------ input checks and the size guard
    def check_ids(self, parts: PromptParts) -> None:
        """ValueError naming the first token id outside this model's vocabulary."""
        vocab = int(self.parts.embed.weight.shape[0])
        low, high = min(parts.ids), max(parts.ids)
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside the vocabulary of {self.name!r} (0..{vocab - 1})")

    def estimate(self, source: PromptParts | Plan) -> CostEstimate:
        """The expected cost of compressing ``source`` on this device, from its plan alone.

        Time: every node's tokens x its layers, at 2 x the per-layer weights plus the attention
        products per token-layer, over :func:`device_flops` halved. Memory: the most K/V alive at
        once (the running node's plus the finished left siblings waiting, as the engine counts
        ``peak_kv_bytes``), one chunk's activations (10 x hidden) and attention scores (every
        head's in float32 under eager attention, else the chunk's mask), and 120 bytes per prompt
        token (ids in Python and torch).
        """
        plan = self.plan(source) if isinstance(source, PromptParts) else source
        if not isinstance(plan, Plan):
            raise TypeError(f"expected PromptParts or Plan, got {type(source).__name__}")
        p = self.parts
        hidden = int(p.embed.weight.shape[1])
        layer_params = sum(t.numel() for t in p.layers.parameters()) / max(p.num_layers, 1)
        affixes = plan.prefix_len + plan.suffix_len
        passes = 0
        flops = 0.0
        widest = 1  # the most tokens one layer call sees: activations and scores scale with it
        for node in plan.nodes():
            if node.is_leaf:
                tokens = affixes + node.natural_ctx
            else:
                assert node.left is not None and node.right is not None
                tokens = affixes + node.left.keep_ctx + node.right.keep_ctx
            widest = max(widest, tokens)
            layers = node.layer_end - node.layer_start
            passes += tokens * layers
            flops += tokens * layers * (2 * layer_params + 2 * tokens * p.num_heads * p.head_dim)
        param = next(self.model.parameters())
        seconds = flops / (0.5 * device_flops(param.device, param.dtype))
        element = param.element_size()
        chunk = min(plan.chunk_len, widest)
        kv = _live_kv_peak(plan) * 2 * p.num_kv_heads * p.head_dim * element
        # eager attention materializes every head's scores; sdpa takes the (float) mask of one chunk
        scores = p.num_heads * chunk * chunk * 4 if p.attn_implementation == "eager" else chunk * chunk * element
        activations = 10 * chunk * hidden * element + scores
        tokens = plan.prefix_len + plan.context_len + plan.suffix_len
        peak = int(kv + activations + 120 * tokens)
        return CostEstimate(tokens, passes, flops, seconds, peak, available_memory(param.device), int(kv))

    def check_cost(self, plan: Plan) -> CostEstimate | None:
        """Refuse (ValueError with the numbers and the option that overrides it) a compression
        whose :meth:`estimate` exceeds :attr:`limits`; returns the estimate (None: no limits)."""
        limits = self.limits
        if limits.max_seconds is None and not limits.check_memory:
            return None
        est = self.estimate(plan)
        device = self.device
        if limits.max_seconds is not None and est.seconds > limits.max_seconds:
            raise ValueError(
                f"compressing {est.tokens:,} tokens is estimated at {est.seconds:,.0f} s on {device} "
                f"({est.layer_token_passes:,} token-layer passes), over max_seconds={limits.max_seconds:,.0f}; "
                "raise it (SizeLimits(max_seconds=...), CLI --max-compress-seconds) or turn the limits off "
                "(SizeLimits.off(), CLI --no-size-limit)")
        budget = limits.max_memory_bytes if limits.max_memory_bytes is not None else est.available_bytes
        if limits.check_memory and budget is not None and est.peak_bytes > budget:
            what = "max_memory_bytes" if limits.max_memory_bytes is not None else f"the {_gib(budget)} available"
            raise ValueError(
                f"compressing {est.tokens:,} tokens with chunk_len={plan.chunk_len} is estimated to need "
                f"{_gib(est.peak_bytes)} on {device} beyond the weights, over {what}; lower chunk_len, or "
                "raise the limit (SizeLimits(max_memory_bytes=...)) or turn it off (SizeLimits(check_memory=False), "
                "CLI --no-size-limit)")
        return est

    def compress(self, parts: PromptParts, *, progress: Progress | None = None) -> CompressedContext:
        """Run HOMER over the prompt: a compact cache, next position id and last logits.

        Raises:
            TypeError: ``parts`` is not PromptParts.
            ValueError: token ids outside the vocabulary, a prompt that cannot be planned, or one
                over :attr:`limits` (see :meth:`estimate`).
        """
        if self.homer.focus_leaves and self.homer.focus_keep_document:
            return hybrid_context(self, parts, leaves=self.homer.focus_leaves, progress=progress)
        plan = self.plan(parts)
        self.check_ids(parts)
        self.check_cost(plan)
        plain = plan.num_leaves == 1 and plan.root.keep_ctx >= plan.context_len  # one chunk, nothing pruned
        if not plain and not parts.prefix:
            logger.warning("compressing a prompt with no prefix: every chunk starts with a different "
                           "token; prompt.anchor_prefix(parts) gives them a shared start")
        focus = bool(self.homer.focus_leaves) and plan.num_leaves > 1
        leaf_locator = focus and self.homer.focus_locator == "leaf"
        if focus and self.homer.focus_locator == "lexical":  # no model pass before the plain read
            with self.lock:
                return self._focus(parts, plan, lexical_relevance(plan, parts.context, parts.suffix), 0.0, progress)
        # the plain path prunes nothing and the leaf locator ranks by raw attention: neither needs the table
        bias = None if plain or leaf_locator else self.bias_table(progress)
        gen = None
        if self.homer.pruning == "random":
            gen = torch.Generator().manual_seed(self.homer.seed)
        ids = torch.tensor(parts.ids, dtype=torch.long)
        spans = self.spans_for(ids)
        tree_progress = progress
        if focus and progress is not None:
            report = progress

            def tree_progress(done: int, total: int) -> None:  # one count: the locator, then the plain read
                report(done, total + self.parts.num_layers)

        with self.lock:
            try:
                if leaf_locator:
                    started = time.perf_counter()
                    relevance = leaf_relevance(self.parts, plan, ids, tree_progress)
                    return self._focus(parts, plan, relevance, time.perf_counter() - started, progress)
                # focus reads the question afresh itself (focus.question_scores): no reread pass here
                context = compress(self.parts, plan, ids, bias=bias, random_generator=gen, progress=tree_progress,
                                   spans=spans, reread_suffix=self.homer.reread_suffix and not focus,
                                   own_leaf=self.homer.merge_attention == "own-leaf")
                if focus:
                    suffix = torch.tensor(parts.suffix, dtype=torch.long)
                    attention = leaf_attention(self.parts, plan, context, suffix, bias)
                    return self._focus(parts, plan, attention, context.stats.seconds, progress,
                                       context.stats.peak_kv_bytes)
                return context
            except torch.OutOfMemoryError as err:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise MemoryError(
                    f"out of memory compressing {len(parts)} tokens with chunk_len={self.chunk_len}; "
                    "lower chunk_len, use a smaller dtype, or spread the model with device_map"
                ) from err

    @property
    def focus_budget(self) -> int:
        """Most tokens of a focused prompt (``HomerConfig.focus_leaves``): the window less half of
        what HOMER itself leaves free for the answer (window - chunk_len)."""
        return self.parts.window - (self.parts.window - self.chunk_len) // 2

    def _focus(self, parts: PromptParts, plan: Plan, attention: torch.Tensor, located_in: float,
               progress: Progress | None = None, peak_kv_bytes: int = 0) -> CompressedContext:
        """The plain read of the leaves ranked first by ``attention`` ([N], ``homer_llm.focus``);
        caller holds the lock. ``located_in``: seconds the locator took; ``peak_kv_bytes``: its K/V peak.

        ``progress`` continues the locator's count: its layer passes, then the plain read's L."""
        budget = self.focus_budget - len(parts.prefix) - len(parts.suffix)
        leaves = choose_leaves(plan, attention, self.homer.focus_leaves, budget)
        spans = focus_spans(plan, leaves, self.homer.focus_margin, budget)
        focused, index = focused_parts(parts, spans)
        logger.info("focus: leaves %s of %d (attention %s), context spans %s, %d tokens read plainly", leaves,
                    plan.num_leaves, [round(float(attention[i]), 3) for i in leaves], spans, len(focused))
        one = make_plan(len(focused.prefix), len(focused.context), len(focused.suffix), chunk_len=len(focused),
                        cache_len=len(focused), num_layers=self.parts.num_layers, warmup_layers=0)
        done = {"tree": plan.layer_passes, "leaf": plan.leaf_passes}.get(self.homer.focus_locator, 0)
        plain = compress(self.parts, one, torch.tensor(focused.ids, dtype=torch.long),
                         progress=None if progress is None else lambda d, t: progress(done + d, done + t))
        stats = replace(plain.stats, input_tokens=len(parts), tree_height=plan.height, num_leaves=plan.num_leaves,
                        peak_kv_bytes=max(peak_kv_bytes, plain.stats.peak_kv_bytes),
                        seconds=located_in + plain.stats.seconds)
        assert plain.kept is not None  # the engine tracks every token's origin
        return CompressedContext(plain.kv, plain.next_position, plain.last_logits, stats, index[plain.kept.cpu()])

    def stream(
        self, source: PromptParts | CompressedContext, config: GenerationConfig | None = None,
        *, progress: Progress | None = None,
    ) -> TextStream:
        """Text deltas for ``source``; ``stream.result`` holds the Generation once exhausted.

        The model lock is held while the stream is being consumed, so finish (or close) it.
        """
        context = self._context(source, progress)
        return TextStream(self.parts, self.tokenizer, context, check_generation_config(config), self.eos_ids,
                          lock=self.lock)

    def generate(
        self, source: PromptParts | CompressedContext, config: GenerationConfig | None = None,
        *, progress: Progress | None = None,
    ) -> Generation:
        context = self._context(source, progress)
        config = check_generation_config(config)
        with self.lock:
            return generate(self.parts, self.tokenizer, context, config, self.eos_ids)

    def _context(self, source: Any, progress: Progress | None) -> CompressedContext:
        """``source`` itself (a CompressedContext) or its compression (PromptParts); TypeError otherwise."""
        if isinstance(source, CompressedContext):
            return source
        if not isinstance(source, PromptParts):
            raise TypeError(f"expected PromptParts or CompressedContext, got {type(source).__name__}")
        return self.compress(source, progress=progress)

    def answer(
        self, parts: PromptParts, config: GenerationConfig | None = None, *,
        progress: Progress | None = None, answer_prefix: str | None = None,
    ) -> Answer:
        """Compress, then generate; with token counts and timings.

        ``answer_prefix``: the text ``parts`` already end with (see :meth:`prepare_question`); it
        is put back in front of the generated text so the answer reads whole.
        """
        config = check_generation_config(config)
        context = self.compress(parts, progress=progress)
        out = self.generate(context, config)
        s = context.stats
        text = ((answer_prefix or "") + out.text).strip()
        return Answer(text, s.input_tokens, s.cache_tokens, len(out.token_ids), out.finish_reason,
                      s.seconds, out.seconds, s.peak_kv_bytes, s.tree_height)

    def ask(
        self, document: str, question: str, *, system: str | None = None, instruction: str | None = None,
        answer_prefix: str | None = None, config: GenerationConfig | None = None, progress: Progress | None = None,
    ) -> Answer:
        """Answer ``question`` about ``document`` (the whole document goes into the context).

        ``instruction``, ``answer_prefix``: see :meth:`prepare_question`; the returned text
        includes the answer prefix.
        """
        parts = self.prepare_question(document, question, system=system, instruction=instruction,
                                      answer_prefix=answer_prefix)
        return self.answer(parts, config, progress=progress, answer_prefix=answer_prefix)


def check_document(document: Any) -> None:
    """Refuse documents HOMER cannot take: not text, empty, binary, or not encodable (lone surrogates)."""
    from .prompt import check_text

    if not isinstance(document, str):
        raise TypeError(f"document must be str, got {type(document).__name__}")
    if not document.strip():
        raise ValueError("the document is empty")
    if "\x00" in document:
        raise ValueError("the document contains NUL bytes: it looks binary, not text")
    check_text("document", document)


def check_generation_config(config: Any) -> GenerationConfig:
    """``config`` (None: the defaults) after :func:`generation.check_config`; TypeError for another type."""
    from .generation import check_config

    if config is None:
        return GenerationConfig()
    if not isinstance(config, GenerationConfig):
        raise TypeError(f"config must be a GenerationConfig or None, got {type(config).__name__}")
    check_config(config)
    return config


def check_model_source(path: str) -> None:
    """ValueError (one line naming ``path``) for a model argument that cannot load: a path-like
    argument that does not exist, a folder without config.json, or one whose config.json is not a
    JSON object. Hub ids (``owner/name``, not a local path) pass through."""
    local = Path(path).expanduser()
    looks_local = local.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1 or "\\" in path
    if local.is_dir():
        config = local / "config.json"
        if not config.is_file():
            raise ValueError(f"model folder {path!r} has no config.json: not a transformers model folder")
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"model folder {path!r} has an unreadable config.json: {_first_line(err)}") from None
        if not isinstance(data, dict):
            raise ValueError(f"model folder {path!r}: config.json is not a JSON object")
        return
    if local.exists():
        raise ValueError(f"model {path!r} is a file, not a model folder")
    if looks_local:
        raise ValueError(f"model folder not found: {path!r}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _raw_chat(tokenizer, messages: Sequence[dict[str, Any]], document: str | None) -> PromptParts:
    """Template-free rendering for base models: 'role: content' lines, then 'assistant:'.

    A final assistant message is continued, as ``split_chat`` does: 'assistant:' + its text.
    """
    from .prompt import DOCUMENT_PLACEHOLDER

    messages = list(messages)
    prefill = ""
    if messages and messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str):
        prefill = messages.pop()["content"]
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:" + prefill
    if document is None:
        return split_text(tokenizer, text, "", "")
    head, _, tail = text.partition(DOCUMENT_PLACEHOLDER)
    return split_text(tokenizer, head, document, tail)

