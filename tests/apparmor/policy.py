"""What the AppArmor parser compiles a profile into, in a form a test can ask questions of.

`apparmor_parser -D rule-exprs` prints every file rule of the profile after includes, variables
and globs were resolved, as the regular expression the kernel's DFA is built from, with its
permission mask and whether it is a deny rule. Matching a path against all of them gives the same
answer the kernel gives (deny wins over allow) for plain file access; it does not model exec
transitions or owner-conditional rules (owner rules count as granting: the stricter reading).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Permission bits of the compiled file rules (the "other" set is the same bits shifted by 14).
PERMS = {"x": 0x1, "w": 0x2, "r": 0x4, "a": 0x8, "l": 0x10, "k": 0x20, "m": 0x40}
_OTHER_SHIFT = 14
_RULE = re.compile(r"^rule: (?P<regex>.*?)  ->  .*? (?P<deny>deny )?\((?P<mask>0x[0-9a-f]+)/")


@dataclass(frozen=True)
class FileRule:
    pattern: re.Pattern[str]
    mask: int
    deny: bool


@dataclass(frozen=True)
class Decision:
    granted: int  # bits some allow rule gives
    denied: int  # bits some deny rule takes away

    def allows(self, perms: str) -> bool:
        bits = mask_of(perms)
        return self.granted & bits == bits and not self.denied & bits


def mask_of(perms: str) -> int:
    mask = 0
    for p in perms:
        mask |= PERMS[p]
    return mask


def _fold(mask: int) -> int:
    low = (1 << _OTHER_SHIFT) - 1
    return (mask & low) | ((mask >> _OTHER_SHIFT) & low)


def run_parser(parser: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # -Q: compile only (there is no AppArmor in this kernel); -K -T: no cache.
    return subprocess.run(
        [parser, "-Q", "-K", "-T", *extra, str(profile)], capture_output=True, text=True, check=False
    )


def compiled_file_rules(parser: str, profile: Path) -> list[FileRule]:
    res = run_parser(parser, profile, "-D", "rule-exprs")
    assert res.returncode == 0, res.stderr
    rules = []
    for line in (res.stdout + res.stderr).splitlines():
        m = _RULE.match(line)
        if m is None:
            continue
        rules.append(
            FileRule(re.compile(m["regex"], re.DOTALL), _fold(int(m["mask"], 16)), deny=bool(m["deny"]))
        )
    assert rules, "the parser printed no rules: has its -D rule-exprs output changed?"
    return rules


def decide(rules: list[FileRule], path: str) -> Decision:
    granted = denied = 0
    for rule in rules:
        if rule.pattern.fullmatch(path):
            if rule.deny:
                denied |= rule.mask
            else:
                granted |= rule.mask
    return Decision(granted, denied)


def preprocessed(parser: str, profile: Path) -> str:
    """The profile text with every include inlined (`-p`)."""
    res = run_parser(parser, profile, "-p")
    assert res.returncode == 0, res.stderr
    return res.stdout


def statements(text: str) -> list[str]:
    """Rule statements (comment-free, whitespace-normalised, without the trailing comma)."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.endswith(","):
            out.append(" ".join(line[:-1].split()))
    return out


_FAMILY = re.compile(r"(\w+)(?:\s*\{([^}]*)\})?")


def _families(text: str) -> dict[str, frozenset[str]]:
    return {m[1]: frozenset((m[2] or "ALL").split()) for m in _FAMILY.finditer(text)}


def compiled_network(parser: str, profile: Path, *extra: str) -> tuple[dict[str, frozenset[str]], ...]:
    """(allowed, denied) network rules after includes, variables and conditionals were evaluated (`-d`
    prints the profile the parser built): family -> socket types, {"ALL"} for the whole family."""
    res = run_parser(parser, profile, "-d", *extra)
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    split = (line.partition(": ") for line in out.splitlines())
    lines = {k: v for k, _, v in split if k in ("Network", "Deny Net")}
    return _families(lines.get("Network", "")), _families(lines.get("Deny Net", ""))
