"""Two-factor login (client certificate, then password), server-side sessions, logout."""
