"""Make a passkey-retrieval document (Mohtashami & Jaggi, 2023 format) of about N tokens.

    python benchmarks/make_passkey_doc.py --tokens 32000 --seed 0 --out /tmp/passkey32k.txt

The document is an instruction line, then seeded filler sentences (written for this project, no
digits in them), with one passkey line buried at a chosen or random depth:

    The pass key is 12345. Remember it. 12345 is the pass key.

Ask it with: homer-llm ask --document /tmp/passkey32k.txt "What is the pass key?"
Tokens are counted with the default model's tokenizer (or --tokenizer PATH). Prints one JSON line
(path, passkey, depth, tokens); the same goes to PATH with a .json suffix.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HEADER = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there."
)
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."

_SUBJECTS = (
    "The old ferryman", "A quiet neighbour", "The baker on the corner", "Our cousin from the hills",
    "The night watchman", "A travelling musician", "The schoolteacher", "The harbour master",
    "A tired gardener", "The librarian", "A young carpenter", "The shepherd's daughter",
)
_VERBS = (
    "walked slowly along", "painted a picture of", "told a long story about", "kept looking at",
    "wrote a letter about", "sang softly near", "swept the path beside", "forgot the way to",
    "dreamed once more of", "counted the birds above", "planted flowers around", "rested for a while by",
)
_PLACES = (
    "the grey stone bridge", "the orchard behind the mill", "the harbour at dusk", "the narrow market street",
    "the chapel on the hill", "the frozen pond", "the edge of the pine forest", "the empty railway station",
    "the lighthouse", "the wheat fields", "the river bend", "the village well",
)
_TAILS = (
    "while the wind moved through the grass.", "and nobody said a word.", "as the clouds drifted east.",
    "before the bells rang for supper.", "and the afternoon felt very long.", "while a dog barked far away.",
    "as rain began to fall on the roofs.", "and the light turned golden.", "while smoke rose from the chimneys.",
    "and then went home again.",
)
_ASIDES = (
    "The grass was green and the sky was pale.", "Nothing much happened that day.",
    "The season was turning slowly.", "Somewhere a kettle was boiling.", "The road was dusty and quiet.",
    "It was an ordinary kind of morning.", "The market smelled of bread and apples.",
)


def filler_sentence(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return rng.choice(_ASIDES)
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_PLACES)} {rng.choice(_TAILS)}"


def make_document(tokenizer, tokens: int, seed: int, depth: float | None = None, header: bool = True) -> dict:
    """Build the document. depth in [0, 1]: where the passkey line goes (None: random from seed)."""
    if tokens < 100:
        raise ValueError(f"--tokens must be >= 100, got {tokens}")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"--depth must be in [0, 1], got {depth}")
    rng = random.Random(seed)
    key = rng.randint(10000, 99999)
    depth = rng.random() if depth is None else depth
    needle = NEEDLE.format(key=key)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    fixed = count(needle) + (count(HEADER) if header else 0)
    sentences: list[str] = []
    total = fixed
    while total < tokens:
        sentence = filler_sentence(rng)
        sentences.append(sentence)
        total += count(" " + sentence)
    index = round(depth * len(sentences))
    body = sentences[:index] + [needle] + sentences[index:]
    text = (HEADER + "\n\n" if header else "") + " ".join(body) + "\n"
    n_tokens = count(text)
    needle_token = count((HEADER + "\n\n" if header else "") + " ".join(body[:index]))
    return {"text": text, "passkey": str(key), "depth": index / max(len(sentences), 1), "tokens": n_tokens,
            "needle_token_offset": needle_token, "seed": seed}


def _load_tokenizer(path: str | None):
    from transformers import AutoTokenizer

    if path is None:
        from homer_llm.default_model import default_model_path

        path = str(default_model_path())
    return AutoTokenizer.from_pretrained(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32000, help="target length in tokens (default 32000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the passkey, the filler and the depth")
    parser.add_argument("--depth", type=float, default=None, help="passkey depth in [0, 1] (default: random)")
    parser.add_argument("--out", default="/tmp/passkey32k.txt", help="output text file")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the default model's)")
    parser.add_argument("--no-header", action="store_true", help="leave out the instruction line")
    args = parser.parse_args(argv)
    try:
        doc = make_document(_load_tokenizer(args.tokenizer), args.tokens, args.seed, args.depth, not args.no_header)
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out)
    out.write_text(doc.pop("text"), encoding="utf-8")
    info = {"path": str(out), **doc}
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
