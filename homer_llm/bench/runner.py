"""The benchmark loop: plain transformers prefill vs what HOMER users get, length by length.

For every (method, length): random token ids, ``warmup`` untimed runs (first length only), then
up to ``repeats`` timed runs (median reported; stops early once ``budget_s`` is spent), the peak
memory of the runs, then greedy decode on the resulting cache. Out-of-memory is a result: the
row says "oom", memory is freed, and longer lengths of that method are skipped.

HOMER rows run ``HomerModel.compress`` on a prompt of random ids, so they time what a user's
call does with that configuration:

- ``homer``: the library's defaults (``HomerConfig()``: merge attention "auto", i.e. own-leaf
  merges on sdpa/eager, causal under flash-attn; the suffix read again after the tree);
- ``homer-causal``: the same with causal merges (HOMER as published, still with the re-read);
- ``homer-focus``: ``focus_leaves`` (default 2) with the default leaf locator: every leaf's own
  layers, then a plain read of the chosen leaves.

The calibration table is fixed (zeros by default): the calibrated code path (bias gather and
subtraction) runs, while building a real table is a one-off cost per model that belongs to no
single request. Every row also carries the FLOP floor of its own work (``analytic``): the matmul
FLOPs of the passes that method runs, over the matmul rate measured on the device.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from statistics import median
from typing import Any

import torch
import transformers

from .. import __version__, compat
from ..config import HomerConfig
from ..engine import Progress
from ..generation import decode_step
from ..model import HomerModel
from ..prompt import PromptParts
from ..schedule import Plan, make_plan
from .analytic import LayerFlops, OwnWork, focus_work, layer_flops, plain_work, tree_work
from .configs import ModelShape, build_model, count_parameters, layer_parameters, weights_bytes
from .measure import device_name, free_memory, make_meter, matmul_rate, rss_bytes, time_call

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("plain", "homer", "homer-causal", "homer-focus")
HOMER_METHODS: tuple[str, ...] = ("homer", "homer-causal", "homer-focus")
BIAS_MODES: tuple[str, ...] = ("zero", "none", "random")
MERGE_MODES: tuple[str, ...] = ("auto", "causal", "own-leaf")


@dataclass(frozen=True)
class BenchSettings:
    """What to run.

    Attributes:
        shape: the model shape (random weights).
        device: "cpu", "cuda" or "cuda:N".
        dtype: weights and activations dtype.
        attn: attention backend of the transformers model ("sdpa" or "eager").
        methods: subset of METHODS.
        lengths: total input tokens per run (P + C + S for HOMER), ascending.
        prefix_len, suffix_len: HOMER's P and S (a real prompt's instruction and question).
        chunk_len: HOMER's M (None: half the window); warmup_layers: W (None: 12/32 of the layers).
        repeats: timed runs per length (median reported); warmup: untimed runs at the first length.
        budget_s: stop repeating a length once its timed runs took this long (at least one run).
        decode_tokens: greedy decode steps timed on each resulting cache (0: skip decode).
        bias: HOMER calibration table: "zero" (calibrated code path, zero table), "none"
            (uncalibrated path) or "random".
        plain_logits: "last" (``logits_to_keep=1``: only what generation needs) or "all" (the
            full [n, vocab] logits a bare ``model(ids)`` returns).
        max_plain_length: plain rows above this length are not run (status "not_run"): for
            machines where a long plain prefill would take hours rather than fail.
        seed: ids and weights seed.
        merge_attention: the ``homer`` row's merged-node attention, as ``HomerConfig.merge_attention``:
            "auto" (the library's default), "causal" or "own-leaf" (an explicit mask: sdpa or eager).
            ``homer-causal`` is always causal; ``homer-focus`` runs no merges.
        focus_leaves: k of the ``homer-focus`` row (``HomerConfig.focus_leaves``).
        matmul_size: side of the square matmul probe (None: 8192 on CUDA, 1024 on the CPU).
    """

    shape: ModelShape
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    attn: str = "sdpa"
    methods: tuple[str, ...] = METHODS
    lengths: tuple[int, ...] = ()
    prefix_len: int | None = None
    suffix_len: int | None = None
    chunk_len: int | None = None
    warmup_layers: int | None = None
    repeats: int = 3
    warmup: int = 1
    budget_s: float = 30.0
    decode_tokens: int = 16
    bias: str = "zero"
    plain_logits: str = "last"
    max_plain_length: int | None = None
    seed: int = 0
    merge_attention: str = "auto"
    focus_leaves: int = 2
    matmul_size: int | None = None

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods!r}")
        if self.bias not in BIAS_MODES:
            raise ValueError(f"bias must be one of {BIAS_MODES}, got {self.bias!r}")
        if self.plain_logits not in ("last", "all"):
            raise ValueError(f"plain_logits must be 'last' or 'all', got {self.plain_logits!r}")
        if self.repeats < 1 or self.warmup < 0 or self.decode_tokens < 0:
            raise ValueError(
                f"need repeats >= 1, warmup >= 0, decode_tokens >= 0; got {self.repeats}, {self.warmup}, {self.decode_tokens}"
            )
        if self.attn not in ("sdpa", "eager", "flash_attention_2"):
            raise ValueError(f"attn must be sdpa, eager or flash_attention_2, got {self.attn!r}")
        if self.merge_attention not in MERGE_MODES:
            raise ValueError(f"merge_attention must be one of {MERGE_MODES}, got {self.merge_attention!r}")
        if self.merge_attention == "own-leaf" and self.attn not in compat.MASKABLE_ATTENTION:
            raise ValueError(f"merge_attention='own-leaf' needs one of {compat.MASKABLE_ATTENTION}, not {self.attn!r}")
        if self.focus_leaves < 1:
            raise ValueError(f"focus_leaves must be >= 1, got {self.focus_leaves}")
        if self.matmul_size is not None and self.matmul_size < 16:
            raise ValueError(f"matmul_size must be >= 16, got {self.matmul_size}")
        lengths = self.lengths or self.shape.lengths
        if any(n < 2 for n in lengths):
            raise ValueError(f"lengths must be >= 2 tokens, got {lengths}")
        object.__setattr__(self, "lengths", tuple(sorted(set(lengths))))
        if self.prefix_len is None:
            object.__setattr__(self, "prefix_len", self.shape.prefix_len)
        if self.suffix_len is None:
            object.__setattr__(self, "suffix_len", self.shape.suffix_len)


@dataclass(frozen=True)
class BenchResult:
    """One (method, length) row. Byte counts are ints; None where not measured.

    Attributes:
        status: "ok", "oom", "skipped" (a shorter length already ran out of memory), "not_run"
            (above ``max_plain_length``) or "error".
        note: the OOM/error message, or why it was skipped.
        seconds: median prefill/compression time; runs: every timed run.
        tokens_per_s: length / seconds.
        peak_bytes: CUDA max allocated (weights included), or the process's peak RSS on the CPU.
        peak_over_weights_bytes: CUDA: peak minus weight bytes; CPU: peak RSS minus the idle RSS
            measured once after the model was built (weights, interpreter and libraries), the
            same baseline for every row (``meta["rss_idle_bytes"]``).
        reserved_bytes: CUDA allocator peak reserve (None on the CPU).
        kv_peak_bytes: HOMER: the engine's CompressionStats.peak_kv_bytes (all K/V alive at once);
            plain: the full cache, length x per-token K/V bytes.
        cache_tokens, cache_bytes: the resulting cache handed to decoding.
        decode_ms: greedy decode ms per token on that cache (the same decode loop for both).
        floor_seconds: 2 x decoder-layer parameters x length / measured matmul rate (the dense
            linear work of the whole input, the same for every method).
        x_floor: seconds / floor_seconds (< 1 is possible for HOMER: pruned tokens skip layers).
        work_fraction: token-layers the method runs / (length x layers): the share of dense work.
        tree_height, num_leaves: HOMER's H and N.
        own_flops: matmul FLOPs of the passes this method runs (``analytic``: projections, causal
            attention over each pass's tokens, MLP), counted from the plan and the cache it returned.
        own_floor_seconds: own_flops / measured matmul rate.
        floor_fraction: own_floor_seconds / seconds: the share of the device's matmul rate the
            method's own work reached (1 = every second spent in matmuls at the probe's rate).
    """

    method: str
    length: int
    status: str
    note: str = ""
    seconds: float | None = None
    runs: tuple[float, ...] = ()
    tokens_per_s: float | None = None
    peak_bytes: int | None = None
    peak_over_weights_bytes: int | None = None
    reserved_bytes: int | None = None
    kv_peak_bytes: int | None = None
    cache_tokens: int | None = None
    cache_bytes: int | None = None
    decode_ms: float | None = None
    floor_seconds: float | None = None
    x_floor: float | None = None
    work_fraction: float | None = None
    tree_height: int | None = None
    num_leaves: int | None = None
    own_flops: float | None = None
    own_floor_seconds: float | None = None
    floor_fraction: float | None = None


@dataclass(frozen=True)
class BenchReport:
    """Settings, environment and measured constants (``meta``), the rows, and whether all ran."""

    meta: dict[str, Any]
    results: tuple[BenchResult, ...]
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "complete": self.complete, "results": [asdict(r) for r in self.results]}


@dataclass
class _Prefill:
    """What one method produced: a DynamicCache to decode on and what to report about it."""

    cache: Any
    next_position: int
    cache_tokens: int
    cache_bytes: int
    kv_peak_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


def is_oom(err: BaseException) -> bool:
    """True for out-of-memory errors, including cuBLAS/cuDNN allocation failures."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


def _cache_bytes(cache) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in compat.kv_from_cache(cache))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


class _Ids:
    """The one tokenizer attribute ``HomerModel`` reads when the model names no end-of-text id."""

    eos_token_id = 2


class BenchHomer(HomerModel):
    """``HomerModel`` with a fixed calibration table, on a random-initialised model.

    Everything else (plan, merge attention, suffix re-read, focus) is the library's own code path;
    the table is the one thing a real model builds once from text, which a random model has none of.
    """

    def __init__(self, model, homer: HomerConfig, table: torch.Tensor | None, name: str = "bench") -> None:
        super().__init__(model, _Ids(), name=name, homer=homer)
        self._table = table

    def bias_table(self, progress: Progress | None = None) -> torch.Tensor | None:
        """The fixed table (``progress`` unused: nothing is built)."""
        return self._table if self.homer.pruning == "calibrated" else None


class Bench:
    """Holds the model and the measured constants; ``run()`` produces the report."""

    def __init__(self, settings: BenchSettings, model=None) -> None:
        self.settings = settings
        self.device = torch.device(settings.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {settings.device!r} requested but CUDA is not available")
        torch.manual_seed(settings.seed)
        self.model = model if model is not None else build_model(
            settings.shape, device=self.device, dtype=settings.dtype,
            attn_implementation=settings.attn, seed=settings.seed,
        )
        self.parts = compat.model_parts(self.model)
        self.chunk_len = settings.chunk_len or self.parts.window // 2
        if self.chunk_len > self.parts.window:
            raise ValueError(f"chunk_len {self.chunk_len} exceeds the model window {self.parts.window}")
        self.weights_bytes = weights_bytes(self.model)
        self.layer_params = layer_parameters(self.model)
        self.meter = make_meter(self.device)
        free_memory(self.device)
        self.rss_idle = rss_bytes()
        self.rate = matmul_rate(self.device, settings.dtype, settings.matmul_size)
        self.flops: LayerFlops = layer_flops(self.model)
        self.bias = self._bias_table()
        self._homers: dict[str, BenchHomer] = {}

    def _bias_table(self) -> torch.Tensor | None:
        mode, shape = self.settings.bias, (self.parts.num_layers, self.chunk_len)
        if mode == "none":
            return None
        if mode == "zero":
            return torch.zeros(shape, dtype=torch.float32, device=self.device)
        gen = torch.Generator().manual_seed(self.settings.seed)
        return (torch.randn(shape, generator=gen) * 0.1).to(self.device)

    def homer_config(self, method: str) -> HomerConfig:
        """The HomerConfig a HOMER row runs with (the library's defaults but for the row's point)."""
        s = self.settings
        base = HomerConfig(chunk_len=self.chunk_len, warmup_layers=s.warmup_layers,
                           pruning="uncalibrated" if s.bias == "none" else "calibrated")
        if method == "homer":
            return replace(base, merge_attention=s.merge_attention)
        if method == "homer-causal":
            return replace(base, merge_attention="causal")
        if method == "homer-focus":
            return replace(base, focus_leaves=s.focus_leaves)
        raise ValueError(f"not a HOMER method: {method!r}")

    def homer_model(self, method: str) -> BenchHomer:
        """The (cached) ``HomerModel`` of a HOMER row over the bench's model."""
        if method not in self._homers:
            self._homers[method] = BenchHomer(self.model, self.homer_config(method), self.bias, name=method)
        return self._homers[method]

    # ------------------------------------------------------------------ methods
    def plan(self, length: int) -> Plan:
        s = self.settings
        assert s.prefix_len is not None and s.suffix_len is not None
        context = length - s.prefix_len - s.suffix_len
        if context < 1:
            raise ValueError(f"length {length} leaves no context after prefix {s.prefix_len} + suffix {s.suffix_len}")
        return make_plan(
            s.prefix_len, context, s.suffix_len, chunk_len=self.chunk_len, cache_len=self.chunk_len,
            num_layers=self.parts.num_layers, warmup_layers=s.warmup_layers,
        )

    def _plain(self, ids: torch.Tensor) -> _Prefill:
        keep = 1 if self.settings.plain_logits == "last" else 0
        out = self.model(input_ids=ids[None], use_cache=True, logits_to_keep=keep)
        cache = compat.output_cache(out)
        n = int(ids.numel())
        size = _cache_bytes(cache)
        return _Prefill(cache, n, n, size, size)

    def _homer(self, hm: BenchHomer, parts: PromptParts, plan: Plan) -> _Prefill:
        ctx = hm.compress(parts)
        if hm.homer.focus_leaves and plan.num_leaves > 1:
            work = focus_work(plan, self.flops, ctx.cache_tokens)
        else:
            work = tree_work(plan, self.flops, hm.homer.reread_suffix)
        extra = {"tree_height": ctx.stats.tree_height, "num_leaves": ctx.stats.num_leaves, "work": work}
        return _Prefill(ctx.to_cache(), ctx.next_position, ctx.cache_tokens, ctx.kv_bytes(), ctx.stats.peak_kv_bytes, extra)

    def _method(self, method: str, length: int) -> tuple[Callable[[], _Prefill], dict[str, Any]]:
        gen = torch.Generator().manual_seed(self.settings.seed + length)
        ids = torch.randint(3, self.parts.embed.num_embeddings, (length,), generator=gen)
        if method == "plain":
            dev_ids = ids.to(self.device)
            return (lambda: self._plain(dev_ids)), {"work": plain_work(length, self.parts.num_layers, self.flops)}
        plan = self.plan(length)
        hm = self.homer_model(method)
        P, S = plan.prefix_len, plan.suffix_len
        as_list = ids.tolist()
        parts = PromptParts(tuple(as_list[:P]), tuple(as_list[P:length - S]), tuple(as_list[length - S:]))
        return (lambda: self._homer(hm, parts, plan)), {}

    # ------------------------------------------------------------------ measuring
    def _decode_ms(self, prefill: _Prefill) -> float | None:
        steps = self.settings.decode_tokens
        if steps == 0:
            return None
        state = {"token": 0, "position": prefill.next_position}

        def step() -> None:
            logits = decode_step(self.parts, prefill.cache, state["token"], state["position"])
            state["token"] = int(torch.argmax(logits))  # a real greedy loop syncs once per token
            state["position"] += 1

        step()  # warm-up
        seconds, _ = time_call(self.device, lambda: [step() for _ in range(steps)])
        return seconds * 1000.0 / steps

    def warm_up(self, method: str, length: int) -> None:
        """Untimed runs (kernels, allocator, cuBLAS handles); an OOM here is left to the measurement."""
        for _ in range(self.settings.warmup):
            try:
                fn, _ = self._method(method, length)
            except ValueError:
                return  # the plan cannot fit: measure() reports it as an error row
            try:
                with torch.inference_mode():
                    out = fn()
                    if self.settings.decode_tokens:
                        decode_step(self.parts, out.cache, 0, out.next_position)
                del out
            except Exception as err:  # noqa: BLE001 - only OOM is tolerated, re-raised otherwise
                if not is_oom(err):
                    raise
                logger.info("warm-up of %s at %d ran out of memory", method, length)
                break
            finally:
                free_memory(self.device, full=False)

    def measure(self, method: str, length: int) -> BenchResult:
        """Time, meter and decode one (method, length); OOM becomes a result."""
        s = self.settings
        try:
            fn, info = self._method(method, length)
        except ValueError as err:
            return BenchResult(method, length, "error", note=_first_line(err))
        runs: list[float] = []
        peak = over = reserved = 0
        prefill: _Prefill | None = None
        failure: BaseException | None = None
        free_memory(self.device)
        try:
            with torch.inference_mode():
                for _ in range(s.repeats):
                    prefill = None
                    free_memory(self.device, full=False)
                    self.meter.start()
                    seconds, prefill = time_call(self.device, fn)
                    self.meter.stop()
                    runs.append(seconds)
                    peak = max(peak, self.meter.peak)
                    reserved = max(reserved, getattr(self.meter, "reserved", 0))
                    if self.device.type == "cuda":
                        over = max(over, self.meter.peak - self.weights_bytes)
                    else:
                        over = max(over, self.meter.peak - self.rss_idle)
                    if sum(runs) >= s.budget_s:
                        break
                assert prefill is not None
                decode_ms = self._decode_ms(prefill)
        except Exception as err:  # noqa: BLE001 - only OOM is a result; anything else propagates
            if not is_oom(err):
                raise
            failure = err
        if failure is not None:
            note = _first_line(failure)
            del failure
            prefill = None
            free_memory(self.device)
            logger.warning("%s at %d tokens: out of memory (%s)", method, length, note)
            return BenchResult(method, length, "oom", note=note)
        assert prefill is not None
        sec = median(runs)
        floor = 2.0 * self.layer_params * length / self.rate
        work: OwnWork = prefill.extra.get("work") or info["work"]
        own_floor = work.flops / self.rate
        result = BenchResult(
            method, length, "ok",
            seconds=sec, runs=tuple(runs), tokens_per_s=length / sec if sec > 0 else None,
            peak_bytes=int(peak), peak_over_weights_bytes=int(over),
            reserved_bytes=int(reserved) if self.device.type == "cuda" else None,
            kv_peak_bytes=prefill.kv_peak_bytes, cache_tokens=prefill.cache_tokens, cache_bytes=prefill.cache_bytes,
            decode_ms=decode_ms, floor_seconds=floor, x_floor=sec / floor if floor > 0 else None,
            work_fraction=work.token_layers / (length * self.parts.num_layers),
            tree_height=prefill.extra.get("tree_height"), num_leaves=prefill.extra.get("num_leaves"),
            own_flops=float(work.flops), own_floor_seconds=own_floor,
            floor_fraction=own_floor / sec if sec > 0 else None,
        )
        prefill = None
        free_memory(self.device, full=False)
        logger.info("%s at %d tokens: %.3f s, peak %.1f MiB", method, length, sec, peak / 2**20)
        return result

    def run(self, on_result: Callable[[BenchReport], None] | None = None) -> BenchReport:
        """All (method, length) rows. ``on_result(partial_report)`` is called after each row, so a
        run stopped by a time limit still leaves what it measured (e.g. JSON written row by row)."""
        results: list[BenchResult] = []
        meta = self.meta()

        def add(result: BenchResult) -> None:
            results.append(result)
            if on_result is not None:
                on_result(BenchReport(meta, tuple(results), complete=False))

        for method in self.settings.methods:
            oom_at: int | None = None
            self.warm_up(method, self.settings.lengths[0])
            for length in self.settings.lengths:
                if oom_at is not None:
                    add(BenchResult(method, length, "skipped", note=f"out of memory at {oom_at} tokens"))
                    continue
                cap = self.settings.max_plain_length
                if method == "plain" and cap is not None and length > cap:
                    add(BenchResult(method, length, "not_run", note=f"above max_plain_length={cap}"))
                    continue
                result = self.measure(method, length)
                if result.status == "oom":
                    oom_at = length
                add(result)
        return BenchReport(meta, tuple(results))

    def meta(self) -> dict[str, Any]:
        s, shape = self.settings, self.settings.shape
        return {
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "device": device_name(self.device),
            "device_type": self.device.type,
            "versions": {
                "homer_llm": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                "python": platform.python_version(), "cuda": torch.version.cuda,
            },
            "config": asdict(shape),
            "dtype": str(s.dtype).removeprefix("torch."),
            "attn": s.attn,
            "parameters": count_parameters(self.model),
            "layer_parameters": self.layer_params,
            "weights_bytes": self.weights_bytes,
            "kv_bytes_per_token": shape.kv_bytes_per_token(torch.finfo(s.dtype).bits // 8),
            "matmul_flops": self.rate,
            "memory_kind": self.meter.kind,
            "rss_idle_bytes": self.rss_idle,
            "homer": {
                "prefix_len": s.prefix_len, "suffix_len": s.suffix_len, "chunk_len": self.chunk_len,
                "cache_len": self.chunk_len, "warmup_layers": s.warmup_layers, "bias": s.bias,
                "merge_attention": self.homer_model("homer").homer.merge_attention
                if "homer" in s.methods else s.merge_attention,
                "focus_leaves": s.focus_leaves,
            },
            "methods": {m: asdict(self.homer_model(m).homer) for m in s.methods if m in HOMER_METHODS},
            "layer_flops": {"linear_params": self.flops.linear_params, "attn_width": self.flops.attn_width},
            "matmul_size": s.matmul_size or (8192 if self.device.type == "cuda" else 1024),
            "threads": torch.get_num_threads(),
            "repeats": s.repeats, "warmup": s.warmup, "budget_s": s.budget_s,
            "decode_tokens": s.decode_tokens, "plain_logits": s.plain_logits,
            "max_plain_length": s.max_plain_length, "seed": s.seed,
        }
