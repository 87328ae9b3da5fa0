"""The review format as a real Apache writes it: mod_ssl with a required client certificate, the
documented `strongroom_review` LogFormat (docs/monitoring.md), real requests with two employees'
certificates; the access check counts them per certificate and the report names them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops.checks.access import daily_report
from ops.runner import run_pass
from ops.settings import Settings
from ops.state import StateDir
from tests.fixtures.pki import TestCA
from tests.ops.conftest import queued
from tests.ops.rsyslog_harness import wait_for
from tests.support import free_port, need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]
MODULES = "/usr/lib/apache2/modules"
REVIEW_FORMAT = next(
    ln.strip()
    for ln in (ROOT / "docs" / "monitoring.md").read_text().splitlines()
    if ln.startswith('LogFormat "') and ln.rstrip().endswith("strongroom_review")
)
# The format logs the method through STRONGROOM_METHOD (a known name or OTHER, never the client's own
# token): the shipped site's lines that set it come along.
METHOD_LINES = "\n".join(
    ln.strip()
    for ln in (ROOT / "apache" / "strongroom-site.conf").read_text().splitlines()
    if ln.startswith("SetEnvIf Request_Method")
)


@pytest.fixture
def base() -> Iterator[Path]:
    # Apache's children run as www-data: the directory must be traversable.
    path = Path(tempfile.mkdtemp(prefix="ops-apache-"))
    os.chmod(path, 0o711)  # noqa: S103 - traversable, not listable
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_real_apache_lines_are_counted_per_certificate(
    base: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    need_root()
    apache = need_binary("apache2")
    curl = need_binary("curl")
    ca = TestCA("ops review test CA")
    (base / "ca.pem").write_bytes(ca.pem)
    server_cert, server_key = ca.issue("localhost", server=True).write(base, "server")
    alice = ca.issue("alice")
    bob = ca.issue("bob")
    alice_files = alice.write(base, "alice")
    bob_files = bob.write(base, "bob")
    port = free_port()
    review = base / "review.log"
    (base / "docroot").mkdir()
    (base / "docroot" / "index.html").write_text("ok\n")
    conf = base / "httpd.conf"
    conf.write_text(
        f"""ServerRoot {base}
ServerName localhost
PidFile {base}/httpd.pid
DefaultRuntimeDir {base}
Mutex file:{base}
LoadModule mpm_event_module {MODULES}/mod_mpm_event.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
LoadModule socache_shmcb_module {MODULES}/mod_socache_shmcb.so
LoadModule ssl_module {MODULES}/mod_ssl.so
LoadModule setenvif_module {MODULES}/mod_setenvif.so
User www-data
Group www-data
Listen 127.0.0.1:{port}
ErrorLog {base}/error.log
SSLSessionCache shmcb:{base}/ssl_scache(512000)
StartServers 1
MinSpareThreads 1
MaxSpareThreads 4
ThreadsPerChild 4
{REVIEW_FORMAT}
{METHOD_LINES}
<VirtualHost 127.0.0.1:{port}>
    DocumentRoot {base}/docroot
    SSLEngine on
    SSLCertificateFile {server_cert}
    SSLCertificateKeyFile {server_key}
    SSLCACertificateFile {base}/ca.pem
    SSLVerifyClient require
    CustomLog {review} strongroom_review
    <Directory {base}/docroot>
        Require all granted
    </Directory>
</VirtualHost>
"""
    )
    check = subprocess.run([apache, "-t", "-f", str(conf)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    with (base / "apache.out").open("wb") as out:
        proc = subprocess.Popen([apache, "-f", str(conf), "-DFOREGROUND"], stdout=out, stderr=out)
    try:
        wait_for(lambda: (base / "httpd.pid").exists(), what="apache")
        review.touch()
        s = make_settings(access_log=str(review), access_per_cert=2, access_total=100)
        run_pass(s, state=StateDir(s.state_dir), engine=engine, now=datetime.now(UTC), only=("access",))

        def get(files: tuple[Path, Path], path: str = "/") -> None:
            subprocess.run(
                [
                    curl,
                    "-sS",
                    "-o",
                    "/dev/null",
                    "--cacert",
                    str(base / "ca.pem"),
                    "--cert",
                    str(files[0]),
                    "--key",
                    str(files[1]),
                    f"https://localhost:{port}{path}?q=4111111111111111",
                ],
                check=True,
                timeout=30,
            )

        for _ in range(3):
            get(alice_files)
        get(bob_files, "/missing")
        wait_for(lambda: review.read_text().count("\n") >= 4, what="the review log")
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    text = review.read_text()
    assert "4111111111111111" not in text  # no query string: no customer data in the review
    assert "/missing" not in text
    run_pass(s, state=StateDir(s.state_dir), engine=engine, now=datetime.now(UTC), only=("access",))
    alice_who = f"{alice.cert.serial_number:X} alice"
    assert queued(engine) == [("ops.access_threshold", alice_who, "requests=3 threshold=2")]
    day = text.split("T", 1)[0]
    report = daily_report(StateDir(s.state_dir).load("check-access"), day)
    assert f"       3  {alice_who}" in report
    assert f"       1  {bob.cert.serial_number:X} bob" in report
