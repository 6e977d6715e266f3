"""Property tests of the HOMER plan over many prompt and model shapes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homer_llm.schedule import Node, leaf_sizes, make_plan


def _paths(node: Node, path=()):
    path = (*path, node)
    if node.is_leaf:
        yield path
    else:
        yield from _paths(node.left, path)
        yield from _paths(node.right, path)


shapes = st.tuples(
    st.integers(0, 40),  # P
    st.integers(0, 200_000),  # C
    st.integers(1, 40),  # S
    st.sampled_from([128, 512, 2048, 4096]),  # M
    st.integers(8, 48),  # L
    st.one_of(st.none(), st.integers(0, 20)),  # W
)


@settings(max_examples=400, deadline=None)
@given(shapes)
def test_plan_properties(shape):
    P, C, S, M, L, W = shape
    try:
        plan = make_plan(P, C, S, chunk_len=M, cache_len=M, num_layers=L, warmup_layers=W)
    except ValueError:
        E = M - P - S
        n0 = max(1, math.ceil(C / max(E, 1)))
        too_tall = math.ceil(math.log2(n0)) + 1 > L if n0 > 1 else False
        assert E < 4 or too_tall
        return
    E = M - P - S
    # leaves: every context token in exactly one leaf, sizes within one of each other
    assert sum(plan.leaf_sizes) == C
    assert max(plan.leaf_sizes) - min(plan.leaf_sizes) <= 1
    assert plan.num_leaves == 2**plan.height
    assert all(P + size + S <= M for size in plan.leaf_sizes)
    assert P + plan.nominal_leaf + S <= M  # every position id stays inside the chunk
    # along every root-to-leaf path the layer ranges partition [0, L)
    for path in _paths(plan.root):
        ranges = sorted((n.layer_start, n.layer_end) for n in path)
        assert ranges[0][0] == 0 and ranges[-1][1] == L
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:], strict=False))
        assert all(a[0] < a[1] for a in ranges)
    for node in plan.nodes():
        assert 0 <= node.keep_ctx <= node.natural_ctx
        if not node.is_leaf:
            # the merged pair fits one forward pass of at most M tokens
            assert P + node.left.keep_ctx + node.right.keep_ctx + S <= M
            assert node.natural_ctx == node.left.natural_ctx + node.right.natural_ctx
    assert plan.final_len == P + min(C, M - P - S) + S
    assert plan.final_len <= M
    # post-order: children before parents, root last
    order = plan.nodes()
    assert order[-1] is plan.root and len(order) == 2 * plan.num_leaves - 1
    if plan.height > 0:
        assert plan.warmup_layers <= (W if W is not None else round(12 * L / 32))
    assert E >= 4


def test_paper_example_7b_64k():
    """HOMER.md section 5: 32 layers, 64k input -> 64 leaves, Lc=2, R=6; leaves run layers 0-19."""
    plan = make_plan(10, 65536 - 20, 10, chunk_len=2048, cache_len=2048, num_layers=32, warmup_layers=12)
    assert (plan.num_leaves, plan.height, plan.layers_per_level, plan.leftover_layers) == (64, 6, 2, 6)
    leaf = plan.nodes()[0]
    assert (leaf.layer_start, leaf.layer_end) == (0, 20)
    assert (plan.root.layer_start, plan.root.layer_end) == (30, 32)


def test_short_sibling_lets_left_keep_more():
    # E = 101, tau = 50; leaves of 51, 51, 51, 50 tokens: the last right sibling (50) is already
    # at most tau, so its left sibling keeps 51 and the pair fills the chunk exactly.
    plan = make_plan(2, 203, 2, chunk_len=105, cache_len=105, num_layers=12, warmup_layers=4)
    assert plan.leaf_sizes == (51, 51, 51, 50)
    pair = plan.root.right
    assert (pair.left.keep_ctx, pair.right.keep_ctx) == (51, 50)
    first = plan.root.left
    assert (first.left.keep_ctx, first.right.keep_ctx) == (51, 50)  # right cut to tau, left fills E
    assert plan.root.left.keep_ctx + plan.root.right.keep_ctx == 101


def test_leaf_sizes_even():
    assert leaf_sizes(10, 4) == (3, 3, 2, 2)
    assert leaf_sizes(8, 4) == (2, 2, 2, 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prefix_len=60, context_len=10, suffix_len=66), "leave"),
        (dict(prefix_len=2, context_len=10, suffix_len=0), "S >= 1"),
        (dict(prefix_len=2, context_len=10**9, suffix_len=2), "tree of height"),
    ],
)
def test_plan_refusals(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_plan(**kwargs, chunk_len=128, cache_len=128, num_layers=6)
