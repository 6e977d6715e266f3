"""The graph factory that ``langgraph.json`` names, for ``langgraph dev`` / LangGraph servers.

    langgraph dev            # from the repository root (langgraph.json: "homer_agent")

The server awaits ``make_graph(config)`` for each run; the chat model, its document cache and the
registry are built once per process and shared. The server brings its own checkpointer, so the
graph is compiled without one. Settings come from the environment:

- ``HOMER_AGENT_MODEL``: model folder (default: the embedded SmolLM2-135M-Instruct);
- ``HOMER_AGENT_MODE``: "auto" (default), "model" or "router";
- ``HOMER_AGENT_ALLOW_ROOTS``: folders documents may be read from, separated by ``os.pathsep``
  (default: the server's working directory and the system temp folder);
- ``HOMER_AGENT_MAX_DOCUMENT_BYTES``: the size cap (default 4 MiB);
- ``HOMER_AGENT_CACHE_DIR``: the document cache's disk folder (default: none);
- ``HOMER_AGENT_CHUNK_LEN``, ``HOMER_AGENT_DTYPE``, ``HOMER_AGENT_MAX_TOKENS``: HomerLLM settings.
"""

# no ``from __future__ import annotations``: the server may load this file by path without
# registering it in sys.modules, and dataclasses then cannot resolve string annotations
import asyncio
import os
import threading
from dataclasses import dataclass
from typing import Any

from homer_agent.access import DocumentAccess
from homer_agent.graph import build_agent, resolve_mode
from homer_agent.registry import DocumentRegistry


@dataclass(frozen=True)
class ServerSettings:
    """The factory's settings (read from the environment by ``from_env``)."""

    model: str | None = None
    mode: str = "auto"
    roots: tuple[str, ...] = ()
    max_document_bytes: int | None = None
    cache_dir: str | None = None
    chunk_len: int | None = None
    dtype: str | None = None
    max_tokens: int = 128

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ServerSettings":
        """Settings from ``env`` (default ``os.environ``).

        Raises:
            ValueError: a number that does not parse (the message names the variable).
        """
        env = dict(os.environ if env is None else env)

        def number(name: str) -> int | None:
            raw = env.get(name, "").strip()
            if not raw:
                return None
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {raw!r}") from None

        roots = tuple(r for r in env.get("HOMER_AGENT_ALLOW_ROOTS", "").split(os.pathsep) if r)
        return cls(model=env.get("HOMER_AGENT_MODEL") or None, mode=env.get("HOMER_AGENT_MODE") or "auto",
                   roots=roots, max_document_bytes=number("HOMER_AGENT_MAX_DOCUMENT_BYTES"),
                   cache_dir=env.get("HOMER_AGENT_CACHE_DIR") or None, chunk_len=number("HOMER_AGENT_CHUNK_LEN"),
                   dtype=env.get("HOMER_AGENT_DTYPE") or None,
                   max_tokens=number("HOMER_AGENT_MAX_TOKENS") or 128)


_shared: dict[ServerSettings, tuple[Any, DocumentRegistry, str]] = {}
_lock = threading.Lock()


def _components(settings: ServerSettings) -> tuple[Any, DocumentRegistry, str]:
    with _lock:
        if settings not in _shared:
            from langchain_homer import HomerLLM

            from homer_llm.doc_cache import DocumentCache

            cache = DocumentCache(disk_dir=settings.cache_dir)
            llm = HomerLLM(model=settings.model, dtype=settings.dtype, chunk_len=settings.chunk_len,
                           max_tokens=settings.max_tokens, temperature=0.0, document_cache=cache)
            access = DocumentAccess.from_options(settings.roots or None, settings.max_document_bytes)
            _shared[settings] = (llm, DocumentRegistry(access), resolve_mode(settings.mode, llm))
        return _shared[settings]


def build_graph() -> Any:
    """The document agent for the current environment's settings (blocking: may load the model)."""
    llm, registry, mode = _components(ServerSettings.from_env())
    return build_agent(llm, registry, mode=mode, checkpointer=False)


async def make_graph(config: Any = None) -> Any:
    """The graph factory ``langgraph.json`` names (``config``: the run's RunnableConfig, unused).

    Async, with the blocking work (reading settings and folders, loading the model on the first
    call) in a worker thread, because the server calls it on its event loop for every run.
    """
    return await asyncio.to_thread(build_graph)
