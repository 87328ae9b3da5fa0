"""`deploy/strongroom-install`: one idempotent command from a bare Debian 12 to a Strongroom server
(docs/deploy.md, "Installing a server from zero")."""
