"""keyd's persistent state: not secret, but its integrity matters.

Layout of the state dir (0700, owned by keyd's user)::

    state.json      mode, KDF salt and parameters, key versions with their key check values,
                    the minimum decrypt version, encryption counts reserved per version, and the
                    older secret generations a re-key still needs (see Generation)
    budgets.json    decrypt counters reserved per employee/global window (see keyd/budgets.py)
    events.jsonl    the append-only event spool (see keyd/events.py)

Every JSON file is replaced atomically (common/atomic.py): write a temp file, fsync it, rename it over
the old one, fsync the directory. A crash leaves either the old or the new file, never half of one (and
maybe a temporary file, which make_state_dir tolerates).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import atomic
from keyd.shares import ShareSet

STATE_FORMAT = 1


def atomic_write_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"
    atomic.write_bytes(path, data, mode=0o600)


def read_json(path: Path) -> Any:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return json.loads(f.read(4 * 1024 * 1024))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class StateError(Exception):
    """The state file is missing, unreadable or inconsistent: keyd refuses to start on it."""


@dataclass
class Version:
    number: int
    created: float
    kcv_nonce: bytes
    kcv: bytes
    encryptions_reserved: int = 0  # an upper bound on encryptions made under this version
    token_label: str | None = None  # pkcs11 mode: the label of this version's key in the token
    generation: int = 1  # the operator secret (Generation) this version's key comes from


@dataclass
class Generation:
    """One operator secret and how keys come from it: what `keyd rekey` replaces.

    The state's own mode/key_kind/kdf/salts/token_label fields are the current generation's (so a
    state written before re-keying existed reads as generation 1); an older generation is kept in
    `State.retained` while its versions may still be decrypted, and dropped by `keyd retire-secret`.
    """

    number: int
    mode: str
    key_kind: str
    kdf: dict[str, int]
    kdf_salt: bytes
    hkdf_salt: bytes
    token_label: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "key_kind": self.key_kind,
            "kdf": {"name": "scrypt", **self.kdf} if self.kdf else {},
            "kdf_salt": b64(self.kdf_salt),
            "hkdf_salt": b64(self.hkdf_salt),
            "token_label": self.token_label,
        }

    @classmethod
    def from_json(cls, number: int, obj: Any) -> Generation:
        kdf = dict(obj["kdf"])
        kdf.pop("name", None)
        return cls(
            number=number,
            mode=str(obj["mode"]),
            key_kind=str(obj["key_kind"]),
            kdf={k: int(v) for k, v in kdf.items()},
            kdf_salt=unb64(obj["kdf_salt"]),
            hkdf_salt=unb64(obj["hkdf_salt"]),
            token_label=obj.get("token_label"),
        )


@dataclass
class State:
    mode: str  # "file" or "pkcs11"
    key_kind: str  # file mode: "passphrase" or "raw"; pkcs11 mode: "pin"
    kdf: dict[str, int]  # scrypt n, r, p (passphrase only)
    kdf_salt: bytes
    hkdf_salt: bytes
    token_label: str | None
    current_version: int
    min_decrypt_version: int
    versions: dict[int, Version] = field(default_factory=dict)
    generation: int = 1  # the current secret generation: new versions are made under it
    retained: dict[int, Generation] = field(default_factory=dict)  # older ones still needed
    # key_kind "shares": M, N, a salted hash per custodian share and the custodians' names (keyd/shares.py)
    shares: ShareSet | None = None

    def current(self) -> Generation:
        return Generation(
            number=self.generation,
            mode=self.mode,
            key_kind=self.key_kind,
            kdf=self.kdf,
            kdf_salt=self.kdf_salt,
            hkdf_salt=self.hkdf_salt,
            token_label=self.token_label,
        )

    def generations(self) -> list[Generation]:
        """Every secret generation keyd needs, oldest first: the order unseal asks for them."""
        return [*(self.retained[g] for g in sorted(self.retained)), self.current()]

    def generation_of(self, number: int) -> Generation:
        return self.current() if number == self.generation else self.retained[number]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "generation": self.generation,
            "retained_generations": {str(g.number): g.to_json() for g in self.retained.values()},
            **self.current().to_json(),  # the current generation's fields sit at the top level
            "current_version": self.current_version,
            "min_decrypt_version": self.min_decrypt_version,
            "versions": {
                str(v.number): {
                    "created": v.created,
                    "kcv_nonce": b64(v.kcv_nonce),
                    "kcv": b64(v.kcv),
                    "encryptions_reserved": v.encryptions_reserved,
                    "token_label": v.token_label,
                    "generation": v.generation,
                }
                for v in sorted(self.versions.values(), key=lambda v: v.number)
            },
            **({"shares": self.shares.to_json(b64)} if self.shares is not None else {}),
        }

    @classmethod
    def from_json(cls, obj: Any) -> State:
        try:
            if obj["format"] != STATE_FORMAT:
                raise StateError(f"unsupported state format {obj['format']!r}")
            kdf = dict(obj["kdf"])
            kdf.pop("name", None)
            versions = {
                int(n): Version(
                    number=int(n),
                    created=float(v["created"]),
                    kcv_nonce=unb64(v["kcv_nonce"]),
                    kcv=unb64(v["kcv"]),
                    encryptions_reserved=int(v["encryptions_reserved"]),
                    token_label=v.get("token_label"),
                    generation=int(v.get("generation", 1)),
                )
                for n, v in obj["versions"].items()
            }
            retained = {
                int(g): Generation.from_json(int(g), o)
                for g, o in obj.get("retained_generations", {}).items()
            }
            state = cls(
                mode=str(obj["mode"]),
                key_kind=str(obj["key_kind"]),
                kdf={k: int(v) for k, v in kdf.items()},
                kdf_salt=unb64(obj["kdf_salt"]),
                hkdf_salt=unb64(obj["hkdf_salt"]),
                token_label=obj.get("token_label"),
                current_version=int(obj["current_version"]),
                min_decrypt_version=int(obj["min_decrypt_version"]),
                versions=versions,
                generation=int(obj.get("generation", 1)),
                retained=retained,
                shares=ShareSet.from_json(obj["shares"], unb64) if "shares" in obj else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"state file does not parse: {type(exc).__name__}") from exc
        if state.mode not in ("file", "pkcs11") or state.current_version not in state.versions:
            raise StateError("state file is inconsistent")
        # After a re-key the shares' generation may be a retained one: shares belong to whichever has them.
        split = [g for g in state.generations() if g.key_kind == "shares"]
        if (state.shares is not None) != bool(split) or any(g.mode != "file" for g in split):
            raise StateError("state file is inconsistent: custodian shares")
        if not 1 <= state.min_decrypt_version <= state.current_version:
            raise StateError("state file is inconsistent: min decrypt version")
        live = {g.number for g in state.generations()}
        if (
            any(n >= state.generation for n in state.retained)
            or any(g.mode not in ("file", "pkcs11") for g in state.retained.values())
            or any(v.generation not in live for v in state.versions.values())
            or state.versions[state.current_version].generation != state.generation
        ):
            raise StateError("state file is inconsistent: secret generations")
        return state


class StateStore:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "state.json"

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> State:
        try:
            return State.from_json(read_json(self.path))
        except FileNotFoundError:
            raise StateError(f"no state at {self.path}: run `python -m keyd init` first") from None
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {self.path}: {exc}") from exc

    def save(self, state: State) -> None:
        atomic_write_json(self.path, state.to_json())


# The dot-names are temporary files older versions could leave behind after a crash.
KEYD_FILES = {"state.json", "budgets.json", "events.jsonl", ".state.json.tmp", ".budgets.json.tmp"}


def _keyd_file(name: str) -> bool:
    return name in KEYD_FILES or any(atomic.is_temp(name, of=f) for f in ("state.json", "budgets.json"))


def hand_over(path: Path, uid: int, gid: int) -> None:
    """Give the state directory and its files to keyd's user, when root made them.

    `keyd init` and a hand-started `serve` run as root; the unit runs keyd unprivileged from the start,
    and it could then neither read a root-owned state.json nor append to the event spool.
    """
    if os.geteuid() != 0 or uid == 0:
        return
    for p in [path, *path.iterdir()]:
        os.lchown(p, uid, gid)


def make_state_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not path.is_dir() or path.is_symlink():
        raise StateError(f"{path} is not a directory")
    others = sorted(n for n in os.listdir(path) if not _keyd_file(n))
    if others:
        # keyd chmods (and at serve, chowns) this directory: never /var/lib itself.
        raise StateError(f"{path} holds other files ({others[0]}...): give keyd a directory of its own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
