"""The web app's profile opens TCP only with the installer's switch file (settings [database], a database
on another host: deploy/server/remote_db.py), and without it compiles to exactly the policy it had with
its plain `deny network inet/inet6` rules. The parser's own evaluation (`-d`) is compared, conditionals
and includes resolved; nothing is enforced here (no AppArmor in this kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.server import remote_db
from tests.apparmor.policy import compiled_network, run_parser
from tests.support import need_binary

PROFILE = Path(__file__).resolve().parents[2] / "apparmor/strongroom-web"
CONDITIONAL = """  if defined $strongroom_web_database_tcp {
    network inet stream,
    network inet6 stream,
  } else {
    deny network inet,
    deny network inet6,
  }
"""
DENY = "  deny network inet,\n  deny network inet6,\n"
ALLOW = "  network inet stream,\n  network inet6 stream,\n"


@pytest.fixture(scope="module")
def parser() -> str:
    return need_binary("apparmor_parser")


def base(tmp_path: Path, switch: bool) -> tuple[str, ...]:
    """Parser options: the includes' base directory (where local/ is), then the system's for tunables."""
    (tmp_path / "local").mkdir(exist_ok=True)
    if switch:
        name = Path(remote_db.APPARMOR_SWITCH).name
        (tmp_path / "local" / name).write_text(remote_db.APPARMOR_TEXT)
    return ("-b", str(tmp_path), "-I", "/etc/apparmor.d")


def dump(parser: str, profile: Path, *extra: str) -> str:
    res = run_parser(parser, profile, "-d", *extra)
    assert res.returncode == 0, res.stderr
    return res.stdout + res.stderr


def plain(tmp_path: Path, rules: str) -> Path:
    """The profile with the conditional replaced by plain rules (and no switch include)."""
    text = PROFILE.read_text()
    assert CONDITIONAL in text, "the profile's network switch changed: update this test"
    path = tmp_path / "plain" / "strongroom-web"
    path.parent.mkdir()
    text = text.replace(CONDITIONAL, rules).replace("include if exists <local/strongroom-web-database>\n", "")
    path.write_text(text)
    return path


def test_the_switch_is_the_file_the_profile_includes() -> None:
    assert remote_db.APPARMOR_SWITCH.startswith("/etc/apparmor.d/")
    include = remote_db.APPARMOR_SWITCH.removeprefix("/etc/apparmor.d/")
    assert f"\ninclude if exists <{include}>\n" in PROFILE.read_text()
    assert "$strongroom_web_database_tcp = true" in remote_db.APPARMOR_TEXT.splitlines()


@pytest.mark.parametrize(("switch", "rules"), [(False, DENY), (True, ALLOW)], ids=["local", "remote"])
def test_the_profile_is_exactly_its_plain_form(parser: str, tmp_path: Path, switch: bool, rules: str) -> None:
    opts = base(tmp_path, switch)
    assert dump(parser, PROFILE, *opts) == dump(parser, plain(tmp_path, rules), *opts)


def test_without_the_switch_no_ip_at_all(parser: str, tmp_path: Path) -> None:
    allowed, denied = compiled_network(parser, PROFILE, *base(tmp_path, False))
    assert allowed == {"unix": {"stream", "dgram"}}
    assert denied == {f: {"ALL"} for f in ("inet", "inet6", "netlink", "packet")}


def test_with_the_switch_tcp_only(parser: str, tmp_path: Path) -> None:
    allowed, denied = compiled_network(parser, PROFILE, *base(tmp_path, True))
    assert allowed == {"unix": {"stream", "dgram"}, "inet": {"stream"}, "inet6": {"stream"}}
    assert denied == {"netlink": {"ALL"}, "packet": {"ALL"}}


def test_a_broken_switch_file_fails_the_compile(parser: str, tmp_path: Path) -> None:
    # A second definition (or a typo) is a load error, not a silently open or closed profile.
    opts = base(tmp_path, True)
    with (tmp_path / "local" / Path(remote_db.APPARMOR_SWITCH).name).open("a") as f:
        f.write("$strongroom_web_database_tcp = true\n")
    assert run_parser(parser, PROFILE, *opts).returncode != 0
