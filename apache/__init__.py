"""Strongroom's Apache front door: the production vhost (strongroom-site.conf), its ModSecurity
settings, the module list, and `apache.private`, which runs the same vhost as a private instance
(tests, `make run`)."""
