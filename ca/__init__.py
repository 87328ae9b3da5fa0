"""Strongroom's certificate authority tool (built in issue 3)."""
