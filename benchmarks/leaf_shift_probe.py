"""Probe: does a passkey answer depend on where HOMER's leaf boundaries fall around the needle?

HOMER splits the context into power-of-two leaves of equal size, so the needle of a sample at
depth 25% or 50% lies on a leaf boundary. This script reruns chosen samples of ``homer-llm eval``
(same generator and seed; ``--depths`` as the eval run used them, by default the cycle of
``benchmarks/eval_default_cpu.sh``, so sample 6 here is sample 6 there) with the boundary nearest
the key moved by each ``--shifts`` value (tokens; positive moves it right, putting the needle at
the end of the left leaf; negative moves it left, so the needle starts that many tokens into the
right leaf). A shift that would overfill a leaf (more context tokens than a chunk holds) or empty
one is refused, so the tree shape is unchanged.

    .venv/bin/python benchmarks/leaf_shift_probe.py --length 16k --samples 6,11 --shifts 0,-64,64,-512,512

Prints one line per (sample, shift): the answer, the expected key and seconds.
"""

from __future__ import annotations

import time
from unittest import mock

from probe_samples import int_list, load_samples, sample_parser

import homer_llm.schedule as schedule
from homer_llm.evaluation.methods import build_parts


def shifted_sizes(sizes: tuple[int, ...], key_at: int, shift: int, capacity: int) -> tuple[int, ...]:
    """Move the inner leaf boundary nearest token ``key_at`` by ``shift`` tokens.

    ``capacity``: the most context tokens a leaf may hold (chunk_len - prefix - suffix).
    """
    if shift == 0 or len(sizes) < 2:
        return sizes
    bounds = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
    i = min(range(len(bounds)), key=lambda j: abs(bounds[j] - key_at))
    out = list(sizes)
    out[i] += shift
    out[i + 1] -= shift
    if min(out) < 1 or max(out) > capacity:
        raise ValueError(f"shift {shift} leaves a leaf empty or over {capacity} tokens (sizes {sizes})")
    return tuple(out)


def main() -> None:
    ap = sample_parser(__doc__, length="16k", samples="6", depths="50,25,75,0,100")
    ap.add_argument("--shifts", default="0,-64,64", help="comma-separated boundary shifts in tokens")
    args = ap.parse_args()
    hm, model, samples = load_samples(args)
    shifts = int_list(args.shifts)
    even = schedule.leaf_sizes
    for index, sample in samples:
        parts = build_parts(hm.tokenizer, sample)
        ctx = list(parts.context)
        key = hm.tokenizer(sample.expected[0], add_special_tokens=False)["input_ids"]
        key_at = next((i for i in range(len(ctx)) if ctx[i:i + len(key)] == key), None)
        if key_at is None:
            raise ValueError(f"sample {index}: the key {sample.expected[0]!r} does not tokenize alike in context")
        plan = hm.plan(parts)
        capacity = plan.chunk_len - plan.prefix_len - plan.suffix_len
        print(f"sample {index} (depth {sample.depth:.0%}): key token at {key_at}; "
              f"leaves {plan.leaf_ranges()}", flush=True)
        for shift in shifts:
            with mock.patch.object(schedule, "leaf_sizes",
                                   lambda c, n, s=shift, k=key_at, e=capacity: shifted_sizes(even(c, n), k, s, e)):
                start = time.perf_counter()
                out = hm.generate(hm.compress(parts), model.generation_config(sample))
            print(f"  shift {shift:+d}: {out.text!r} (key {sample.expected[0]}, "
                  f"{time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
