"""Encrypted, signed, off-site backups of Strongroom (`python -m backup`, docs/backup.md)."""
