"""Who may sign in to the dashboard, and as what: citizens and operators, offline.

Passwords are kept only as Argon2id hashes (libsodium through PyNaCl, the
interactive limits: about 90 ms and 64 MiB per check here). Failed attempts are
throttled, not locked (ledger/people/signin.py): a lock is something a stranger can
set off against any citizen, since account ids are sequential.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.pwhash
from nacl.exceptions import InvalidkeyError
from typing_extensions import TypedDict

from ledger.documents import document

MIN_PASSWORD = 10
ALL_DISTRICTS = "all"


@document
class PrincipalDoc(TypedDict):
    """A principal as JSON."""

    role: str  # citizen | operator
    id: str
    name: str
    districts: list[str]  # operators only (["all"]: the whole city); [] for a citizen


@dataclass(frozen=True)
class Principal:
    """A signed-in person: a citizen holding one account, or an operator of some districts."""

    role: str  # "citizen" | "operator"
    id: str
    name: str
    districts: tuple[str, ...] = ()  # operators only; ("all",) for the whole city

    def sees_district(self, district: str) -> bool:
        return self.role == "operator" and (ALL_DISTRICTS in self.districts or district in self.districts)

    def as_dict(self) -> PrincipalDoc:
        return {"role": self.role, "id": self.id, "name": self.name, "districts": list(self.districts)}


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
    return nacl.pwhash.argon2id.str(
        password.encode(),
        opslimit=nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
        memlimit=nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
    ).decode()


def check_password(stored: str, password: str) -> bool:
    try:
        return nacl.pwhash.verify(stored.encode(), password.encode())
    except (InvalidkeyError, ValueError, TypeError):
        return False


def parse_districts(text: str) -> tuple[str, ...]:
    """`d01,d02` or `all`."""
    from ledger.chain.protocol import valid_district

    parts = tuple(sorted({p.strip() for p in text.split(",") if p.strip()}))
    if parts == (ALL_DISTRICTS,):
        return parts
    bad = [p for p in parts if not valid_district(p)]
    if not parts or bad:
        raise ValueError(f"districts must be `all` or a list like d01,d02 (not {', '.join(bad) or 'nothing'})")
    return parts
