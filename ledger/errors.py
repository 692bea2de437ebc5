"""One exception tree: every error cityledger raises on purpose is a `LedgerError`.

Why one tree: a caller (the CLI, the dashboard, another municipality's system over the
socket) must tell "nothing there" from "not allowed" from "try later" without knowing
which module raised it. Each family below says which; a module's own class (a bill that
cannot be made, a tariff file that does not parse) derives from one of them. The local
API's socket carries the class's name and family, and the client raises the same class
again (ledger/service/rpc.py), so `except NotFound` works alike in and out of process.

The families also derive from the built-in they stand for (`KeyError`, `ValueError`,
`RuntimeError`), so code written against those keeps working.

Errors are for the caller; anything else that escapes is a bug, and the socket reports it
as `InternalError` with the trace in the ledger's log.
"""

from __future__ import annotations


class LedgerError(Exception):
    """The base: an error raised on purpose, its message meant for the caller."""


class NotFound(LedgerError, KeyError):
    """Nothing there for this caller: it does not exist, or it is not theirs to see."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Refused(LedgerError, ValueError):
    """The request is not acceptable as it stands (bad input, a rule, a conflict); the message says why."""


class Unauthenticated(Refused):
    """No valid credential came with the request (the HTTP API's 401)."""


class NotAllowed(Refused):
    """The caller is known, and its scope does not cover this request (the HTTP API's 403)."""


class Conflict(Refused):
    """The request contradicts one made before (an Idempotency-Key reused for another request)."""


class TooLarge(Refused):
    """The request is larger than the API takes, or asks for more than one answer may hold."""


class Unavailable(LedgerError, RuntimeError):
    """The ledger cannot serve the request now (no ledger yet, a part restarting): retry later."""


class Busy(Unavailable):
    """Every worker of the ledger's API is taken and the waiting line is full; nothing was run."""


class RateLimited(Busy):
    """The caller sent more requests than its rate allows; `retry_after` says when to try again (s)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InternalError(LedgerError, RuntimeError):
    """A bug on the other side of the socket; its trace is in the ledger's log."""


FAMILIES: tuple[type[LedgerError], ...] = (NotFound, Refused, Busy, Unavailable, InternalError)


def family(exc: BaseException) -> type[LedgerError]:
    """The family a raised error belongs to; built-ins as the API has always answered them."""
    for cls in FAMILIES:
        if isinstance(exc, cls):
            return cls
    if isinstance(exc, LookupError):
        return NotFound
    if isinstance(exc, FileNotFoundError):
        return Unavailable
    if isinstance(exc, (ValueError, TypeError)):
        return Refused
    return InternalError


def by_name(name: str) -> type[LedgerError] | None:
    """The LedgerError subclass of that name among those this process has imported."""
    todo: list[type[LedgerError]] = [LedgerError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return None
