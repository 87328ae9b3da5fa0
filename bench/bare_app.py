"""The ceiling for bench_production_path.py: a bare Flask route, served by the same gunicorn
configuration (webapp/gunicorn_conf.py, proxy mode) behind the same Apache as the real app.

Whatever this answers per second is what Apache (TLS with a client certificate, the CRL, ModSecurity
with the CRS), the Unix-socket proxy hop, gunicorn and Flask's dispatch cost together: no page of
the app can be faster.
"""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)


@app.get("/")
def bare() -> tuple[str, int, dict[str, str]]:
    return "ok\n", 200, {"Content-Type": "text/plain; charset=utf-8"}
