"""Protocol runners by name: each is ``run(cfg: dict, tracker: Tracker) -> dict``."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from fluxbench.errors import ConfigError

PROTOCOLS = {
    "conventional": "fluxbench.protocols.conventional",
    "mtil": "fluxbench.protocols.mtil",
    "online_tta": "fluxbench.protocols.online_tta",
    "preference": "fluxbench.protocols.preference",
    "two_phase": "fluxbench.protocols.two_phase",
}


def get_protocol(name: str) -> Callable[..., dict[str, Any]]:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return import_module(PROTOCOLS[name]).run
