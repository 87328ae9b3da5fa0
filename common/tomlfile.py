"""A settings file read as TOML: bounded in size, and refused without quoting the file's content.

Standard library only: keyd, which holds the data key, reads its settings with this and nothing larger
(docs/keyd.md). `common/settings.py` builds the declared models on top of it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

MAX_BYTES = 64 * 1024  # every settings file we ship is under 4 KiB: more is a mistake or an attack
_TOML_WHERE = re.compile(r"\((at line \d+, column \d+|at end of document)\)")


class SettingsRefused(ValueError):
    """The settings were refused; `problems` has one line per problem, none quoting a value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SettingsMissing(SettingsRefused):
    """The settings file does not exist (a package may say what creates it)."""


def read_toml(path: Path, *, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """The TOML table in `path`, refused if unreadable, larger than `max_bytes`, not UTF-8 or not TOML."""
    try:
        with Path(path).open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise SettingsMissing([f"{path}: does not exist"]) from None
    except OSError as exc:
        raise SettingsRefused([f"{path}: cannot read ({exc.strerror})"]) from None
    if len(raw) > max_bytes:
        raise SettingsRefused([f"{path}: larger than {max_bytes} bytes"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsRefused([f"{path}: not UTF-8 text"]) from None
    return loads_toml(text, source=str(path))


def loads_toml(text: str, *, source: str = "") -> dict[str, Any]:
    """The TOML table in `text`; a refusal says where the syntax broke, after `source` if one is given."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message can quote a character of the file: keep only where the error is.
        where = _TOML_WHERE.search(str(exc))
        suffix = f" ({where.group(1)})" if where else ""
        raise SettingsRefused(
            [f"{source}: not valid TOML{suffix}" if source else f"not valid TOML{suffix}"]
        ) from None
