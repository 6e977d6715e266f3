"""The state of one tree node, with propagative refinement and sibling merging.

A node's tokens are laid out ``[prefix | context | suffix]`` at every step: affixes are never
pruned and merges put the averaged affixes back at the ends, so P and S never change.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    hidden: torch.Tensor
    positions: torch.Tensor
    kv: tuple[KV, ...]
    prefix_len: int
    suffix_len: int

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
        return ChunkState(hidden, self.positions, (*self.kv, kv), self.prefix_len, self.suffix_len)


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
    return ChunkState(sub(state.hidden, 1), sub(state.positions, 0), kv, state.prefix_len, state.suffix_len)


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
    nl = left.length
    positions = torch.cat(
        [left.positions[:p], left.positions[p : nl - s], right.positions[p : right.length - s].to(left.positions.device), left.positions[nl - s :]]
    )
    return ChunkState(hidden, positions, kv, p, s)
