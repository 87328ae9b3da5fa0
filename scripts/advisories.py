"""The vendored advisory data that `make audit` (scripts/audit.py) serves to pip-audit.

    python scripts/advisories.py refresh CLONE   rewrite scripts/advisories/ from a git clone of
                                                 https://github.com/pypa/advisory-database

The PyPA advisory database is a git repository of OSV records in YAML, one file per advisory under
vulns/PACKAGE/. A refresh reads the clone's committed HEAD (not its work tree: what is vendored is
exactly the commit SOURCE names), keeps the records that name a package pinned in any of the project's
locks, and writes them as JSON, one file per locked package (an empty list where the database has
none: a package without a file is one the data was never refreshed for, and the audit refuses it).
PyYAML is needed here only; the audit itself reads JSON. docs/supply-chain.md.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run by path: scripts.audit is found from the checkout

from scripts.audit import DATA, LOCKS, Record, canonical, pins, snapshot_age  # noqa: E402

DATABASE = "https://github.com/pypa/advisory-database"
LICENSE = "CC-BY-4.0 (https://creativecommons.org/licenses/by/4.0/)"


class _Loader(yaml.SafeLoader):
    """YAML with every plain scalar that is not a boolean or null kept as its text: OSV versions are
    strings ("2.10" read as a float would be 2.1) and so are its timestamps."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag in {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _git(clone: Path, *args: str) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as e:
        raise click.ClickException(
            f"git {args[0]} failed in {clone}: {e.stderr.decode(errors='replace').strip()[-300:]}"
            " — pass a git clone of " + DATABASE
        ) from e


def _records(clone: Path) -> list[Record]:
    """Every OSV record under vulns/ at the clone's HEAD."""
    tar = _git(clone, "archive", "--format=tar", "HEAD", "vulns")
    records = []
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive:
            stream = archive.extractfile(member) if member.name.endswith((".yaml", ".yml")) else None
            if stream is None:
                continue  # a folder, or a file that is not an advisory
            record: Any = yaml.load(stream.read(), Loader=_Loader)  # noqa: S506 - SafeLoader, fewer resolvers
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise click.ClickException(
                    f"{member.name} is not an OSV record — is {clone} the advisory database?"
                )
            records.append(record)
    if not records:
        raise click.ClickException(
            f"no advisories under vulns/ at {clone}'s HEAD — pass a clone of {DATABASE}"
        )
    return records


def _names(record: Record) -> set[str]:
    return {
        canonical(a["package"]["name"])
        for a in record.get("affected", [])
        if a["package"].get("ecosystem") == "PyPI"
    }


def refresh(clone: Path, data: Path, packages: set[str]) -> dict[str, int]:
    """Rewrite `data` from the clone's HEAD for these packages; returns name -> number of advisories."""
    commit = _git(clone, "rev-parse", "HEAD").decode().strip()
    date = datetime.fromisoformat(_git(clone, "log", "-1", "--format=%cI", "HEAD").decode().strip())
    found: dict[str, list[Record]] = {name: [] for name in packages}
    for record in _records(clone):
        for name in _names(record) & packages:
            found[name].append(record)
    data.mkdir(parents=True, exist_ok=True)
    for old in data.glob("*.json"):
        old.unlink()
    for name, records in found.items():
        records.sort(key=lambda r: r["id"])
        (data / f"{name}.json").write_text(
            json.dumps(records, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        )
    (data / "SOURCE").write_text(
        "# The OSV records of scripts/advisories/*.json: one file per package pinned in a lock,\n"
        "# converted from YAML to JSON and otherwise unchanged, by `scripts/advisories.py refresh CLONE`.\n"
        f"database: {DATABASE}\n"
        f"commit: {commit}\n"
        f"date: {date.isoformat()}\n"
        f"license: {LICENSE}\n"
    )
    return {name: len(records) for name, records in sorted(found.items())}


@click.group()
def cli() -> None:
    """The vendored PyPA advisory data that `make audit` serves to pip-audit (scripts/advisories/)."""


@cli.command("refresh")
@click.argument("clone", type=click.Path(exists=True, file_okay=False, path_type=Path))
def refresh_command(clone: Path) -> None:
    """Rewrite scripts/advisories/ from CLONE, a git clone of the PyPA advisory database, for every
    package pinned in a lock."""
    packages = {name for lock in LOCKS for name in pins(ROOT / lock)}
    counts = refresh(clone, DATA, packages)
    with_advisories = {n: c for n, c in counts.items() if c}
    click.echo(
        f"{sum(counts.values())} advisories for {len(with_advisories)} of {len(counts)} locked packages "
        f"written to {DATA.relative_to(ROOT)}/"
    )
    click.echo(snapshot_age())


if __name__ == "__main__":
    cli()
