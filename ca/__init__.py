"""Strongroom's certificate authority tool."""
