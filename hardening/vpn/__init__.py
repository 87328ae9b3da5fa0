"""The WireGuard VPN (wg0) that the "vpn" firewall variant puts in front of Apache (docs/hardening.md)."""

from hardening.vpn.render import render_client, render_server

__all__ = ["render_client", "render_server"]
