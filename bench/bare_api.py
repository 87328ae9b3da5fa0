"""The ceiling for bench_api.py's POST cells: bench/bare_app.py's bare route, plus a bare JSON POST
under /api/v1 (so Apache treats it as the API: the CRS's JSON body processor inspects its body, only
application/json passes), served by the same gunicorn configuration behind the same Apache.
"""

from __future__ import annotations

import importlib

from flask import request

# bench/bare_app.py, by name (bench/ is on gunicorn's --pythonpath; not an installed package).
app = importlib.import_module("bare_app").app


@app.post("/api/v1/bare")
def bare_post() -> tuple[str, int, dict[str, str]]:
    request.get_data()  # read the body, as the API does
    return '{"ok":true}\n', 201, {"Content-Type": "application/json"}
