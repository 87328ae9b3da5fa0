"""Server hardening shipped as tested configuration: see docs/hardening.md.

Each part renders or checks one piece of the host's setup; nothing here runs in the web app or keyd.
"""
