"""The host firewall, generated from one file of addresses (docs/hardening.md, "Firewall").

`load_config(path)` parses that file strictly; `render_nft`, `render_iptables` turn it into rules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hardening.firewall.config import (
        ConnectionLimits,
        FirewallConfigError,
        NetworkConfig,
        VpnConfig,
        VpnPeer,
        load_config,
        parse_config,
    )
    from hardening.firewall.render import Variant, render_iptables, render_nft

# Loaded on first use (PEP 562), so that `hardening.firewall.addresses` stays importable by the
# installer's system python3, which has no pydantic (config.py's models need it).
_HOME = dict.fromkeys(
    (
        "ConnectionLimits",
        "FirewallConfigError",
        "NetworkConfig",
        "VpnConfig",
        "VpnPeer",
        "load_config",
        "parse_config",
    ),
    "config",
)
_HOME.update(dict.fromkeys(("Variant", "render_iptables", "render_nft"), "render"))


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


__all__ = [
    "ConnectionLimits",
    "FirewallConfigError",
    "NetworkConfig",
    "Variant",
    "VpnConfig",
    "VpnPeer",
    "load_config",
    "parse_config",
    "render_iptables",
    "render_nft",
]
