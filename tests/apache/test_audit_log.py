"""ModSecurity's audit log keeps only what is worth reading (1.5 GB in ~52,000 requests,
every request to https://ADDRESS/ logged by CRS 920350 with the whole matched-rule list)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from apache.private import HERE
from tests.apache.stack import Stack
from tests.apache.test_logs_no_pan import raw_request
from tests.support import need_binary


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def test_requests_to_an_ip_address_add_nothing_to_the_audit_or_error_log(stack: Stack) -> None:
    audit, errors = stack.modsec_audit_log, stack.apache_error_log
    before = (_size(audit), _size(errors))
    for _ in range(50):
        conn = stack.connection("alice")
        try:
            conn.request("GET", "/login", headers={"Host": "127.0.0.1"})
            assert conn.getresponse().status == 200
        finally:
            conn.close()
    time.sleep(0.5)
    assert (_size(audit), _size(errors)) == before


def test_a_refused_request_leaves_one_small_record_without_the_rule_list(stack: Stack) -> None:
    audit = stack.modsec_audit_log
    before = _size(audit)
    assert (
        raw_request(stack, "GET", f"/login?q={quote('<script>alert(1)</script>')}", {}, None)[9:12] == b"403"
    )
    deadline = time.monotonic() + 5
    while not audit.read_bytes()[before:].rstrip().endswith(b"-Z--") and time.monotonic() < deadline:
        time.sleep(0.05)
    record = audit.read_bytes()[before:]
    assert set(re.findall(rb"^--[0-9a-f]{8}-([A-Z])--$", record, re.M)) <= {b"A", b"E", b"H", b"Z"}
    assert record.count(b"-A--") == 1
    assert len(record) < 8192


def test_the_logrotate_file_parses() -> None:
    logrotate = need_binary("logrotate")
    done = subprocess.run(
        [logrotate, "--debug", "--state", "/dev/null", str(HERE / "strongroom-logrotate")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    assert shutil.which(logrotate)
