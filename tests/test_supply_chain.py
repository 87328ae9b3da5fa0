"""The supply chain, checked: every third-party import is a declared dependency, every lock pins the whole
tree with hashes and matches its inputs, every install checks those hashes, and no locked release has a
known advisory (docs/supply-chain.md)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from deploy.server.steps import pip_install
from tests.support import component_missing

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_IN = ROOT / "requirements.in"
DEV_IN = ROOT / "requirements-dev.in"
LOCKS = (
    "requirements.txt",
    "requirements-dev.txt",
    "tests/apache/requirements-sslyze.txt",
    "tests/apache/requirements-sslyze-build.txt",
)
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


@pytest.mark.parametrize("lock", [lock for lock in LOCKS if lock != "requirements.txt"])
def test_no_locked_release_has_a_known_advisory(lock: str) -> None:
    # requirements.txt is covered by requirements-dev.txt (checked above to hold it at the same versions).
    _need_pypi("https://pypi.org/pypi/pip/json")
    res = subprocess.run(
        [
            *(sys.executable, "-m", "pip_audit", "--vulnerability-service", "pypi", "--disable-pip"),
            *("--require-hashes", "-r", str(ROOT / lock), "--format", "json", "--progress-spinner", "off"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert res.returncode in (0, 1), res.stderr[-3000:]
    report = json.loads(res.stdout)["dependencies"]
    vulnerable = {
        f"{d['name']} {d['version']}": [v["id"] for v in d["vulns"]] for d in report if d.get("vulns")
    }
    assert vulnerable == {}, "upgrade these (make lock UPGRADE='--upgrade-package NAME')"
    unaudited = [f"{d['name']}: {d['skip_reason']}" for d in report if "skip_reason" in d]
    if unaudited:
        component_missing(
            f"PyPI's advisory data could not be read for {len(unaudited)} of {len(report)} releases "
            f"(pip-audit reads https://pypi.org/pypi/NAME/VERSION/json), e.g. {unaudited[0]}"
        )
