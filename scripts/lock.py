"""The hash locks: compile them from the human-edited *.in files, or check that they still match.

    python scripts/lock.py [pip-compile options]   rewrite the locks (`make lock`); options such as
                                                   `--upgrade-package cryptography` pass through
    python scripts/lock.py --check                 compile into a temporary directory and compare
                                                   (exit 1 and a diff when a lock is stale)

The locks are resolved against PyPI itself, with the machine's pip configuration switched off: a mirror
or an extra index in a pip.conf would otherwise leak into the files or their hashes, and the same
inputs must give the same locks on every machine. pip-compile keeps every pin the lock already has
unless told to upgrade it, so a check is a comparison, not an upgrade. docs/supply-chain.md.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDEX = "https://pypi.org/simple"
# (input, lock, pip-compile options of its own), in this order: requirements-dev.in is constrained by
# the runtime lock. sslyze is an sdist that pip-compile builds for its metadata: with this venv's
# setuptools (hash-locked in requirements-dev.txt), not with build tools fetched unchecked.
LOCKS = (
    ("requirements.in", "requirements.txt", ()),
    ("requirements-dev.in", "requirements-dev.txt", ()),
    ("tests/apache/requirements-sslyze-build.in", "tests/apache/requirements-sslyze-build.txt", ()),
    (
        "tests/apache/requirements-sslyze.in",
        "tests/apache/requirements-sslyze.txt",
        ("--no-build-isolation",),
    ),
)
OPTIONS = (
    "--quiet",
    "--generate-hashes",
    "--allow-unsafe",  # pip and setuptools too: the whole tree, nothing left to the resolver at install
    "--strip-extras",
    "--no-emit-index-url",
    "--no-emit-find-links",
    "--index-url",
    INDEX,
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip reads no configuration file at all
    env["CUSTOM_COMPILE_COMMAND"] = "make lock"  # the header names the command, not a temporary path
    return env


def compile_lock(src: str, out: Path, extra: Sequence[str]) -> None:
    argv = [sys.executable, "-m", "piptools", "compile", *OPTIONS, *extra, "--output-file", str(out), src]
    subprocess.run(argv, cwd=ROOT, env=_env(), check=True)


def check() -> int:
    stale = 0
    with tempfile.TemporaryDirectory() as tmp:
        for src, lock, own in LOCKS:
            fresh = Path(tmp) / lock.replace("/", "_")
            shutil.copyfile(ROOT / lock, fresh)  # the starting pins: unchanged unless an input moved
            compile_lock(src, fresh, own)
            want, have = fresh.read_text().splitlines(), (ROOT / lock).read_text().splitlines()
            if want != have:
                stale += 1
                print(f"{lock} does not match {src}: run `make lock` and commit both", file=sys.stderr)
                sys.stdout.writelines(
                    f"{line}\n" for line in difflib.unified_diff(have, want, lock, "compiled", lineterm="")
                )
    return 1 if stale else 0


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        return check()
    for src, lock, own in LOCKS:
        compile_lock(src, ROOT / lock, [*own, *argv])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
