"""Work and memory of a HOMER plan, computed from token counts alone (no model, no tensors).

These predict what the engine will do at lengths no machine here can run (a 7B model at 1M
tokens), and are checked against the engine's own accounting on small models in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schedule import Node, Plan


@dataclass(frozen=True)
class PlanCost:
    """What a plan asks of the engine, replayed from token counts.

    Attributes:
        length: P + C + S.
        height, leaves, nodes: tree shape.
        layer_calls: decoder-layer calls (each a fixed number of kernel launches).
        prunes: nodes that prune (each does one host sync in engine.scores today).
        token_layers: tokens x layers run (a dense prefill runs length x layers).
        work_fraction: token_layers / (length x layers).
        kv_peak_bytes: the engine's CompressionStats.peak_kv_bytes (see replay).
    """

    length: int
    height: int
    leaves: int
    nodes: int
    layer_calls: int
    prunes: int
    token_layers: int
    work_fraction: float
    kv_peak_bytes: int


def plan_cost(plan: Plan, bytes_per_token_layer: int = 0) -> PlanCost:
    """Replay engine.TreePass over ``plan`` with token counts instead of tensors.

    Depth-first: a finished (pruned) left sibling waits while its right sibling is computed. After
    a node's layers the live K/V is the node's cache (its tokens x every layer from 0 to the node's
    last) plus every waiting sibling's; the node then prunes to ``keep_ctx`` context tokens if it
    holds more. Merging two children of n_l and n_r tokens gives n_l + n_r - P - S tokens.

    Args:
        bytes_per_token_layer: K and V bytes of one token in one layer (2 x n_kv x d x element size).
    """
    P, S = plan.prefix_len, plan.suffix_len
    waiting: list[int] = []
    totals = {"peak": 0, "token_layers": 0, "prunes": 0, "layer_calls": 0, "nodes": 0}

    def run(node: Node) -> int:
        if node.left is None or node.right is None:
            n = P + node.natural_ctx + S
        else:
            n_left = run(node.left)
            waiting.append(n_left * node.left.layer_end * bytes_per_token_layer)
            n_right = run(node.right)
            waiting.pop()
            n = n_left + n_right - P - S
        layers = node.layer_end - node.layer_start
        totals["nodes"] += 1
        totals["layer_calls"] += layers
        totals["token_layers"] += n * layers
        totals["peak"] = max(totals["peak"], n * node.layer_end * bytes_per_token_layer + sum(waiting))
        if node.keep_ctx >= n - P - S:
            return n
        totals["prunes"] += 1
        return P + node.keep_ctx + S

    run(plan.root)
    length = P + plan.context_len + S
    return PlanCost(
        length=length, height=plan.height, leaves=plan.num_leaves, nodes=totals["nodes"],
        layer_calls=totals["layer_calls"], prunes=totals["prunes"], token_layers=totals["token_layers"],
        work_fraction=totals["token_layers"] / (length * plan.num_layers), kv_peak_bytes=totals["peak"],
    )
