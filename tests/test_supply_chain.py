"""The supply chain, checked: every third-party import is a declared dependency, every lock pins the whole
tree with hashes and matches its inputs, every install checks those hashes, and no locked release has a
known advisory in the vendored PyPA advisory data (docs/supply-chain.md)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.version import Version

from deploy.server.steps import pip_install
from scripts import advisories, audit
from tests.support import component_missing, need_binary

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_IN = ROOT / "requirements.in"
DEV_IN = ROOT / "requirements-dev.in"
LOCKS = audit.LOCKS  # as scripts/lock.py compiles them
# Test and tool code: it may use the dev dependencies. Every other package ships to the server.
DEV_PACKAGES = {"tests", "bench", "scripts"}
# Scripts that run in a venv of their own, with the dependencies declared for it.
OWN_VENV = {"tests/apache/sslyze_scan.py": ROOT / "tests/apache/requirements-sslyze.in"}
# Runtime dependencies that no runtime code imports by name, and why they are needed all the same.
NOT_IMPORTED = {
    "pymysql": "the MariaDB driver, loaded by SQLAlchemy from the mysql+pymysql:// URL",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# Folders of scripts, run by path rather than imported as a package.
SCRIPT_DIRS = ("bench", "scripts")


def _packages() -> list[str]:
    """The project's own top-level packages, and the folders of scripts."""
    return [*sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()), *SCRIPT_DIRS]


def _imports(path: Path) -> set[str]:
    """The top-level names of every absolute import in a file, wherever it stands (in a function, under
    `if TYPE_CHECKING:`, in a `try:`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _third_party(names: Iterable[str]) -> set[str]:
    local = set(_packages())
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def _declared(requirements_in: Path) -> set[str]:
    """The distributions an .in file names, with those of the files it includes with -r (not -c: a
    constraint declares nothing)."""
    found: set[str] = set()
    for raw in requirements_in.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r"):
            found |= _declared(requirements_in.parent / line[2:].strip())
        elif line and not line.startswith("-"):
            name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
            assert name, f"{requirements_in.name}: cannot read {line!r}"
            found.add(_norm(name.group()))
    return found


def _undeclared(
    files: Iterable[Path], declared: set[str], dists: Mapping[str, list[str]]
) -> dict[str, list[str]]:
    """Per file, the third-party modules that no declared distribution provides."""
    bad: dict[str, list[str]] = {}
    for path in files:
        for module in sorted(_third_party(_imports(path))):
            provided_by = {_norm(d) for d in dists.get(module, [module])}  # not installed: its own name
            if not provided_by & declared:
                bad.setdefault(_rel(path), []).append(module)
    return bad


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _sources(packages: Iterable[str]) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py") if ".venv" not in p.parts)


def test_the_walk_covers_every_package() -> None:
    expected = {"webapp", "keyd", "ca", "ops", "backup", "hardening", "apache", "deploy", "bench", "tests"}
    assert expected <= set(_packages())
    assert len(_sources(_packages())) > 100, "too few sources: the checks below would pass vacuously"


def test_runtime_code_imports_only_runtime_dependencies() -> None:
    runtime = [p for p in _packages() if p not in DEV_PACKAGES]
    assert _undeclared(_sources(runtime), _declared(RUNTIME_IN), packages_distributions()) == {}


def test_test_and_tool_code_imports_only_declared_dependencies() -> None:
    files = [p for p in _sources(DEV_PACKAGES) if _rel(p) not in OWN_VENV]
    assert _undeclared(files, _declared(DEV_IN), packages_distributions()) == {}


@pytest.mark.parametrize(("script", "requirements_in"), OWN_VENV.items())
def test_scripts_of_their_own_venv_import_only_its_dependencies(script: str, requirements_in: Path) -> None:
    # That venv is not this one: a module maps to the distribution of its own name.
    assert _undeclared([ROOT / script], _declared(requirements_in), {}) == {}


def test_every_runtime_dependency_is_imported_or_says_why_not() -> None:
    dists = packages_distributions()
    runtime = [p for p in _packages() if p not in DEV_PACKAGES]
    used = {_norm(d) for p in _sources(runtime) for m in _third_party(_imports(p)) for d in dists.get(m, [])}
    assert _declared(RUNTIME_IN) - used == set(NOT_IMPORTED)


def test_the_checker_sees_every_form_of_import(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text(
        "import os, yaml.loader\nfrom requests import get\nfrom . import sibling\nfrom webapp import x\n"
        "if TYPE_CHECKING:\n    import toml\ntry:\n    import ujson\nexcept ImportError:\n    pass\n"
        "def f():\n    from lxml import etree\n"
    )
    assert _third_party(_imports(sneaky)) == {"yaml", "requests", "toml", "ujson", "lxml"}


def test_the_checker_reports_an_installed_but_undeclared_distribution(tmp_path: Path) -> None:
    # requests is installed (pip-audit needs it) but declared nowhere: runtime code may not import it.
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("import requests\nimport flask\nimport not_a_module_anyone_installed\n")
    bad = _undeclared([sneaky], _declared(RUNTIME_IN), packages_distributions())
    assert bad == {str(sneaky): ["not_a_module_anyone_installed", "requests"]}


def _locked(lock: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for every requirement of a lock."""
    out: dict[str, tuple[str, int]] = {}
    name = ""
    for line in (ROOT / lock).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if not line[0].isspace():
            pinned = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\", line)
            assert pinned, f"{lock}: not an exact pin with hashes: {line!r}"
            name = _norm(pinned.group(1))
            out[name] = (pinned.group(2), 0)
        elif line.strip().startswith("--hash=sha256:"):
            out[name] = (out[name][0], out[name][1] + 1)
    return out


@pytest.mark.parametrize("lock", LOCKS)
def test_every_lock_pins_every_package_with_its_hashes(lock: str) -> None:
    locked = _locked(lock)
    assert locked
    assert [name for name, (_, hashes) in locked.items() if hashes == 0] == []


def test_the_dev_lock_carries_the_runtime_tree_at_its_versions() -> None:
    # make venv installs requirements-dev.txt alone: the tests must run on the server's versions.
    runtime, dev = _locked("requirements.txt"), _locked("requirements-dev.txt")
    assert {n: dev.get(n, ("missing", 0))[0] for n in runtime} == {n: v for n, (v, _) in runtime.items()}


def test_every_install_checks_the_hashes() -> None:
    argv = pip_install(wheelhouse=Path("/srv/wheels"))
    assert {"--require-hashes", "--only-binary=:all:"} <= set(argv)
    assert argv[-2:] == ["-r", "/opt/strongroom/requirements.txt"]
    makefile = (ROOT / "Makefile").read_text()
    (definition,) = re.findall(r"^PIP_INSTALL :=.*$", makefile, re.M)
    assert "--require-hashes" in definition
    # Every install in the Makefile goes through that definition.
    assert re.findall(r"pip install", makefile) == ["pip install"]
    assert makefile.count("$(PIP_INSTALL)") >= 3


def _need_pypi(url: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - a fixed https URL
            response.read(1)
    except (urllib.error.URLError, OSError) as e:
        component_missing(f"PyPI is unreachable ({url}: {e})")


def test_the_locks_match_their_inputs() -> None:
    _need_pypi("https://pypi.org/simple/pip/")
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts/lock.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert res.returncode == 0, f"{res.stderr[-3000:]}\n{res.stdout[-6000:]}"


# The advisory check. pip-audit's own sources, api.osv.dev and PyPI's per-release JSON
# (https://pypi.org/pypi/NAME/VERSION/json), cannot be reached from every network the project is built
# on (only PyPI's package index can), so scripts/audit.py serves the OSV query API that api.osv.dev
# would, on loopback, from the PyPA advisory database vendored in scripts/advisories/, and the real
# pip-audit audits each lock against it. `make audit` is the same code.

PLANTED_HASH = "--hash=sha256:" + "0" * 64  # pip-audit reads pins and never downloads: any hash will do


@pytest.fixture(scope="module")
def stand_in() -> Iterator[audit.StandIn]:
    with audit.osv_stand_in() as running:
        yield running


def test_the_advisory_data_names_its_source_and_covers_every_locked_package(
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = audit.source()
    assert source["database"] == "https://github.com/pypa/advisory-database"
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["license"].startswith("CC-BY-4.0")
    # The docs name the snapshot a reader relies on: a refresh updates them too.
    snapshot = f"{source['date'][:10]} (commit {source['commit'][:7]})"
    assert snapshot in (ROOT / "docs/supply-chain.md").read_text()
    with capsys.disabled():  # the age is shown on every run, not only when a test fails
        print(f"\n{audit.snapshot_age()}")
    data = audit.load()
    pinned = {name for lock in LOCKS for name in audit.pins(ROOT / lock)}
    assert pinned - set(data) == set(), "locked without advisory data: scripts/advisories.py refresh CLONE"
    # Each file holds records about its own package only, and enough of them to be the real database.
    assert all(
        any(audit.canonical(a["package"]["name"]) == name for a in r["affected"])
        for name in data
        for r in data[name]
    )
    assert sum(map(len, data.values())) > 50
    assert len(data["cryptography"]) > 3


@pytest.mark.parametrize("lock", LOCKS)
def test_no_locked_release_has_a_known_advisory(lock: str, stand_in: audit.StandIn) -> None:
    found = audit.audit_lock(ROOT / lock, stand_in.url)
    assert found.vulnerable == {}, "upgrade these (make lock UPGRADE='--upgrade-package NAME')"
    assert found.unaudited == []
    # pip-audit asked the stand-in about every pinned release: nothing was passed without a question.
    asked = {(name, str(Version(version))) for name, version in stand_in.queries}
    pinned = {(name, str(Version(version))) for name, version in audit.pins(ROOT / lock).items()}
    assert pinned - asked == set()
    assert len(found.audited) == len(pinned)


def _planted(tmp_path: Path, pins: dict[str, str]) -> Path:
    lock = tmp_path / "planted.txt"
    lock.write_text("".join(f"{name}=={version} \\\n    {PLANTED_HASH}\n" for name, version in pins.items()))
    return lock


def test_the_audit_reports_a_planted_vulnerable_release(tmp_path: Path, stand_in: audit.StandIn) -> None:
    markupsafe = audit.pins(ROOT / "requirements.txt")["markupsafe"]
    lock = _planted(tmp_path, {"Jinja2": "2.10", "cryptography": "3.2", "markupsafe": markupsafe})
    found = audit.audit_lock(lock, stand_in.url)
    # Jinja2 2.10: the str.format_map sandbox escape (fixed in 2.10.1) and the ReDoS (fixed in 2.11.3).
    assert {"PYSEC-2019-217", "PYSEC-2021-66"} <= set(found.vulnerable.pop("jinja2 2.10"))
    # cryptography 3.2: the RSA decryption timing leak (CVE-2020-25659, fixed in 3.2.1) among others.
    assert "PYSEC-2021-62" in found.vulnerable.pop("cryptography 3.2")
    assert found.vulnerable == {}  # the locked MarkupSafe has none
    assert set(found.audited) == {"jinja2", "cryptography", "markupsafe"}


def test_make_audit_fails_on_a_planted_vulnerable_release(tmp_path: Path) -> None:
    assert re.search(r"^audit: .*\n\t\$\(PY\) scripts/audit\.py\b", (ROOT / "Makefile").read_text(), re.M)
    lock = _planted(tmp_path, {"jinja2": "2.10"})
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts/audit.py"), str(lock)],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert res.returncode == 1, res.stderr
    assert "PYSEC-2019-217" in res.stdout
    assert "days old" in res.stdout
    assert res.stderr.startswith("Error: 1 locked releases have a known advisory"), res.stderr


def test_the_audit_refuses_a_package_it_has_no_data_for(tmp_path: Path, stand_in: audit.StandIn) -> None:
    lock = _planted(tmp_path, {"jinja2": "2.10", "not-in-any-lock": "1.0"})
    with pytest.raises(
        audit.AuditError, match="no advisory data for not-in-any-lock — run scripts/advisories"
    ):
        audit.audit_lock(lock, stand_in.url)
    # The stand-in itself answers "unknown", never "no advisory", and refuses what is not an OSV query.
    for path, body, status in [
        ("/v1/query", {"package": {"name": "not-in-any-lock", "ecosystem": "PyPI"}, "version": "1.0"}, 404),
        ("/v1/query", {"package": {"name": "jinja2", "ecosystem": "npm"}, "version": "2.10"}, 400),
        ("/v1/query", {"version": "2.10"}, 400),
        ("/v1/query", {"package": {"name": "jinja2", "ecosystem": "PyPI"}, "version": "2.x"}, 400),
        ("/v1/querybatch", {"queries": []}, 404),
    ]:
        url = stand_in.url.replace("/v1/query", path)
        request = urllib.request.Request(url, data=json.dumps(body).encode())  # noqa: S310 - loopback
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)  # noqa: S310 - the loopback stand-in
        assert refused.value.code == status, (path, body)
        refused.value.close()


RECORD = {
    "id": "TEST-1",
    "affected": [
        {
            "package": {"name": "Some_Pkg", "ecosystem": "PyPI"},
            "ranges": [
                {"type": "GIT", "events": [{"introduced": "0"}, {"fixed": "acb672b6"}]},
                {
                    "type": "ECOSYSTEM",
                    "events": [
                        {"last_affected": "2.3"},
                        {"introduced": "2.0"},
                        {"fixed": "1.5"},
                        {"introduced": "1.0"},
                    ],
                },
            ],
            "versions": ["0.5", "0.9-bulbasaur"],
        },
        {
            "package": {"name": "other", "ecosystem": "PyPI"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
        },
        {"package": {"name": "some-pkg", "ecosystem": "npm"}, "versions": ["3.0"]},
    ],
}


@pytest.mark.parametrize(
    ("version", "affected"),
    [
        ("0.5", True),  # listed
        ("0.5.0", True),  # listed, as pip orders it
        ("0.9", False),  # not the listed legacy "0.9-bulbasaur", which pip cannot install
        ("1.0", True),  # introduced
        ("1.4.9", True),
        ("1.5rc1", True),  # a pre-release before the fix
        ("1.5", False),  # fixed
        ("1.9", False),
        ("2.0rc1", False),  # before the second introduction
        ("2.0", True),
        ("2.3", True),  # last affected
        ("2.3.post1", False),
        ("3.0", False),  # only the npm package of that name
    ],
)
def test_the_stand_in_matches_releases_as_osv_does(version: str, affected: bool) -> None:
    assert audit.affects(RECORD, "some-pkg", version) is affected


def test_the_stand_in_matches_open_ranges_and_fails_closed_on_what_it_cannot_order() -> None:
    assert audit.affects(RECORD, "other", "0.0.1.dev0")
    assert audit.affects(RECORD, "other", "99")
    assert not audit.affects(RECORD, "unrelated", "1.0")
    unorderable = {
        "id": "TEST-2",
        "affected": [
            {
                "package": {"name": "p", "ecosystem": "PyPI"},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.0-bulbasaur"}]}
                ],
            }
        ],
    }
    with pytest.raises(audit.AuditError, match="cannot order"):
        audit.affects(unorderable, "p", "2.0")
    with pytest.raises(audit.AuditError, match="not a PEP 440 version"):
        audit.affects(RECORD, "some-pkg", "0.9-bulbasaur")


ADVISORY_YAML = """\
id: {id}
details: A test advisory.
affected:
- package:
    name: {name}
    ecosystem: PyPI
  ranges:
  - type: ECOSYSTEM
    events:
    - introduced: '0'
    - fixed: 2.10.1
  versions:
  - 2.9
  - 2.10
published: 2019-04-07T00:29:00Z
"""


def test_refresh_vendors_the_locked_packages_from_a_clone(tmp_path: Path) -> None:
    git = need_binary("git")
    clone = tmp_path / "advisory-database"
    for folder, id_, name in [
        ("jinja2", "PYSEC-T-2", "jinja2"),
        ("Jinja2", "PYSEC-T-1", "Jinja2"),
        ("other", "PYSEC-T-3", "other"),
    ]:
        (clone / "vulns" / folder).mkdir(parents=True, exist_ok=True)
        (clone / "vulns" / folder / f"{id_}.yaml").write_text(ADVISORY_YAML.format(id=id_, name=name))
    (clone / "vulns" / "jinja2" / "PYSEC-T-9.yaml").write_text(
        ADVISORY_YAML.format(id="PYSEC-T-9", name="jinja2")
    )

    def run(*args: str) -> str:
        return subprocess.run(
            [git, "-C", str(clone), *args], check=True, capture_output=True, text=True
        ).stdout

    run("init", "-q")
    run("add", "vulns/jinja2/PYSEC-T-2.yaml", "vulns/Jinja2", "vulns/other")
    run("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "advisories")
    commit = run("rev-parse", "HEAD").strip()
    data = tmp_path / "data"
    data.mkdir()
    (data / "stale.json").write_text("[]")

    assert advisories.refresh(clone, data, {"jinja2", "flask"}) == {"flask": 0, "jinja2": 2}

    assert sorted(p.name for p in data.iterdir()) == ["SOURCE", "flask.json", "jinja2.json"]
    records = json.loads((data / "jinja2.json").read_text())
    # Only the committed HEAD (not PYSEC-T-9, left uncommitted), sorted; versions and dates stay text.
    assert [r["id"] for r in records] == ["PYSEC-T-1", "PYSEC-T-2"]
    assert records[0]["affected"][0]["versions"] == ["2.9", "2.10"]
    assert records[0]["published"] == "2019-04-07T00:29:00Z"
    assert json.loads((data / "flask.json").read_text()) == []
    assert f"commit: {commit}\n" in (data / "SOURCE").read_text()
    assert audit.affects(records[0], "jinja2", "2.10")
    assert not audit.affects(records[0], "jinja2", "2.10.1")
