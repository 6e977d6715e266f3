"""Set-up shared by the passkey probes: one model and the very samples ``homer-llm eval`` draws.

    ap = sample_parser(__doc__, length="64k", samples="0", depths="random")
    hm, model, samples = load_samples(ap.parse_args())   # samples: [(index, QASample)]
"""

from __future__ import annotations

import argparse

import torch

from homer_llm import HomerConfig, HomerModel
from homer_llm.evaluation.cli import parse_depths, parse_lengths
from homer_llm.evaluation.harness import EvalSettings, SampleBank
from homer_llm.evaluation.methods import EvalModel
from homer_llm.evaluation.tasks import QASample


def int_list(text: str) -> list[int]:
    """'0,6,8' -> [0, 6, 8]."""
    return [int(a) for a in text.split(",")]


def sample_parser(doc: str | None, *, length: str, samples: str, depths: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first paragraph, with the sample arguments already added."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--length", default=length)
    ap.add_argument("--samples", default=samples, help="comma-separated sample indices")
    ap.add_argument("--depths", default=depths, help="the eval run's --depths")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    return ap


def load_samples(args: argparse.Namespace, homer: HomerConfig | None = None,
                 ) -> tuple[HomerModel, EvalModel, list[tuple[int, QASample]]]:
    """The default model (with ``homer``) and the chosen passkey samples of the eval's generator."""
    torch.set_num_threads(args.threads)
    hm = HomerModel.load(None, homer=homer)
    (length,) = parse_lengths(args.length, hm.window)
    indices = int_list(args.samples)
    model = EvalModel(hm)
    bank = SampleBank(model, EvalSettings(tasks=("passkey",), methods=("homer",), lengths=(length,),
                                          samples=max(indices) + 1, seed=args.seed,
                                          depths=parse_depths(args.depths)))
    return hm, model, [(index, bank.get("passkey", length, index)) for index in indices]
