"""The state of one tree node, with propagative refinement and sibling merging.

A node's tokens are laid out ``[prefix | context | suffix]`` at every step: affixes are never
pruned and merges put the averaged affixes back at the ends, so P and S never change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ChunkState:
    """A node after running some layers.

    Attributes:
        hidden: [1, n, hidden] input to the next layer.
        positions: [n] long position ids (reused across leaves, never renumbered).
        kv: per processed layer, (K, V) each [1, n_kv, n, d], keys after rotary.
        prefix_len, suffix_len: P and S (constant for a prompt).
        origin: [n] long index of each token in the prompt (an averaged affix token carries the
            left copy's), or None when not tracked. Used to look up per-token prompt data (word
            spans) after pruning and merging have reordered the tokens.
    """

    hidden: torch.Tensor
    positions: torch.Tensor
    kv: tuple[KV, ...]
    prefix_len: int
    suffix_len: int
    origin: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.positions.numel())

    @property
    def context_len(self) -> int:
        return self.length - self.prefix_len - self.suffix_len

    def kv_bytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)

    def with_layer(self, hidden: torch.Tensor, kv: KV) -> ChunkState:
        """The state after one more layer."""
        return replace(self, hidden=hidden, kv=(*self.kv, kv))


def prune(state: ChunkState, keep: torch.Tensor) -> ChunkState:
    """Keep tokens ``keep`` ([m] ascending indices) in the hidden states AND in every stored layer.

    This is propagative refinement: lower layers' K/V are subset, not recomputed, so the result is
    rectangular (every layer holds the same surviving tokens).
    """
    if keep.numel() == state.length:
        return state

    def sub(t: torch.Tensor, dim: int) -> torch.Tensor:
        return t.index_select(dim, keep.to(t.device))

    kv = tuple((sub(k, 2), sub(v, 2)) for k, v in state.kv)
    origin = None if state.origin is None else sub(state.origin, 0)
    return ChunkState(sub(state.hidden, 1), sub(state.positions, 0), kv, state.prefix_len, state.suffix_len, origin)


def _merge_tensor(left: torch.Tensor, right: torch.Tensor, dim: int, p: int, s: int) -> torch.Tensor:
    """[mean(prefix), ctx_left, ctx_right, mean(suffix)] along ``dim``."""
    right = right.to(left.device)
    nl, nr = left.shape[dim], right.shape[dim]
    pre = (left.narrow(dim, 0, p) + right.narrow(dim, 0, p)) / 2
    suf = (left.narrow(dim, nl - s, s) + right.narrow(dim, nr - s, s)) / 2
    return torch.cat(
        [pre.to(left.dtype), left.narrow(dim, p, nl - p - s), right.narrow(dim, p, nr - p - s), suf.to(left.dtype)],
        dim=dim,
    )


def merge(left: ChunkState, right: ChunkState) -> ChunkState:
    """Merge two siblings processed up to the same layer (HOMER.md section 9).

    Prefixes are identical in content and ids; suffixes share ids but saw different contexts, so
    both are averaged. Averaging rotated keys is valid because both copies carry the same position.
    Position ids become: prefix, left context, right context, suffix.
    """
    if len(left.kv) != len(right.kv):
        raise RuntimeError(f"siblings at different depths: {len(left.kv)} vs {len(right.kv)} layers")
    p, s = left.prefix_len, left.suffix_len
    hidden = _merge_tensor(left.hidden, right.hidden, 1, p, s)
    kv = tuple(
        (_merge_tensor(kl, kr, 2, p, s), _merge_tensor(vl, vr, 2, p, s))
        for (kl, vl), (kr, vr) in zip(left.kv, right.kv, strict=True)
    )
    positions = _concat_ids(left.positions, right.positions, p, s)
    origin = None
    if left.origin is not None and right.origin is not None:
        origin = _concat_ids(left.origin, right.origin, p, s)
    return ChunkState(hidden, positions, kv, p, s, origin)


def _concat_ids(left: torch.Tensor, right: torch.Tensor, p: int, s: int) -> torch.Tensor:
    """[left prefix, left context, right context, left suffix] of a per-token id vector."""
    nl, nr = left.numel(), right.numel()
    return torch.cat([left[:p], left[p : nl - s], right[p : nr - s].to(left.device), left[nl - s :]])
