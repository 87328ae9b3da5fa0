"""Reference clients of Strongroom's APIs (standard library only: no part of the web app is imported)."""
