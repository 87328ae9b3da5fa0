"""Small pieces shared by every package: no package-specific logic."""
