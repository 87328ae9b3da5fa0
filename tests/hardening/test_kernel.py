"""The kernel hardening sysctls: every key exists in this kernel, the per-namespace network ones are
applied for real with `sysctl -p` in a fresh namespace and read back, and the check catches a kernel that
differs. Global keys (kernel.*, fs.*, vm.*) cannot be applied here without changing the host for every
other suite: docs/hardening.md gives the manual check for a real host."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardening.kernel import SYSCTL_FILE, SysctlFileError, parse, shipped
from tests.hardening.conftest import Lan
from tests.support import need_binary

REPO = Path(__file__).resolve().parents[2]
# Network keys that only the initial namespace has: they are global, like kernel.*.
GLOBAL_NET_KEYS = {"net.core.bpf_jit_harden"}


@pytest.fixture
def fresh() -> Iterator[Lan]:
    with Lan(["server"]) as lan:
        yield lan


def test_every_required_key_exists_in_this_kernel() -> None:
    settings = shipped()
    assert len(settings) >= 40
    missing = [s.key for s in settings if not s.optional and not s.path.exists()]
    assert missing == []


def test_optional_keys_are_only_those_some_kernels_lack() -> None:
    optional = {s.key for s in shipped() if s.optional}
    assert optional == {
        "kernel.yama.ptrace_scope",  # Yama LSM: in Debian's kernel, not in every one
        "kernel.kexec_load_disabled",
        "kernel.sysrq",
        "kernel.io_uring_disabled",  # Linux 6.6+
        "dev.tty.legacy_tiocsti",  # Linux 6.2+
    }


def net_settings_file(directory: Path, fresh: Lan) -> tuple[Path, list[str]]:
    keys = [s for s in shipped() if s.key.startswith("net.")]
    visible = fresh["server"].run("sh", "-c", "cd /proc/sys && find net -type f").stdout.split()
    per_namespace = [s for s in keys if s.key.replace(".", "/") in visible]
    assert {s.key for s in keys} - {s.key for s in per_namespace} == GLOBAL_NET_KEYS
    path = directory / "net.conf"
    path.write_text("".join(f"{s.key} = {s.value}\n" for s in per_namespace))
    return path, [s.key for s in per_namespace]


def kernel_check(fresh: Lan, path: Path) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", fresh["server"].netns, sys.executable, "-m", "hardening.kernel"]
    return subprocess.run(
        [*argv, "check", "--file", str(path)], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_sysctl_applies_the_network_settings_in_a_namespace(fresh: Lan, tmp_path: Path) -> None:
    path, keys = net_settings_file(tmp_path, fresh)
    before = kernel_check(fresh, path)
    assert before.returncode == 1  # a fresh namespace has the lax defaults: the check must see that
    assert "net.ipv4.conf.all.rp_filter is 0, want 1" in before.stdout
    applied = fresh["server"].run(need_binary("sysctl"), "-p", str(path), check=False)
    assert applied.returncode == 0, applied.stderr
    after = kernel_check(fresh, path)
    assert after.returncode == 0, after.stdout
    assert f"{len(keys)}/{len(keys)} settings as required" in after.stdout
    read_back = fresh["server"].run(need_binary("sysctl"), "-n", "net.ipv4.tcp_rfc1337").stdout.strip()
    assert read_back == "1"


def test_the_shipped_file_is_what_sysctl_reads(fresh: Lan, tmp_path: Path) -> None:
    # The same lines sysctl -p just accepted are the shipped file's lines, comments and all.
    text = SYSCTL_FILE.read_text()
    net_lines = [line for line in text.splitlines() if line.startswith("net.") and "bpf_jit" not in line]
    path = tmp_path / "same.conf"
    path.write_text("# a comment as in the shipped file\n; and another\n\n" + "\n".join(net_lines) + "\n")
    applied = fresh["server"].run(need_binary("sysctl"), "-p", str(path), check=False)
    assert applied.returncode == 0, applied.stderr
    assert "net.ipv6.conf.all.accept_ra = 0" in applied.stdout


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("kernel.sysrq\n", "line 1: expected 'key.name = value'"),
        ("= 1\n", "expected 'key.name = value'"),
        ("kernel/sysrq = 0\n", "expected 'key.name = value'"),
        ("sysrq = 0\n", "expected 'key.name = value'"),
        ("kernel.sysrq = zero\n", "'zero' is not a number"),
        ("kernel.sysrq = \n", "'' is not a number"),
        ("kernel.core_pattern = |/bin/false; rm -rf /\n", "is not a number or a |/program"),
        ("kernel.sysrq = 0\n# x\nkernel.sysrq = 1\n", "line 3: kernel.sysrq is set twice"),
        ("kernel.sysrq = 0\n" * 501, "more than 500 lines"),
    ],
)
def test_bad_sysctl_lines_are_refused(text: str, refusal: str) -> None:
    with pytest.raises(SysctlFileError) as caught:
        parse(text)
    assert refusal in str(caught.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hardening.kernel", "check", "--file", str(tmp_path / "nope.conf")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "No such file" in result.stderr
    assert "Traceback" not in result.stderr
