"""Model shapes for the benchmark, and building them with random weights (no checkpoint needed).

Speed and memory depend on a model's shape, not on its trained weights, so the benchmark builds
full-size models from a config alone: the module tree is created on the ``meta`` device (no
memory), then storage is allocated directly on the target device and filled with random values.
A 7B model in bf16 thus never touches CPU RAM and is ready in about a second on a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

logger = logging.getLogger(__name__)

KIB = 1024


@dataclass(frozen=True)
class ModelShape:
    """A Llama-architecture shape.

    Attributes:
        name: key used on the command line.
        vocab, hidden, intermediate, layers, heads, kv_heads: the usual sizes (kv_heads < heads is GQA).
        window: max_position_embeddings, the native context window.
        rope_theta: RoPE base.
        tie_embeddings: lm_head shares the embedding matrix.
        prefix_len, suffix_len: P and S of the synthetic HOMER prompt (a real prompt's affixes).
        lengths: default input lengths (total tokens) benchmarked for this shape.
        description: one line for the help text and the report.
    """

    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    window: int
    rope_theta: float
    tie_embeddings: bool
    prefix_len: int
    suffix_len: int
    lengths: tuple[int, ...]
    description: str

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def kv_bytes_per_token(self, element_size: int) -> int:
        """K and V bytes one token occupies over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * element_size

    def hf_config(self, attn_implementation: str = "sdpa") -> LlamaConfig:
        config = LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=self.window,
            rope_theta=self.rope_theta,
            rms_norm_eps=1e-5,
            tie_word_embeddings=self.tie_embeddings,
            bos_token_id=1,
            eos_token_id=2,
        )
        config._attn_implementation = attn_implementation
        return config


def _doubling(start: int, stop: int) -> tuple[int, ...]:
    out, n = [], start
    while n <= stop:
        out.append(n)
        n *= 2
    return tuple(out)


SHAPES: dict[str, ModelShape] = {
    shape.name: shape
    for shape in (
        ModelShape(
            "llama2-7b", vocab=32000, hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32,
            window=4096, rope_theta=10000.0, tie_embeddings=False, prefix_len=32, suffix_len=32,
            lengths=_doubling(4 * KIB, 64 * KIB), description="Llama-2-7B shape (MHA, 4k window)",
        ),
        ModelShape(
            "llama3-8b", vocab=128256, hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8,
            window=8192, rope_theta=500000.0, tie_embeddings=False, prefix_len=32, suffix_len=32,
            lengths=_doubling(4 * KIB, 64 * KIB), description="Llama-3-8B shape (GQA 32/8, 8k window)",
        ),
        ModelShape(
            "smollm2-135m", vocab=49152, hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3,
            window=8192, rope_theta=100000.0, tie_embeddings=True, prefix_len=32, suffix_len=32,
            lengths=_doubling(4 * KIB, 16 * KIB), description="SmolLM2-135M shape (GQA 9/3, 8k window)",
        ),
        ModelShape(
            "tiny", vocab=128, hidden=64, intermediate=128, layers=8, heads=4, kv_heads=2,
            window=256, rope_theta=10000.0, tie_embeddings=False, prefix_len=8, suffix_len=8,
            lengths=(256, 512, 1024, 2048), description="tiny Llama for CPU/CI (8 layers, 256 window)",
        ),
    )
}


def get_shape(name: str) -> ModelShape:
    if name not in SHAPES:
        raise ValueError(f"unknown benchmark config {name!r}; choose one of {sorted(SHAPES)}")
    return SHAPES[name]


def meta_model(shape: ModelShape, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """The model with every tensor on the meta device (no memory; for shapes and parameter counts)."""
    with torch.device("meta"):
        return LlamaForCausalLM(shape.hf_config(attn_implementation))


@torch.no_grad()
def build_model(
    shape: ModelShape,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    std: float = 0.02,
) -> PreTrainedModel:
    """A random-initialised model of ``shape`` materialised directly on ``device`` in ``dtype``.

    Linear and embedding weights are N(0, std^2), norm weights 1. The rotary inverse frequencies
    are recomputed in float32 (they are buffers, not weights, and ``to_empty`` leaves them
    uninitialised). Tied embeddings are re-tied after materialisation.
    """
    model = meta_model(shape, attn_implementation).to(dtype)
    model.to_empty(device=device)
    if shape.tie_embeddings:
        model.tie_weights()
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=generator)
    rotary_cls = type(model.model.rotary_emb)
    model.model.rotary_emb = rotary_cls(model.config).to(device)
    model.eval()
    logger.info("built %s on %s (%s): %.3fB parameters", shape.name, device, dtype, count_parameters(model) / 1e9)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of distinct parameters and buffers."""
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in params.values())
    return total + sum(b.numel() * b.element_size() for b in model.buffers())


def layer_parameters(model: PreTrainedModel) -> int:
    """Parameters inside the decoder layers: the ones every token multiplies through (FLOP floor)."""
    return sum(p.numel() for p in model.model.layers.parameters())
