"""Server hardening shipped as tested configuration (issue 8): see docs/hardening.md.

Each part renders or checks one piece of the host's setup; nothing here runs in the web app or keyd.
"""
