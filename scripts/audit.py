"""No locked release has a known advisory: the real pip-audit, against the vendored advisory data.

    python scripts/audit.py [LOCK ...]   audit these locks (default: every lock of scripts/lock.py);
                                         `make audit`. Exit 0: clean; 1: an advisory, or a lock unaudited

pip-audit asks an OSV query API about every pinned release (`POST /v1/query`, one package and version
per request). Its usual sources, api.osv.dev and PyPI's per-release JSON, cannot be reached from every
network this project is built on, so this script serves that API itself, on loopback, from the PyPA
advisory database vendored in scripts/advisories/ (`scripts/advisories.py refresh`), and points
pip-audit at it. The answers are only as new as that snapshot: its age is printed with every audit.
docs/supply-chain.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run by path: scripts.lock is found from the checkout

from scripts.lock import LOCKS as _COMPILED  # noqa: E402

DATA = ROOT / "scripts" / "advisories"
SOURCE = DATA / "SOURCE"
# Every lock of the project, as scripts/lock.py compiles them.
LOCKS = tuple(lock for _, lock, _ in _COMPILED)
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")

Record = dict[str, Any]  # one OSV record, as the database has it


class AuditError(Exception):
    """The audit could not run or could not be read: never a pass."""


def canonical(name: str) -> str:
    """A distribution's name as PyPI compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    """Canonical name -> pinned version, for every requirement of a lock."""
    found = {}
    for line in lock.read_text().splitlines():
        pinned = _PIN.match(line)
        if pinned:
            found[canonical(pinned.group(1))] = pinned.group(2)
    return found


def source() -> dict[str, str]:
    """The SOURCE file of the vendored data: which database, commit, date and license."""
    fields = {}
    for line in SOURCE.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


def snapshot_age(now: datetime | None = None) -> str:
    """One line naming the snapshot and its age."""
    fields = source()
    taken = datetime.fromisoformat(fields["date"])
    days = ((now or datetime.now(UTC)) - taken).days
    return (
        f"advisory data: {fields['database']} at {fields['commit'][:12]} of {taken.date()}, {days} days old: "
        "only advisories published by then are caught (refresh: scripts/advisories.py refresh)"
    )


def load(data: Path = DATA) -> dict[str, list[Record]]:
    """Canonical package name -> its OSV records, from the vendored files (one per package)."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(data.glob("*.json"))}


def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion as e:
        # An advisory that cannot be evaluated must not read as "not affected".
        raise AuditError(f"advisory range with a version PEP 440 cannot order: {text!r}") from e


def _in_range(events: Sequence[Mapping[str, str]], version: Version) -> bool:
    """The OSV specification's evaluation of one ECOSYSTEM range: events in version order, `introduced`
    opens, `fixed` closes at that version, `last_affected` closes after it."""

    def order(event: Mapping[str, str]) -> tuple[int, Version]:
        ((kind, value),) = event.items()
        if kind == "introduced" and value == "0":
            return (0, Version("0"))  # before every version, pre-releases of 0 too
        return (1, _version(value))

    affected = False
    for event in sorted(events, key=order):
        ((kind, value),) = event.items()
        if kind == "introduced" and (value == "0" or version >= _version(value)):
            affected = True
        elif (kind == "fixed" and version >= _version(value)) or (
            kind == "last_affected" and version > _version(value)
        ):
            affected = False
    return affected


def affects(record: Record, name: str, version: str) -> bool:
    """Whether an OSV record names this PyPI release: in an `affected[].versions` list, or inside one of
    its ECOSYSTEM ranges (other range types are resolved into the versions list by the database)."""
    try:
        wanted = Version(version)
    except InvalidVersion as e:
        raise AuditError(f"not a PEP 440 version: {version!r}") from e  # pip installs no other kind
    for affected in record.get("affected", []):
        package = affected.get("package", {})
        if package.get("ecosystem") != "PyPI" or canonical(package.get("name", "")) != name:
            continue
        listed = affected.get("versions", [])
        if version in listed or any(_loose_equal(v, wanted) for v in listed):
            return True
        for rng in affected.get("ranges", []):
            if rng.get("type") == "ECOSYSTEM" and _in_range(rng["events"], wanted):
                return True
    return False


def _loose_equal(listed: str, wanted: Version) -> bool:
    try:
        return Version(listed) == wanted  # "2.10" and "2.10.0" are one release to pip
    except InvalidVersion:
        return False  # a legacy version string in a list: it can only match exactly, checked above


@dataclass
class StandIn:
    """What the OSV stand-in knows, and every query it answered (name, version)."""

    advisories: Mapping[str, list[Record]]
    url: str = ""
    queries: list[tuple[str, str]] = field(default_factory=list)


def _handler(stand_in: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/query":
                self._answer(404, {"message": "only POST /v1/query is served here"})
                return
            try:
                query = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                package = query["package"]
                name, version = canonical(package["name"]), str(Version(query["version"]))
                if package.get("ecosystem") != "PyPI":
                    raise ValueError("only the PyPI ecosystem is vendored")
            except (ValueError, KeyError, TypeError) as e:
                self._answer(400, {"message": f"not an OSV query: {e}"})
                return
            if name not in stand_in.advisories:
                # No data is not "no advisory": pip-audit fails on this instead of passing the release.
                self._answer(404, {"message": f"no advisory data for {name}: scripts/advisories.py refresh"})
                return
            try:
                vulns = [r for r in stand_in.advisories[name] if affects(r, name, version)]
            except AuditError as e:
                self._answer(500, {"message": str(e)})
                return
            stand_in.queries.append((name, version))
            # The real API answers {} when nothing matches; pip-audit reads that as "no advisory".
            self._answer(200, {"vulns": vulns} if vulns else {})

        def _answer(self, status: int, body: Mapping[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per release on stderr is noise; the audit's report says what matters

    return Handler


@contextmanager
def osv_stand_in(advisories: Mapping[str, list[Record]] | None = None) -> Iterator[StandIn]:
    """A stand-in for api.osv.dev's query API on 127.0.0.1, answering from the vendored data."""
    stand_in = StandIn(load() if advisories is None else advisories)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stand_in))
    thread = threading.Thread(target=server.serve_forever, name="osv-stand-in", daemon=True)
    thread.start()
    try:
        stand_in.url = f"http://127.0.0.1:{server.server_address[1]}/v1/query"
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass(frozen=True)
class Findings:
    lock: str
    audited: dict[str, str]  # name -> version, as pip-audit reported them
    vulnerable: dict[str, list[str]]  # "name version" -> advisory ids
    unaudited: list[str]  # "name: why"


def audit_lock(lock: Path, osv_url: str) -> Findings:
    """Run pip-audit over one lock against the OSV API at `osv_url`. It reads the pins alone
    (--disable-pip: hashed pins need no resolver), so nothing is downloaded or installed."""
    missing = sorted(set(pins(lock)) - set(load()))
    if missing:
        raise AuditError(
            f"{lock.name}: no advisory data for {', '.join(missing)} — run scripts/advisories.py refresh"
        )
    # The stand-in is on loopback: no proxy may sit in between.
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = "127.0.0.1"
    with tempfile.TemporaryDirectory(prefix="pip-audit-cache-") as cache:
        res = subprocess.run(
            [
                *(sys.executable, "-m", "pip_audit", "--vulnerability-service", "osv", "--osv-url", osv_url),
                *("--disable-pip", "--require-hashes", "--strict", "-r", str(lock), "--cache-dir", cache),
                *("--format", "json", "--progress-spinner", "off", "--timeout", "30"),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
            env=env,
        )
    try:
        report = json.loads(res.stdout)["dependencies"]
    except (ValueError, KeyError) as e:
        raise AuditError(
            f"{lock.name}: pip-audit exited {res.returncode}: {res.stderr.strip()[-2000:]}"
        ) from e
    if res.returncode not in (0, 1):
        raise AuditError(f"{lock.name}: pip-audit exited {res.returncode}: {res.stderr.strip()[-2000:]}")
    return Findings(
        lock=str(lock),
        audited={d["name"]: d["version"] for d in report if "skip_reason" not in d},
        vulnerable={
            f"{d['name']} {d['version']}": [v["id"] for v in d["vulns"]] for d in report if d.get("vulns")
        },
        unaudited=[f"{d['name']}: {d['skip_reason']}" for d in report if "skip_reason" in d],
    )


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@click.command()
@click.argument("locks", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def main(locks: tuple[Path, ...]) -> None:
    """Audit the hash locks (default: all of them) with pip-audit against the vendored PyPA advisory data,
    served on loopback as an OSV query API."""
    click.echo(snapshot_age())
    bad = 0
    with osv_stand_in() as stand_in:
        for lock in locks or tuple(ROOT / lock for lock in LOCKS):
            try:
                found = audit_lock(lock.resolve(), stand_in.url)
            except AuditError as e:
                raise click.ClickException(str(e)) from e
            click.echo(f"{_shown(lock)}: {len(found.audited)} releases audited")
            for release, ids in found.vulnerable.items():
                bad += 1
                click.echo(f"  {release}: {', '.join(ids)} (make lock UPGRADE='--upgrade-package NAME')")
            for line in found.unaudited:
                bad += 1
                click.echo(f"  not audited: {line}")
    if bad:
        raise click.ClickException(
            f"{bad} locked releases have a known advisory or were not audited — see above"
        )


if __name__ == "__main__":
    main()
