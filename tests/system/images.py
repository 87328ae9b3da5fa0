"""The cached parts of the whole-server test: the Debian 12 root filesystem and the wheelhouse.

Both are built once and reused by every later run, in a cache outside the checkout
(``$STRONGROOM_TEST_CACHE``, default ``/var/cache/strongroom-tests``):

    images/<key>/          a bare Debian 12 (mmdebstrap minbase + systemd + the server's packages)
    wheels/<key>/          the wheels of requirements.txt, for an install without PyPI
    runs/<pid>-<n>/        one booted container's overlay (see container.py), removed after the run
    .lock                  flock: one run builds at a time, the others wait and then reuse

The key is a hash of everything the result depends on (the mmdebstrap command line with the package
list, mmdebstrap's version; requirements.txt), so a changed package list builds a new image and an
unchanged one never rebuilds. A build goes into a temporary directory that is renamed into place
only when complete: an interrupted build leaves nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE_LIST = REPO / "deploy" / "server" / "debian-packages.txt"
REQUIREMENTS = REPO / "requirements.txt"
SUITE = "bookworm"
# systemd as PID 1 and its bus; everything else comes from the server's own package list.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus")
HOSTNAME = "vault"
KEEP_IMAGES = 3  # older images (other package lists) are deleted when a new one is built
BUILD_TIMEOUT = 900
LOCK_TIMEOUT = 1200  # another run may be building: a cold build takes about a minute


def cache_dir() -> Path:
    path = Path(os.environ.get("STRONGROOM_TEST_CACHE", "/var/cache/strongroom-tests"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def cache_lock(cache: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Exclusive lock over the cache: builds and the clean-up of stale runs happen under it."""
    with open(cache / ".lock", "a+b") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{cache}/.lock held for more than {timeout:.0f} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_package_list(path: Path = PACKAGE_LIST) -> list[str]:
    """The package names of a list with one package per line and `#` comments."""
    packages = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            if not all(c.isalnum() or c in "+-." for c in name):
                raise ValueError(f"{path}: not a Debian package name: {name!r}")
            packages.append(name)
    return packages


def mmdebstrap_argv(packages: list[str], target: Path) -> list[str]:
    include = ",".join([*BASE_PACKAGES, *sorted(set(packages))])
    return [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        f"--include={include}",
        # A fixed host name: package scripts (postfix) read it, and the build host's must not leak in.
        f'--customize-hook=echo {HOSTNAME} > "$1/etc/hostname"',
        SUITE,
        str(target),
    ]


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def image_key(packages: list[str]) -> str:
    version = subprocess.run(
        ["mmdebstrap", "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    return _digest(version, *mmdebstrap_argv(packages, Path("TARGET")))


def _publish(tmp: Path, final: Path) -> None:
    """Make a finished build visible in one step (rename within the same directory)."""
    os.rename(tmp, final)


def ensure_image(cache: Path | None = None, packages: list[str] | None = None) -> tuple[Path, bool]:
    """The root filesystem for `packages` (default: the server's list), and whether it was built now."""
    cache = cache or cache_dir()
    packages = read_package_list() if packages is None else packages
    images = cache / "images"
    images.mkdir(mode=0o700, exist_ok=True)
    final = images / image_key(packages)
    with cache_lock(cache):
        if final.is_dir():
            os.utime(final)  # newest use first when old images are pruned
            return final, False
        tmp = images / f".build-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        result = subprocess.run(
            mmdebstrap_argv(packages, tmp), capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
        if result.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr[-4000:]}")
        _publish(tmp, final)
        _prune(images, keep=final)
        return final, True


def _prune(images: Path, keep: Path) -> None:
    """Delete old images beyond KEEP_IMAGES (and half-built ones), never the one just built.

    A run using an older image holds the cache lock only while starting, so an image in use by a
    parallel run of an older checkout could go: KEEP_IMAGES > 1 makes that unlikely enough for tests.
    """
    for stale in images.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    done = sorted((p for p in images.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime)
    for old in done[: max(0, len(done) - (KEEP_IMAGES - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def ensure_wheelhouse(cache: Path | None = None, requirements: Path = REQUIREMENTS) -> tuple[Path, bool]:
    """Wheels for every pinned requirement (binary only), and whether they were downloaded now.

    The container has no route to PyPI: the install command gets these through `--wheelhouse`. The
    test's Python and the container's are both CPython 3.11 on x86-64 Linux, so the host's pip picks
    the wheels the container needs.
    """
    cache = cache or cache_dir()
    wheels = cache / "wheels"
    wheels.mkdir(mode=0o700, exist_ok=True)
    final = wheels / _digest(f"{sys.version_info.major}.{sys.version_info.minor}", requirements.read_bytes())
    with cache_lock(cache):
        if final.is_dir():
            return final, False
        tmp = wheels / f".download-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
             "-r", str(requirements), "--only-binary=:all:", "-d", str(tmp)],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"pip download failed ({result.returncode}):\n{result.stderr[-4000:]}")
        for stale in wheels.glob(".download-*"):
            if stale != tmp:
                shutil.rmtree(stale, ignore_errors=True)
        _publish(tmp, final)
        return final, True
