"""MariaDB server hardening (strongroom.cnf), rendered with the one site-specific path it needs.

`python -m hardening.mariadb > /etc/mysql/mariadb.conf.d/90-strongroom.cnf` gives the production file;
tests render it with a private secure-file-priv directory and start a private server from it.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "strongroom.cnf"
SECURE_FILE_PRIV = Path("/var/lib/mysql-files")
_PATH = re.compile(r"/[A-Za-z0-9_./-]{1,255}")


class MariaDBConfigError(ValueError):
    """A value would produce an unsafe or invalid option file."""


def render(*, secure_file_priv: Path = SECURE_FILE_PRIV) -> str:
    value = str(secure_file_priv)
    if not _PATH.fullmatch(value) or value == "/":
        raise MariaDBConfigError("secure_file_priv: an absolute directory path of plain characters")
    return Template(TEMPLATE.read_text()).substitute(secure_file_priv=value)
