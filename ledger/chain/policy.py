"""C2SP tlog-policy: which logs and witnesses a verifier trusts, and which cosigners suffice.

Why a policy file rather than our own settings: it is the format the transparency-log
tools share (sigsum, litewitness and others read and write it), so an auditor can hand
the same file to our verifier and to theirs, and the ledger can publish the policy under
which it collects cosignatures (PROTOCOL.md section 7: "The ledger publishes a
checkpoint only with the cosignatures that its witness policy requires"). The
specification is copied in shared/specs/c2sp/tlog-policy.md.

Parsing is strict, and every refusal names its line: a policy decides what is trusted,
so a typo must stop the reader rather than quietly weaken the quorum. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ledger.chain.notes import ALG_COSIGNATURE, ALG_ED25519, Note, NoteError, Verifier, parse_vkey, verify_cosignature
from ledger.errors import Refused

__all__ = [
    "NONE",
    "MAX_LOGS",
    "MAX_WITNESSES",
    "MAX_GROUPS",
    "PolicyError",
    "PolicyLog",
    "PolicyWitness",
    "Group",
    "Policy",
    "parse_policy",
    "format_policy",
    "quorum_of",
]

NONE = "none"
"""The predefined name: `quorum none` requires no cosignature; it is never a group member."""

MAX_LOGS = 256
MAX_WITNESSES = 256
MAX_GROUPS = 256
"""Limits on a policy's size: the spec recommends supporting at least 32 of each."""

_WHITESPACE = re.compile(r"[ \t]+")
_FORBIDDEN_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tlog-policy.md "Character set", newline split off
_THRESHOLD = re.compile(r"[1-9][0-9]*", re.ASCII)


class PolicyError(Refused):
    """A policy file that tlog-policy.md (or this project's use of it) does not allow."""


@dataclass(frozen=True)
class PolicyLog:
    """A `log <vkey> [<url>]` line: a log the verifier accepts checkpoints from (key type 0x01)."""

    verifier: Verifier
    url: str | None = None


@dataclass(frozen=True)
class PolicyWitness:
    """A `witness <name> <vkey> [<url>]` line: a cosigner (key type 0x04) known by `name` here."""

    name: str
    verifier: Verifier
    url: str | None = None


@dataclass(frozen=True)
class Group:
    """A `group <name> <k> <member>...` line: witnessed when `threshold` of its members are.

    `rule` is the threshold as written ("all", "any" or a decimal), so the file can be written
    back as it was read.
    """

    name: str
    rule: str
    members: tuple[str, ...]

    @property
    def threshold(self) -> int:
        if self.rule == "all":
            return len(self.members)
        if self.rule == "any":
            return 1
        return int(self.rule)


@dataclass(frozen=True)
class Policy:
    """A parsed policy: logs, witnesses and groups in the order they were defined, and the quorum.

    Built by `parse_policy`; building one directly runs the same checks (a Policy that
    exists is a valid one), with the definitions taken to come in the order
    logs, witnesses, groups.
    """

    logs: tuple[PolicyLog, ...] = ()
    witnesses: tuple[PolicyWitness, ...] = ()
    groups: tuple[Group, ...] = ()
    quorum: str = NONE

    def __post_init__(self) -> None:
        builder = _Builder()
        for log in self.logs:
            builder.add_log(log)
        for witness in self.witnesses:
            builder.add_witness(witness)
        for group in self.groups:
            builder.add_group(group)
        builder.set_quorum(self.quorum)

    # ---- what the policy trusts

    def witness(self, name: str) -> PolicyWitness | None:
        return next((w for w in self.witnesses if w.name == name), None)

    def witness_keys(self) -> dict[str, Verifier]:
        """Witness name -> its cosignature key."""
        return {w.name: w.verifier for w in self.witnesses}

    def witness_urls(self) -> dict[str, str]:
        """Witness name -> URL, for the witnesses that have one (where the ledger asks for cosignatures)."""
        return {w.name: w.url for w in self.witnesses if w.url is not None}

    def log_keys(self) -> list[Verifier]:
        return [log.verifier for log in self.logs]

    def log_for(self, origin: str) -> list[Verifier]:
        """The log keys whose name is this origin (the key name of a log is its origin line)."""
        return [log.verifier for log in self.logs if log.verifier.name == origin]

    # ---- the quorum

    def satisfied(self, cosigned: Iterable[str]) -> bool:
        """Whether witnesses of these names cosigning meets the quorum. Unknown names count for nothing."""
        if self.quorum == NONE:
            return True
        present = set(cosigned)
        groups = {g.name: g for g in self.groups}
        memo: dict[str, bool] = {}

        def witnessed(name: str) -> bool:
            # Groups refer only to names defined before them, so this recursion ends; the memo keeps
            # a group shared by many others from being evaluated more than once.
            if name not in memo:
                group = groups.get(name)
                if group is None:
                    memo[name] = name in present
                else:
                    memo[name] = sum(witnessed(m) for m in group.members) >= group.threshold
            return memo[name]

        return witnessed(self.quorum)

    def cosigners(self, note: Note) -> set[str]:
        """The names of the policy's witnesses whose cosignature in the note verifies."""
        return {w.name for w in self.witnesses if verify_cosignature(note, w.verifier) is not None}

    def requires_cosignatures(self) -> bool:
        return self.quorum != NONE


def parse_policy(text: str | bytes) -> Policy:
    """Read a policy file as tlog-policy.md defines it; PolicyError naming the line otherwise.

    Refused: characters other than tab, newline, 0x20-0x7E and non-ASCII; a last line without
    its newline; unknown keywords; wrong numbers of items; vkeys that do not parse, a log key
    not of type 0x01 or a witness key not of type 0x04; the same public key on two log lines or
    two witness lines; a name defined twice, or `none` defined; a group member or quorum that
    is not defined on a preceding line; a member listed twice in one group; a threshold that is
    not `all`, `any` or a decimal k with 1 <= k <= n (no leading zeros); no quorum line, or two.
    Bytes must be UTF-8 (the spec lets names be any octets, but recommends UTF-8; our key
    names must be UTF-8 anyway).
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"the policy is not UTF-8 (byte {exc.start})") from exc
    if not isinstance(text, str):
        raise PolicyError("a policy is text")
    lines = text.split("\n")
    if lines[-1] != "":
        raise PolicyError(f"line {len(lines)}: not terminated by a newline")
    builder = _Builder()
    quorum_line = 0
    for number, line in enumerate(lines[:-1], start=1):
        try:
            bad = _FORBIDDEN_CHAR.search(line)
            if bad:
                raise PolicyError(f"the character {bad.group()!r} is not allowed in a policy")
            items = _WHITESPACE.split(line.strip(" \t"))
            if items == [""] or items[0].startswith("#"):
                continue
            keyword, args = items[0], items[1:]
            if keyword == "log":
                _arity(keyword, args, 1, 2, "log <vkey> [<url>]")
                builder.add_log(PolicyLog(_vkey(args[0], ALG_ED25519, "log"), _url(args, 1)))
            elif keyword == "witness":
                _arity(keyword, args, 2, 3, "witness <name> <vkey> [<url>]")
                builder.add_witness(PolicyWitness(args[0], _vkey(args[1], ALG_COSIGNATURE, "witness"), _url(args, 2)))
            elif keyword == "group":
                if len(args) < 3:
                    raise PolicyError("a group line is: group <name> <all|any|k> <name>...")
                builder.add_group(Group(args[0], args[1], tuple(args[2:])))
            elif keyword == "quorum":
                _arity(keyword, args, 1, 1, "quorum <name>")
                if quorum_line:
                    raise PolicyError(f"a second quorum line (the first is line {quorum_line})")
                builder.set_quorum(args[0])
                quorum_line = number
            else:
                raise PolicyError(f"unknown keyword {keyword[:40]!r} (log, witness, group or quorum)")
        except PolicyError as exc:
            raise PolicyError(f"line {number}: {exc}") from None
    if not quorum_line:
        raise PolicyError("the policy has no quorum line")
    return Policy(builder.logs, builder.witnesses, builder.groups, builder.quorum)


def format_policy(policy: Policy) -> str:
    """The policy as a file: logs, witnesses, groups, the quorum. `parse_policy` reads it back equal."""
    out: list[str] = []
    for log in policy.logs:
        out.append(" ".join(["log", log.verifier.vkey(), *([log.url] if log.url else [])]))
    for w in policy.witnesses:
        out.append(" ".join(["witness", w.name, w.verifier.vkey(), *([w.url] if w.url else [])]))
    for g in policy.groups:
        out.append(" ".join(["group", g.name, g.rule, *g.members]))
    out.append(f"quorum {policy.quorum}")
    return "".join(line + "\n" for line in out)


def quorum_of(policy: Policy) -> str:
    """The quorum in words, for people: "none", "X1", "2 of X1, X2, X3",
    "all of (2 of X1, X2, X3), (any of Y1, Y2)"."""
    if policy.quorum == NONE:
        return "none (no cosignature required)"
    groups = {g.name: g for g in policy.groups}

    def words(name: str, nested: bool) -> str:
        group = groups.get(name)
        if group is None:
            return name
        members = [words(m, True) for m in group.members]
        if len(members) == 1:
            return members[0]
        k, n = group.threshold, len(members)
        head = "all" if k == n else "any" if k == 1 else str(k)
        said = f"{head} of {', '.join(members)}"
        return f"({said})" if nested else said

    return words(policy.quorum, False)


# ---------------------------------------------------------------- the rules, once


def _arity(keyword: str, args: list[str], least: int, most: int, form: str) -> None:
    if not least <= len(args) <= most:
        raise PolicyError(f"a {keyword} line is: {form}")


def _url(args: list[str], at: int) -> str | None:
    return args[at] if len(args) > at else None


def _vkey(text: str, alg: int, role: str) -> Verifier:
    try:
        verifier = parse_vkey(text)
    except NoteError as exc:
        raise PolicyError(f"the {role} key: {exc}") from None
    if verifier.alg != alg:
        kind = "an Ed25519 note key (type 0x01)" if alg == ALG_ED25519 else "a cosignature key (type 0x04)"
        raise PolicyError(f"a {role} key must be {kind}, not type 0x{verifier.alg:02x}")
    return verifier


class _Builder:
    """The definition rules, applied one definition at a time in file order (so "defined on a
    preceding line" is "already added"). Used by `parse_policy` and by `Policy` itself."""

    def __init__(self) -> None:
        self.logs: tuple[PolicyLog, ...] = ()
        self.witnesses: tuple[PolicyWitness, ...] = ()
        self.groups: tuple[Group, ...] = ()
        self.quorum = NONE
        self._names: set[str] = set()
        self._log_keys: set[bytes] = set()
        self._witness_keys: set[bytes] = set()

    def add_log(self, log: PolicyLog) -> None:
        if not isinstance(log, PolicyLog) or log.verifier.alg != ALG_ED25519:
            raise PolicyError("a log key must be an Ed25519 note key (type 0x01)")
        _check_url(log.url)
        if log.verifier.public_key in self._log_keys:
            raise PolicyError(f"duplicate log: the key of {log.verifier.name} is already listed")
        if len(self.logs) >= MAX_LOGS:
            raise PolicyError(f"more than {MAX_LOGS} logs")
        self._log_keys.add(log.verifier.public_key)
        self.logs += (log,)

    def add_witness(self, witness: PolicyWitness) -> None:
        if not isinstance(witness, PolicyWitness) or witness.verifier.alg != ALG_COSIGNATURE:
            raise PolicyError("a witness key must be a cosignature key (type 0x04)")
        self._define(witness.name)
        _check_url(witness.url)
        if witness.verifier.public_key in self._witness_keys:
            raise PolicyError(f"duplicate witness: {witness.name}'s key is already listed")
        if len(self.witnesses) >= MAX_WITNESSES:
            raise PolicyError(f"more than {MAX_WITNESSES} witnesses")
        self._witness_keys.add(witness.verifier.public_key)
        self._names.add(witness.name)
        self.witnesses += (witness,)

    def add_group(self, group: Group) -> None:
        if not isinstance(group, Group) or not isinstance(group.members, tuple):
            raise PolicyError("a group must be a Group with a tuple of members")
        self._define(group.name)
        if not group.members:
            raise PolicyError(f"group {group.name} has no members")
        seen: set[str] = set()
        for member in group.members:
            _check_name(member)
            if member == NONE:
                raise PolicyError("none cannot be a group member")
            if member not in self._names:
                raise PolicyError(f"group member {member[:64]!r} is not defined on a preceding line")
            if member in seen:
                raise PolicyError(f"{member[:64]!r} is listed twice in group {group.name}")
            seen.add(member)
        n = len(group.members)
        if group.rule not in ("all", "any"):
            if not isinstance(group.rule, str) or not _THRESHOLD.fullmatch(group.rule):
                raise PolicyError(f"a group threshold is all, any or a decimal from 1 to n, not {group.rule!r}")
            if int(group.rule) > n:
                raise PolicyError(f"threshold {group.rule} of group {group.name} is more than its {n} members")
        if len(self.groups) >= MAX_GROUPS:
            raise PolicyError(f"more than {MAX_GROUPS} groups")
        self._names.add(group.name)
        self.groups += (group,)

    def set_quorum(self, name: str) -> None:
        _check_name(name)
        if name != NONE and name not in self._names:
            raise PolicyError(f"the quorum {name[:64]!r} is not a witness or group defined on a preceding line")
        self.quorum = name

    def _define(self, name: str) -> None:
        _check_name(name)
        if name == NONE:
            raise PolicyError("none is predefined and cannot be defined again")
        if name in self._names:
            raise PolicyError(f"the name {name[:64]!r} is already defined")


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name or _WHITESPACE.search(name) or _FORBIDDEN_CHAR.search(name):
        raise PolicyError(f"{str(name)[:64]!r} is not a name (one item without whitespace or control characters)")


def _check_url(url: object) -> None:
    if url is None:
        return
    if not isinstance(url, str) or not url or _WHITESPACE.search(url) or _FORBIDDEN_CHAR.search(url):
        raise PolicyError(f"{str(url)[:64]!r} is not a URL (one item without whitespace or control characters)")
