"""The host firewall, generated from one file of addresses (docs/hardening.md, "Firewall").

`load_config(path)` parses that file strictly; `render_nft`, `render_iptables` turn it into rules.
"""

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
