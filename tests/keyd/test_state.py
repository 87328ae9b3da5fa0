"""keyd/state.py: the state directory is keyd's alone, crash leftovers of its own writes included."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyd.state import StateError, atomic_write_json, make_state_dir, read_json

# (a file found in the state directory, does keyd still take the directory?)
FOUND = [
    ("state.json", True),
    ("events.jsonl", True),
    (".state.json.tmp", True),  # what older versions left after a crash
    (".budgets.json.0123456789abcdef.tmp", True),  # what common/atomic leaves after a crash
    (".state.json.0123456789abcdef.tmp", True),
    (".other.json.0123456789abcdef.tmp", False),
    ("someone-elses.db", False),
    (".state.json.0123456789abcdef.tmp.bak", False),
]


@pytest.mark.parametrize(("name", "taken"), FOUND, ids=[f[0] for f in FOUND])
def test_state_dir_takes_only_keyds_files(tmp_path: Path, name: str, taken: bool) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / name).write_bytes(b"")
    if taken:
        make_state_dir(state)
    else:
        with pytest.raises(StateError, match="give keyd a directory of its own"):
            make_state_dir(state)


def test_json_is_written_private_and_whole(tmp_path: Path) -> None:
    make_state_dir(tmp_path / "state")
    path = tmp_path / "state" / "state.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2]})
    atomic_write_json(path, {"mode": "raw"})
    assert read_json(path) == {"mode": "raw"}
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
