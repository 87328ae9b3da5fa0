"""keyd: the only process that ever holds Strongroom's data key.

The web app reaches it through `keyd.client` (and the exceptions in `keyd.errors`), nothing else.
"""
