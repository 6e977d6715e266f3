"""The only module that touches transformers internals.

Everything HOMER needs from a decoder-only model goes through here: finding its parts, refusing
what the method cannot drive, building masks per attention backend, running one decoder layer
with HOMER's own position embeddings while capturing that layer's K/V, projecting the last
token's query, reading or writing a standard ``DynamicCache``, and building RoPE-scaled views
that share the model's weights. (It also holds the one private torch probe, :func:`cpu_has_amx`.)

Rule kept throughout: HOMER's ``position_ids`` never reach a decoder layer. Position ids restart
inside merged chunks, and flash attention / ``create_causal_mask`` read a restart as the start of a
new packed sequence, which would silently block attention across merged chunks (HOMER.md 12).
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ATTENTION: tuple[str, ...] = ("sdpa", "eager", "flash_attention_2")
MASKABLE_ATTENTION: tuple[str, ...] = ("sdpa", "eager")
"""Backends that take an arbitrary attention mask (:func:`mask_from_allowed`)."""
SDPA_REPEAT_KV = "homer_sdpa_repeat_kv"
"""Name under which :func:`use_sdpa_repeat_kv` registers sdpa-with-repeated-K/V in transformers."""

KV = tuple[torch.Tensor, torch.Tensor]


class UnsupportedModelError(ValueError):
    """The model's architecture or configuration is one HOMER cannot drive."""


@dataclass(frozen=True)
class ModelParts:
    """Handles on the pieces of a causal LM that the HOMER loop calls directly."""

    embed: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Module
    rotary: nn.Module
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    window: int
    attn_implementation: str

    def layer_device(self, index: int) -> torch.device:
        return next(self.layers[index].parameters()).device

    @property
    def embed_device(self) -> torch.device:
        return next(self.embed.parameters()).device

    @property
    def head_device(self) -> torch.device:
        return next(self.lm_head.parameters()).device


def check_supported(model: PreTrainedModel) -> None:
    """Raise UnsupportedModelError, naming the architecture, for anything HOMER cannot drive."""
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"HOMER supports {', '.join(SUPPORTED_MODEL_TYPES)} decoder models; "
            f"got model_type={model_type!r} ({type(model).__name__})"
        )
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        raise UnsupportedModelError(f"{type(model).__name__} is not a causal LM with model.layers and lm_head")
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "max_position_embeddings", None)
    sliding = getattr(config, "sliding_window", None)
    uses_sliding = any(t != "full_attention" for t in layer_types)
    if model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        uses_sliding = False
    elif model_type in ("mistral",) and sliding is not None and window is not None and sliding < window:
        uses_sliding = True
    if uses_sliding:
        raise UnsupportedModelError(
            f"{model_type!r} model uses sliding-window or hybrid attention layers "
            f"(sliding_window={sliding}, layer_types={sorted(set(layer_types))}); HOMER needs full attention"
        )
    impl = _plain_name(config._attn_implementation)
    if impl not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(f"attention backend {impl!r} is not supported; use one of {SUPPORTED_ATTENTION}")


def _plain_name(impl: str) -> str:
    """The attention backend behind ``impl`` (this module's sdpa variant is sdpa)."""
    return "sdpa" if impl == SDPA_REPEAT_KV else impl


class _Ungrouped:
    """An attention module seen without K/V groups (its K/V heads are already repeated).

    transformers' sdpa looks for ``num_key_value_groups`` to decide on GQA; without it (rather than
    with 1, which 5.0 still sends as ``enable_gqa=True``) every version passes the heads as they are.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = module

    def __getattr__(self, name: str):
        if name == "num_key_value_groups":
            raise AttributeError(name)
        return getattr(self._module, name)


def _sdpa_repeat_kv(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, **kwargs):
    """transformers' sdpa, with grouped K/V heads repeated to the query heads for a float32 prefill.

    query [b, heads, q, d]; key/value [b, kv_heads, k, d]. transformers hands GQA without a mask to
    PyTorch as ``enable_gqa=True``; PyTorch's fused kernels take that only in half precision, so a
    float32 prefill falls back to the math kernel, which holds the [b, heads, q, k] scores (35.8 GiB
    for SmolLM2's 9 heads at 32k tokens: measured as an OOM on an 80 GB H100). Repeated heads keep
    the memory-efficient kernel, at the cost of a K/V copy per layer.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1 and query.dtype == torch.float32 and query.shape[2] > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        module = _Ungrouped(module)  # type: ignore[assignment]
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def use_sdpa_repeat_kv(model: PreTrainedModel) -> bool:
    """Switch a float32 GQA model on CUDA from sdpa to :func:`_sdpa_repeat_kv`; True if switched.

    Only that case changes (``config._attn_implementation`` becomes :data:`SDPA_REPEAT_KV`, which
    behaves as sdpa everywhere else, masks included); the switch is logged.
    """
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    param = next(model.parameters(), None)
    if (config._attn_implementation != "sdpa" or kv_heads == heads or param is None
            or param.dtype != torch.float32 or param.device.type != "cuda"):
        return False
    _switch_to_repeat_kv(model)
    return True


def _switch_to_repeat_kv(model: PreTrainedModel) -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(SDPA_REPEAT_KV, _sdpa_repeat_kv)
    AttentionMaskInterface.register(SDPA_REPEAT_KV, sdpa_mask)
    model.set_attn_implementation(SDPA_REPEAT_KV)
    logger.info("float32 GQA on CUDA: sdpa with repeated K/V heads (PyTorch's fused kernels refuse enable_gqa "
                "in float32; its math kernel holds the full score matrix)")


def cpu_has_amx() -> bool:
    """Whether torch reports AMX tiles on this CPU (where bfloat16 matmuls run much faster).

    ``torch.cpu._is_amx_tile_supported`` is private (torch 2.x): a torch without it, or whose
    probe raises, reads False, since this only decides whether a hint is logged.
    """
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if callable(probe) else False
    except (RuntimeError, AttributeError):
        return False


def model_parts(model: PreTrainedModel) -> ModelParts:
    """Look up the parts of a supported model (raises UnsupportedModelError otherwise)."""
    check_supported(model)
    config = model.config
    inner = model.model
    num_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    return ModelParts(
        embed=inner.embed_tokens,
        layers=inner.layers,
        norm=inner.norm,
        lm_head=model.lm_head,
        rotary=inner.rotary_emb,
        num_layers=config.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
        head_dim=head_dim,
        window=int(config.max_position_embeddings),
        attn_implementation=_plain_name(config._attn_implementation),
    )


def position_embeddings(parts: ModelParts, hidden: torch.Tensor, positions: torch.Tensor) -> KV:
    """cos/sin for ``positions`` ([n] long) from the model's own rotary module: ([1, n, d], [1, n, d])."""
    return parts.rotary(hidden, position_ids=positions.to(hidden.device)[None, :])


def attention_mask(
    parts: ModelParts, q_len: int, past_len: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Causal mask for ``q_len`` new tokens after ``past_len`` cached ones, in sequence order.

    sdpa and flash apply causality themselves when q_len == kv_len (mask None, is_causal), and a
    single query attends to everything, so only eager, or sdpa with a past, needs a tensor.
    flash-attn aligns the causal mask bottom-right, which is what a past needs.
    """
    impl = parts.attn_implementation
    if q_len == 1 or impl == "flash_attention_2" or (impl == "sdpa" and past_len == 0):
        return None
    kv_len = past_len + q_len
    allowed = torch.arange(kv_len, device=device)[None, :] <= (torch.arange(q_len, device=device)[:, None] + past_len)
    return mask_from_allowed(parts, allowed, dtype)


def mask_from_allowed(parts: ModelParts, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A [q, kv] boolean "may attend" matrix as the layers' attention implementation takes a mask.

    sdpa takes it as is ([1, 1, q, kv] bool), eager as an additive float mask; flash-attn takes no
    arbitrary mask (TypeError, with the implementation named).
    """
    impl = parts.attn_implementation
    if impl == "sdpa":
        return allowed[None, None]
    if impl not in MASKABLE_ATTENTION:
        raise TypeError(f"an arbitrary attention mask needs one of {MASKABLE_ATTENTION}, not {impl!r}")
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def owner_mask(parts: ModelParts, owner: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The own-leaf merge mask from each token's owner id, built where ``owner`` lives.

    ``owner``: [n] long, -1 for a prefix token, -2 for a suffix token, else the token's leaf.
    Token i may attend to token j <= i when j is a prefix token, j shares i's leaf, or i is a suffix
    token. Built with tensor ops on ``owner``'s device (no host copy, no device-to-host sync).
    """
    rows, cols = owner[:, None], owner[None, :]
    allowed = ((cols == -1) | (cols == rows) | (rows == -2)).tril_()
    return mask_from_allowed(parts, allowed, dtype)


class _KVCapture:
    """Stands in for a Cache in one layer call: keeps the layer's rotated K/V, adds nothing to them."""

    def __init__(self) -> None:
        self.kv: KV | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args, **kwargs) -> KV:
        self.kv = (keys, values)
        return keys, values


def run_layer(
    parts: ModelParts,
    index: int,
    hidden: torch.Tensor,
    pos_emb: KV,
    mask: torch.Tensor | None,
    past: DynamicCache | None = None,
) -> tuple[torch.Tensor, KV | None]:
    """Run decoder layer ``index`` on ``hidden`` [1, n, hidden] and return (output, (K, V)).

    With ``past`` (a DynamicCache holding earlier tokens), the layer appends to it and no K/V is
    returned; without, the layer's own K/V ([1, n_kv, n, d] each, after rotary) are returned.
    The hidden states are moved to the layer's device first (accelerate device maps).
    """
    device = parts.layer_device(index)
    hidden = hidden.to(device)
    cos, sin = (t.to(device) for t in pos_emb)
    if mask is not None:
        mask = mask.to(device)
    capture = _KVCapture() if past is None else past
    out = parts.layers[index](
        hidden,
        attention_mask=mask,
        position_embeddings=(cos, sin),
        use_cache=True,
        **cache_kwargs(parts.layers[index], capture),
    )
    if isinstance(out, tuple):  # older layers returned (hidden,) tuples
        out = out[0]
    return out, (capture.kv if past is None else None)


@functools.cache
def _cache_keyword(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters  # follows functools.wraps of the deprecation wrapper
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(module: nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` under the keyword ``module.forward`` takes a KV cache by.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` in every model and decoder layer
    (the old name warns on each call and goes in 5.40); 5.0-5.23 know only ``past_key_values``.
    Works for a causal LM and for one of its decoder layers.
    """
    return {_cache_keyword(type(module)): cache}


def output_cache(out: Any) -> DynamicCache:
    """The cache a model forward returned: ``out.cache`` from transformers 5.24,
    ``out.past_key_values`` before (5.24 keeps that name only as a deprecated alias)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def last_query(parts: ModelParts, index: int, hidden_last: torch.Tensor, pos_emb_last: KV) -> torch.Tensor:
    """The rotated query of one token at layer ``index``, as the layer's attention would form it.

    Args:
        hidden_last: [1, 1, hidden], the token's input to the layer.
        pos_emb_last: cos/sin for that token, [1, 1, d] each.
    Returns:
        [n_heads, d] query (layer's dtype), with q_norm where the model has one.
    """
    layer = parts.layers[index]
    attn = layer.self_attn
    device = parts.layer_device(index)
    x = layer.input_layernorm(hidden_last.to(device))
    q = attn.q_proj(x).view(1, 1, -1, parts.head_dim)  # [1, 1, n_h, d]
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
    q = q.transpose(1, 2)  # [1, n_h, 1, d]
    cos, sin = (t.to(device)[:, None] for t in pos_emb_last)  # [1, 1, 1, d]
    q = q * cos + _rotate_half(q) * sin
    return q[0, :, 0]


def attention_scaling(parts: ModelParts, index: int) -> float:
    return float(getattr(parts.layers[index].self_attn, "scaling", parts.head_dim**-0.5))


def final_logits(parts: ModelParts, hidden_last: torch.Tensor) -> torch.Tensor:
    """Logits [vocab] (float32) for one hidden state [1, 1, hidden]."""
    h = parts.norm(hidden_last.to(next(parts.norm.parameters()).device))
    return parts.lm_head(h.to(parts.head_device))[0, -1].float()


def embed(parts: ModelParts, ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings [1, n, hidden] for ids [n]."""
    return parts.embed(ids.to(parts.embed_device)[None, :])


def cache_from_kv(kv: list[KV] | tuple[KV, ...]) -> DynamicCache:
    """A standard DynamicCache holding the given per-layer (K, V) ([1, n_kv, F, d] each)."""
    cache = DynamicCache()
    for index, (k, v) in enumerate(kv):
        cache.update(k, v, index)
    return cache


def kv_from_cache(cache: DynamicCache) -> list[KV]:
    """Per-layer (K, V) tensors of a DynamicCache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


# ---------------------------------------------------------------- RoPE-scaled views
# A scaled view is a second model object built from a copy of the config with
# ``config.rope_parameters`` set to a YaRN / dynamic-NTK / linear (position interpolation) setting.
# It shares every parameter tensor with the base model (nothing is copied); only the rotary module,
# which transformers builds from the config, is new. transformers >= 5 reads
# ``rope_parameters = {"rope_type", "rope_theta", "factor", ...}``; yarn also needs
# ``original_max_position_embeddings`` (the pretrained window).

ROPE_TYPES = {"yarn": "yarn", "ntk": "dynamic", "dynamic": "dynamic", "linear": "linear"}


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError(f"cannot find rope_theta in the config of {config.model_type!r}")
    return float(theta)


def scaled_config(config, kind: str, factor: float):
    """A copy of ``config`` with RoPE scaling ``kind`` ("yarn", "ntk"/"dynamic", "linear") by ``factor``.

    yarn and linear raise ``max_position_embeddings`` to window * factor (the scaled window); dynamic
    NTK keeps it, because transformers' dynamic rule reads it as the pretrained window.
    """
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope scaling must be one of {sorted(ROPE_TYPES)}, got {kind!r}")
    if not factor >= 1.0:
        raise ValueError(f"rope scaling factor must be >= 1, got {factor}")
    window = int(config.max_position_embeddings)
    new = copy.deepcopy(config)
    params = {"rope_type": ROPE_TYPES[kind], "rope_theta": rope_theta(config), "factor": float(factor)}
    if params["rope_type"] == "yarn":
        params["original_max_position_embeddings"] = window
    if params["rope_type"] in ("yarn", "linear"):
        new.max_position_embeddings = int(round(window * factor))
    new.rope_parameters = params
    return new


def scaled_model(model, kind: str, factor: float):
    """A model that shares ``model``'s weights but uses RoPE scaling ``kind`` by ``factor``.

    The new object is built on the meta device (no allocation), every parameter and persistent
    buffer is assigned from the base model (the same tensors), and the rotary module is rebuilt
    from the scaled config on the base model's device.
    """
    config = scaled_config(model.config, kind, factor)
    config._attn_implementation = model.config._attn_implementation
    with torch.device("meta"):
        clone = type(model)(config)
    clone.load_state_dict(model.state_dict(keep_vars=True), assign=True, strict=True)
    base_rotary = model.model.rotary_emb
    device = base_rotary.inv_freq.device
    clone.model.rotary_emb = type(base_rotary)(config=config).to(device)
    leftover = [name for name, t in [*clone.named_parameters(), *clone.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"could not share weights into the rope-scaled model; still on meta: {leftover[:5]}")
    clone.generation_config = model.generation_config
    clone.eval()
    logger.debug("rope-scaled view: %s", config.rope_parameters)
    return clone
