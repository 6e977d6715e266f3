"""Who chooses the agent's tools (a module without heavy imports, for the command line)."""

from typing import Literal

Mode = Literal["auto", "model", "router"]
MODES: tuple[str, ...] = ("auto", "model", "router")
"""auto: the model when it can call tools, else the router; model: the chat model; router: scripted."""
