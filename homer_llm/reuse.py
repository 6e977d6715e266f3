"""Reusing a document's work across questions (HOMER.md section 13).

Three modes, all built on the engine's own pieces (compat, state, schedule, engine):

- ``"agnostic"``: compress the document once behind a generic suffix (``GENERIC_SUFFIX``) and
  append each real suffix (question + assistant tag) after that cache with
  ``generation.extend_context``. The cached value is a ``CompressedContext``; per question only
  the S suffix tokens are prefilled. Pruning was decided by the generic suffix, not the question.
- ``"leaf"``: query-aware reuse. Inside a leaf ``p + x_i + s`` the prefix and context tokens come
  before the suffix, so under causal attention their states in EVERY leaf layer (pruning happens
  only after the leaf's last layer) do not depend on the question. ``LeafStates`` keeps, per leaf,
  those tokens' K/V for layers [0, leaf_end) and their hidden output; per question the suffix is
  prefilled on top of each leaf, the leaf is pruned with the real question's query, and the upper
  levels of the tree run as usual. The result equals a fresh compression planned with the same
  suffix budget (see ``plan_with_budget``), up to float rounding.
- ``"exact"``: a fresh compression per prompt (the baseline); cached only for identical prompts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from . import compat
from .engine import CompressedContext, Progress, TreePass
from .generation import extend_context
from .lexical import lexical_relevance
from .prompt import PromptParts
from .schedule import Node, Plan, make_plan
from .state import ChunkState

logger = logging.getLogger(__name__)

REUSE_MODES: tuple[str, ...] = ("agnostic", "leaf", "exact")

GENERIC_SUFFIX = "\n\n(End of the document. Keep its key facts, names and numbers in mind for the question that follows.)"
"""Text placed after the document when it is compressed once for every question ("agnostic")."""

DEFAULT_SUFFIX_BUDGET = 128
"""Suffix tokens reserved in each leaf in "leaf" mode; longer suffixes fall back to "exact"."""


def check_mode(mode: str) -> str:
    if mode not in REUSE_MODES:
        raise ValueError(f"reuse mode must be one of {REUSE_MODES}, got {mode!r}")
    return mode


def encode_suffix(engine: Any, text: str) -> tuple[int, ...]:
    """Token ids of a generic suffix text (no special tokens)."""
    return tuple(engine.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()


def fits_one_chunk(engine: Any, parts: PromptParts) -> bool:
    """True when the prompt needs no pruning at all (the engine's plain path)."""
    plan = engine.plan(parts)
    return plan.num_leaves == 1 and plan.root.keep_ctx >= plan.context_len


# ---------------------------------------------------------------------------------------- agnostic
def agnostic_parts(engine: Any, parts: PromptParts, generic_suffix: str = GENERIC_SUFFIX) -> PromptParts:
    """The question-independent prompt: prefix + document + generic suffix.

    When the document fits one chunk nothing is pruned, so no generic text is needed: the base
    prompt is prefix + document (its last token serves as the query) and appending the real
    suffix reproduces the exact prompt, token for token.
    """
    base = PromptParts(parts.prefix, parts.context, ())
    if fits_one_chunk(engine, PromptParts(parts.prefix, parts.context, parts.suffix)):
        return base
    return PromptParts(parts.prefix, parts.context, encode_suffix(engine, generic_suffix))


def extend(engine: Any, base: CompressedContext, suffix: tuple[int, ...]) -> CompressedContext:
    """Append the real suffix after a question-agnostic cache (holds the engine lock)."""
    with engine.lock:
        return extend_context(engine.parts, base, suffix)


# ---------------------------------------------------------------------------------------- leaf reuse
@dataclass(frozen=True)
class LeafStates:
    """The question-independent part of every leaf of one document's HOMER tree.

    Attributes:
        kv: per leaf, per layer in [0, leaf_layers), (K, V) each [1, n_kv, P + c_i, d], keys after
            rotary, for the prefix + that leaf's context tokens.
        hidden: per leaf, [1, P + c_i, hidden]: those tokens' output of the last leaf layer.
        prefix_len, context_len: P and C of the document prompt.
        suffix_budget: the suffix length the tree was planned for (any S <= it is served).
    """

    kv: tuple[tuple[compat.KV, ...], ...]
    hidden: tuple[torch.Tensor, ...]
    prefix_len: int
    context_len: int
    suffix_budget: int

    @property
    def num_leaves(self) -> int:
        return len(self.hidden)

    @property
    def leaf_layers(self) -> int:
        return len(self.kv[0])

    def nbytes(self) -> int:
        total = sum(h.numel() * h.element_size() for h in self.hidden)
        for leaf in self.kv:
            total += sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in leaf)
        return total

    def to(self, device: torch.device | str) -> LeafStates:
        kv = tuple(tuple((k.to(device), v.to(device)) for k, v in leaf) for leaf in self.kv)
        return replace(self, kv=kv, hidden=tuple(h.to(device) for h in self.hidden))

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for j, (leaf, hidden) in enumerate(zip(self.kv, self.hidden, strict=True)):
            out[f"leaf.{j}.hidden"] = hidden.contiguous()
            for i, (k, v) in enumerate(leaf):
                out[f"leaf.{j}.k.{i}"] = k.contiguous()
                out[f"leaf.{j}.v.{i}"] = v.contiguous()
        return out

    def meta(self) -> dict[str, Any]:
        return {
            "kind": "leaves",
            "num_leaves": self.num_leaves,
            "leaf_layers": self.leaf_layers,
            "prefix_len": self.prefix_len,
            "context_len": self.context_len,
            "suffix_budget": self.suffix_budget,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> LeafStates:
        n, layers = int(meta["num_leaves"]), int(meta["leaf_layers"])
        kv = tuple(
            tuple((tensors[f"leaf.{j}.k.{i}"], tensors[f"leaf.{j}.v.{i}"]) for i in range(layers)) for j in range(n)
        )
        hidden = tuple(tensors[f"leaf.{j}.hidden"] for j in range(n))
        return cls(kv, hidden, int(meta["prefix_len"]), int(meta["context_len"]), int(meta["suffix_budget"]))


def suffix_budget_for(engine: Any, parts: PromptParts, budget: int = DEFAULT_SUFFIX_BUDGET) -> int:
    """The suffix length to plan leaves for: ``budget``, capped at a quarter of what the prefix
    leaves of a chunk (so the suffix reservation never dominates the leaves). It depends only on
    the prefix, so every question about a document gets the same leaves; a longer suffix cannot
    use them."""
    return max(1, min(budget, (engine.chunk_len - len(parts.prefix)) // 4))


def plan_with_budget(engine: Any, parts: PromptParts, suffix_budget: int) -> Plan:
    """The HOMER plan for ``parts`` with chunking and targets decided for ``suffix_budget`` suffix
    tokens, then the real suffix length S (<= budget) put in, so leaves do not move with S."""
    if len(parts.suffix) > suffix_budget:
        raise ValueError(f"suffix of {len(parts.suffix)} tokens exceeds the planned budget {suffix_budget}")
    plan = make_plan(
        len(parts.prefix),
        len(parts.context),
        suffix_budget,
        chunk_len=engine.chunk_len,
        cache_len=engine.homer.cache_len or engine.chunk_len,
        num_layers=engine.parts.num_layers,
        warmup_layers=engine.homer.warmup_layers,
    )
    return replace(plan, suffix_len=len(parts.suffix))


def _bias_for(engine: Any, plan: Plan, progress: Progress | None = None) -> torch.Tensor | None:
    if plan.num_leaves == 1 and plan.root.keep_ctx >= plan.context_len:
        return None
    return engine.bias_table(progress)


def _generator_for(engine: Any) -> torch.Generator | None:
    return torch.Generator().manual_seed(engine.homer.seed) if engine.homer.pruning == "random" else None


def _leaf_nodes(plan: Plan) -> list[Node]:
    return [node for node in plan.nodes() if node.is_leaf]


@torch.inference_mode()
def build_leaf_states(
    engine: Any, parts: PromptParts, suffix_budget: int, *, progress: Progress | None = None
) -> LeafStates:
    """Run every leaf's prefix + context (no suffix) through the leaf layers and keep the result."""
    plan = plan_with_budget(engine, parts, suffix_budget)
    mp = engine.parts
    P = plan.prefix_len
    ids = torch.tensor(parts.prefix + parts.context, dtype=torch.long)
    leaves = _leaf_nodes(plan)
    total = sum(n.layer_end - n.layer_start for n in leaves)
    done = 0
    kv_out, hidden_out = [], []
    with engine.lock:
        for node, (start, end) in zip(leaves, plan.leaf_ranges(), strict=True):
            leaf_ids = torch.cat([ids[:P], ids[P + start : P + end]])
            n = leaf_ids.numel()
            hidden = compat.embed(mp, leaf_ids)
            pos_emb = compat.position_embeddings(mp, hidden, torch.arange(n))
            mask = compat.attention_mask(mp, n, 0, hidden.dtype, hidden.device)
            kv = []
            for index in range(node.layer_start, node.layer_end):
                hidden, layer_kv = compat.run_layer(mp, index, hidden, pos_emb, mask)
                assert layer_kv is not None
                kv.append(layer_kv)
                done += 1
                if progress is not None:
                    progress(done, total)
            kv_out.append(tuple(kv))
            hidden_out.append(hidden)
    return LeafStates(tuple(kv_out), tuple(hidden_out), P, len(parts.context), suffix_budget)


class _ReusePass(TreePass):
    """The engine's depth-first pass, with leaves rebuilt from cached question-independent states."""

    def __init__(self, engine: Any, plan: Plan, ids: torch.Tensor, leaves: LeafStates, progress: Progress | None):
        super().__init__(engine.parts, plan, ids, _bias_for(engine, plan, progress), _generator_for(engine), progress,
                         engine.spans_for(ids), engine.homer.reread_suffix,
                         engine.homer.merge_attention == "own-leaf")
        self.leaves = leaves
        self.leaf_index = {node.leaf_start: j for j, node in enumerate(_leaf_nodes(plan))}

    def leaf(self, node: Node) -> ChunkState:
        """Prefill the suffix on top of the cached leaf, then prune it with the question's query."""
        parts, plan = self.parts, self.plan
        j = self.leaf_index[node.leaf_start]
        cached_hidden = self.leaves.hidden[j]
        P, S = plan.prefix_len, plan.suffix_len
        last = node.layer_end - 1
        last_input: list[torch.Tensor] = []  # the question's input to the leaf's last layer (pruning's query)

        def after_layer(index: int, hidden_in: torch.Tensor) -> None:
            if index == last:
                last_input.append(hidden_in)
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total)

        hidden, kv, positions, pos_emb = _suffix_on_leaf(parts, plan, node, self.leaves, j,
                                                         self.ids[P + plan.context_len :], after_layer)
        (hidden_last,) = last_input
        positions = positions.to(parts.embed_device)
        full_hidden = torch.cat([cached_hidden, hidden.to(cached_hidden.device)], dim=1)
        start, end = plan.leaf_ranges()[node.leaf_start]
        origin = torch.cat([torch.arange(P), torch.arange(P + start, P + end),
                            torch.arange(P + plan.context_len, P + plan.context_len + S)])
        state = ChunkState(full_hidden, positions, kv, P, S, origin.to(parts.embed_device))
        self.note_live(state)
        return self.prune_node(state, node, hidden_last, pos_emb)


@torch.inference_mode()
def compress_from_leaves(
    engine: Any, parts: PromptParts, leaves: LeafStates, *, progress: Progress | None = None
) -> CompressedContext:
    """HOMER for ``parts`` (same prefix and document as ``leaves``), reusing the cached leaves.

    Raises:
        ValueError: the prompt's prefix/document do not match the leaves, or the suffix exceeds
            the budget the leaves were planned for.
    """
    plan = _plan_for_leaves(engine, parts, leaves)
    ids = torch.tensor(parts.ids, dtype=torch.long)
    start = time.perf_counter()
    with engine.lock:
        return _ReusePass(engine, plan, ids, leaves, progress).finish(start)


@torch.inference_mode()
def focus_from_leaves(engine: Any, parts: PromptParts, leaves: LeafStates) -> CompressedContext:
    """Focus with the leaf or lexical locator (``HomerConfig.focus_locator``) on cached leaves: the
    leaves ranked by :func:`relevance_from_leaves` (or BM25), then the engine's plain read of the best ones."""
    start = time.perf_counter()
    with engine.lock:
        plan, relevance = _rank_cached_leaves(engine, parts, leaves)
        return engine._focus(parts, plan, relevance, time.perf_counter() - start)


def _rank_cached_leaves(engine: Any, parts: PromptParts, leaves: LeafStates) -> tuple[Plan, torch.Tensor]:
    """The plan and the leaves' ranking ([N]) by the engine's leaf or lexical locator, from cached leaves."""
    if engine.homer.focus_locator == "lexical":
        plan = _plan_for_leaves(engine, parts, leaves)
        return plan, lexical_relevance(plan, parts.context, parts.suffix)
    return relevance_from_leaves(engine, parts, leaves)


@torch.inference_mode()
def hybrid_from_leaves(
    engine: Any, parts: PromptParts, leaves: LeafStates, *, progress: Progress | None = None
) -> CompressedContext:
    """The hybrid read (``HomerConfig.focus_keep_document``) on cached leaves: the tree from the
    leaves (:func:`compress_from_leaves` on ``hybrid.tree_engine``: no reread of a suffix that is
    dropped), the leaves ranked by the engine's locator (the leaf locator from the leaves too),
    then ``hybrid.read_leaves_after``. ``engine``'s chunk already is the hybrid's (``HomerModel``
    shrinks it), so the leaves are the hybrid's own. ``progress(done, total)`` follows the tree's
    layer passes, the bulk of the work."""
    from .hybrid import ANSWER_ROOM, read_leaves_after, tree_engine, tree_relevance

    start = time.perf_counter()
    tree_hm = tree_engine(engine, engine.chunk_len)
    with engine.lock:
        tree = compress_from_leaves(tree_hm, parts, leaves, progress=progress)
        if engine.homer.focus_locator == "tree":
            plan = _plan_for_leaves(engine, parts, leaves)
            relevance = tree_relevance(tree_hm, parts, plan, tree)
        else:
            plan, relevance = _rank_cached_leaves(engine, parts, leaves)
        out = read_leaves_after(engine.parts, parts, plan, tree, relevance, leaves=engine.homer.focus_leaves,
                                margin=engine.homer.focus_margin, answer_room=ANSWER_ROOM, window=engine.window)
    return replace(out, stats=replace(out.stats, seconds=time.perf_counter() - start))


@torch.inference_mode()
def relevance_from_leaves(engine: Any, parts: PromptParts, leaves: LeafStates) -> tuple[Plan, torch.Tensor]:
    """The plan and :func:`homer_llm.focus.leaf_relevance` ([N]) of ``parts``, from cached leaves.

    Per leaf the suffix is prefilled on top of the cached prefix + context states through the leaf
    layers, which is all ``leaf_relevance`` runs for a leaf (the cached tokens come before the
    suffix, so their states do not depend on it). Same checks as :func:`compress_from_leaves`.
    """
    from .focus import context_share, upper_leaf_layers

    plan = _plan_for_leaves(engine, parts, leaves)
    mp = engine.parts
    suffix_ids = torch.tensor(parts.suffix, dtype=torch.long)
    relevance = torch.zeros(plan.num_leaves)
    with engine.lock:
        for j, node in enumerate(_leaf_nodes(plan)):
            upper = upper_leaf_layers(node)
            inputs: dict[int, torch.Tensor] = {}

            def keep_input(index: int, hidden_in: torch.Tensor, upper: range = upper, inputs: dict = inputs) -> None:
                if index in upper:
                    inputs[index] = hidden_in

            _, kv, _, pos_emb = _suffix_on_leaf(mp, plan, node, leaves, j, suffix_ids, keep_input)
            past_len = int(leaves.hidden[j].shape[1])
            relevance[node.leaf_start] = sum(
                context_share(mp, index, inputs[index], pos_emb, kv[index][0], plan.prefix_len, past_len)
                for index in upper) / len(upper)
    return plan, relevance


def _plan_for_leaves(engine: Any, parts: PromptParts, leaves: LeafStates) -> Plan:
    """The plan ``leaves`` were built for, checked against ``parts`` (ValueError on a mismatch)."""
    if len(parts.prefix) != leaves.prefix_len or len(parts.context) != leaves.context_len:
        raise ValueError(
            f"leaf states are for P={leaves.prefix_len}, C={leaves.context_len}; "
            f"got P={len(parts.prefix)}, C={len(parts.context)}"
        )
    plan = plan_with_budget(engine, parts, leaves.suffix_budget)
    if plan.num_leaves != leaves.num_leaves:
        raise ValueError(f"plan has {plan.num_leaves} leaves, cached states {leaves.num_leaves}")
    return plan


def _suffix_on_leaf(parts: compat.ModelParts, plan: Plan, node: Node, leaves: LeafStates, j: int,
                    suffix_ids: torch.Tensor, after_layer) -> tuple[torch.Tensor, tuple[compat.KV, ...],
                                                                    torch.Tensor, compat.KV]:
    """Prefill the suffix ([S] ids) on top of cached leaf ``j`` (``node``) through the leaf's layers.

    ``after_layer(index, hidden_in)`` is called after each layer with the last suffix token's input
    to it ([1, 1, hidden]). Returns the suffix's output [1, S, hidden], per layer (K, V) of prefix +
    context + suffix, their position ids [P + c_j + S] and the suffix's cos/sin.
    """
    P, S = plan.prefix_len, plan.suffix_len
    past_len = int(leaves.hidden[j].shape[1])
    cache = compat.cache_from_kv(leaves.kv[j])
    hidden = compat.embed(parts, suffix_ids)
    suffix_pos = torch.arange(P + plan.nominal_leaf, P + plan.nominal_leaf + S)
    pos_emb = compat.position_embeddings(parts, hidden, suffix_pos)
    mask = compat.attention_mask(parts, S, past_len, hidden.dtype, hidden.device)
    for index in range(node.layer_start, node.layer_end):
        hidden_in = hidden[:, -1:]
        hidden, _ = compat.run_layer(parts, index, hidden, pos_emb, mask, past=cache)
        after_layer(index, hidden_in)
    positions = torch.cat([torch.arange(past_len), suffix_pos])
    return hidden, tuple(compat.kv_from_cache(cache)), positions, pos_emb


@torch.inference_mode()
def compress_with_budget(
    engine: Any, parts: PromptParts, suffix_budget: int, *, progress: Progress | None = None
) -> CompressedContext:
    """A fresh compression on the same plan "leaf" mode uses (the reference it must equal)."""
    from .engine import compress

    plan = plan_with_budget(engine, parts, suffix_budget)
    ids = torch.tensor(parts.ids, dtype=torch.long)
    with engine.lock:
        return compress(engine.parts, plan, ids, bias=_bias_for(engine, plan, progress),
                        random_generator=_generator_for(engine), progress=progress, spans=engine.spans_for(ids),
                        reread_suffix=engine.homer.reread_suffix, own_leaf=engine.homer.merge_attention == "own-leaf")
