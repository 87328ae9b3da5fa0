"""Strongroom's web app (built in issue 4)."""
