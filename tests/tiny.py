"""Tiny seeded models and a character-level tokenizer, built in-test (no network, no weights)."""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

_ARCH = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}
ARCHITECTURES = tuple(_ARCH)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, ChatML-style template, EOS = <|im_end|>."""
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "</s>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(
    arch: str = "llama",
    *,
    attn: str = "sdpa",
    layers: int = 6,
    window: int = 256,
    vocab: int = 128,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **overrides,
):
    """A seeded random-init causal LM of the given architecture (GQA: 4 query heads, 2 KV heads)."""
    config_cls, model_cls = _ARCH[arch]
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        tie_word_embeddings=False,
    )
    if arch == "qwen3":
        kwargs["head_dim"] = 16
    if arch == "mistral":
        kwargs["sliding_window"] = None
    kwargs.update(overrides)
    config = config_cls(**kwargs)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_cls(config).to(dtype).eval()
    model.generation_config.eos_token_id = 4  # <|im_end|> in tiny_tokenizer
    return model


def tiny_engine(
    *,
    layers: int = 6,
    window: int = 256,
    template: str | None = None,
    tokenizer=None,
    name: str = "tiny-llama",
    engine_class=None,
):
    """A HomerModel (or ``engine_class``, a subclass taking the same arguments) over a seeded tiny
    llama with ``tokenizer`` (default: the tiny one), whose chat template becomes ``template`` if
    given. Uncalibrated pruning: no calibration table to build."""
    from homer_llm import HomerConfig, HomerModel

    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    if template is not None:
        tok.chat_template = template
    model = tiny_model("llama", vocab=len(tok), layers=layers, window=window)
    return (engine_class or HomerModel)(model, tok, name=name, homer=HomerConfig(pruning="uncalibrated"))


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count.

    Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine the spinning
    OpenMP workers make each decode step ~20x slower (measured: 236 ms vs 11 ms); real models use
    both cores (``n=2``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
