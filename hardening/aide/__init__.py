"""AIDE configuration (aide.conf.in), rendered with its database directory and, for tests or for
checking a mounted copy of a server, a root prefix.

`python -m hardening.aide > /etc/strongroom/aide.conf` writes the production file; the watchdog runs
`aide --check --config` on it. Values are checked strictly: a newline in a path would add a rule.
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "aide.conf.in"
DATABASE_DIR = Path("/var/lib/aide")
_PATH = re.compile(r"/[A-Za-z0-9_.@+-]+(?:/[A-Za-z0-9_.@+-]+)*")


class AideConfigError(ValueError):
    """A value would produce an unsafe or invalid AIDE configuration."""


def _checked(path: Path, name: str) -> str:
    value = str(path)
    if not _PATH.fullmatch(value) or ".." in value.split("/"):
        raise AideConfigError(f"{name}: an absolute path of plain characters, without '..'")
    return value


def render(*, database_dir: Path = DATABASE_DIR, root_prefix: Path | None = None) -> str:
    """The configuration text. `root_prefix`: check the tree below it as if it were / (tests)."""
    db = _checked(database_dir, "database_dir")
    prefix_line = "# root_prefix: none (the live system)"
    if root_prefix is not None:
        prefix_line = f"root_prefix={_checked(root_prefix, 'root_prefix')}"
    values = {"database_dir": db, "database_dir_rule": re.escape(db), "root_prefix_line": prefix_line}
    # Plain replacement, not string.Template: AIDE's regexes are full of "$".
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    if "${" in text:
        raise AideConfigError("the template has a placeholder render() does not fill")
    return text
