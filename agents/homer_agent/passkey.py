"""Passkey documents (Mohtashami & Jaggi, 2023) for the agent demo, the reuse benchmark and the cookbook.

    python -m homer_agent.passkey --tokens 32000 --out /tmp/passkey.txt [--key 71432] [--depth 0.5]
        [--door-code 5093] [--tokenizer MODEL_FOLDER]

Repeated filler with needles ("The pass key is 71432. Remember it. 71432 is the pass key.") at
chosen depths. Lengths are measured with the given tokenizer (the default model's when run as a
script), so "32000 tokens" means 32000 tokens of that model.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def passkey_needle(key: int | str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def door_code_needle(code: int | str) -> str:
    return f"The door code is {code}. Remember it. {code} is the door code."


def build_document(count_tokens: Callable[[str], int], n_tokens: int, needles: Sequence[tuple[float, str]]) -> str:
    """Filler with each needle inserted at its depth (0.0 = start, 1.0 = end), at a filler
    boundary: at most ``n_tokens`` tokens and less than one filler sentence short of it."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    for depth, _ in needles:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"needle depth must be in [0, 1], got {depth}")
    per = max(1.0, count_tokens(" ".join([FILLER] * 16)) / 16)
    repeats = max(1, round((n_tokens - sum(count_tokens(t) for _, t in needles)) / per))
    for _ in range(4):  # correct the estimate with the real count (tokens merge across joins)
        text = _assemble(repeats, needles)
        deficit = n_tokens - count_tokens(text)
        if 0 <= deficit < per:
            break
        repeats = max(1, repeats + int(deficit // per) + (1 if deficit > 0 else 0))
    return text


def _assemble(repeats: int, needles: Sequence[tuple[float, str]]) -> str:
    pieces = [FILLER] * repeats
    for depth, text in sorted(needles, key=lambda n: n[0], reverse=True):
        pieces.insert(round(depth * repeats), text)
    return " ".join(pieces)


def random_key(rng: random.Random) -> int:
    return rng.randint(10000, 99999)


def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m homer_agent.passkey", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=32000)
    p.add_argument("--out", required=True)
    p.add_argument("--key", type=int, default=None)
    p.add_argument("--depth", type=float, default=0.5)
    p.add_argument("--door-code", type=int, default=None, help="also hide a door code (at depth 1 - depth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, metavar="FOLDER",
                   help="model folder whose tokenizer measures the length (default: the embedded default model's)")
    args = p.parse_args(argv)
    if args.tokens < 1:
        p.error(f"--tokens must be positive, got {args.tokens}")
    if not 0.0 <= args.depth <= 1.0:
        p.error(f"--depth must be in [0, 1], got {args.depth}")
    from transformers import AutoTokenizer

    from homer_llm.default_model import default_model_path

    tok = AutoTokenizer.from_pretrained(args.tokenizer or str(default_model_path()))

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    rng = random.Random(args.seed)
    key = args.key if args.key is not None else random_key(rng)
    needles = [(args.depth, passkey_needle(key))]
    if args.door_code is not None:
        needles.append((1.0 - args.depth, door_code_needle(args.door_code)))
    text = build_document(count, args.tokens, needles)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"wrote {args.out}: {count(text)} tokens, pass key {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
