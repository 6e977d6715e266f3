"""langgraph.json and the graph factory it names (what ``langgraph dev`` loads)."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
from pathlib import Path

import pytest

pytest.importorskip("langgraph")
langchain_homer = pytest.importorskip("langchain_homer")

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "langgraph.json"


def test_langgraph_json_names_a_graph_factory_in_the_package():
    config = json.loads(CONFIG.read_text())
    assert config["dependencies"] == ["."]
    (name, target), = config["graphs"].items()
    assert name == "homer_agent"
    file, attr = target.split(":")
    path = (REPO / file).resolve()
    assert path == REPO / "agents" / "homer_agent" / "server.py" and path.is_file()
    spec = importlib.util.spec_from_file_location("lg_server_probe", path)  # loaded by path, as the server does
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert inspect.iscoroutinefunction(getattr(module, attr))  # built off the server's event loop


def test_langgraph_cli_accepts_the_config():
    config_mod = pytest.importorskip("langgraph_cli.config", reason="langgraph-cli is not installed")
    validated = config_mod.validate_config(json.loads(CONFIG.read_text()))
    assert "homer_agent" in validated["graphs"]


def test_make_graph_builds_the_agent_once_per_settings(monkeypatch, tmp_path):
    from homer_agent import server
    from tiny import tiny_engine

    engine = tiny_engine(layers=2, name="tiny-server")
    built: list[dict] = []
    real = langchain_homer.HomerLLM

    def fake(**kwargs):
        built.append(dict(kwargs))
        for key in ("model", "dtype", "chunk_len"):
            kwargs.pop(key)
        return real(engine=engine, **kwargs)

    monkeypatch.setattr(langchain_homer, "HomerLLM", fake)
    monkeypatch.setattr(server, "_shared", {})
    monkeypatch.setenv("HOMER_AGENT_ALLOW_ROOTS", str(tmp_path))
    monkeypatch.setenv("HOMER_AGENT_MAX_DOCUMENT_BYTES", "5000")
    monkeypatch.setenv("HOMER_AGENT_CHUNK_LEN", "64")
    first = asyncio.run(server.make_graph({}))  # as the server calls it
    second = server.build_graph()
    assert len(built) == 1 and built[0]["chunk_len"] == 64  # one model per process
    assert "router" in first.get_graph().nodes  # auto: the tiny template renders no tools
    assert first.checkpointer is None and second.checkpointer is None  # the server brings its own
    llm, registry, mode = server._shared[server.ServerSettings.from_env()]
    assert registry.access.roots == (tmp_path.resolve(),) and registry.access.max_bytes == 5000

    monkeypatch.setenv("HOMER_AGENT_MAX_DOCUMENT_BYTES", "lots")
    with pytest.raises(ValueError, match="HOMER_AGENT_MAX_DOCUMENT_BYTES must be an integer"):
        server.build_graph()
