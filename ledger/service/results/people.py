"""What the API answers about the dashboard's people: passwords, operators and disputes
(ledger/service/operations/people.py, ledger/service/api.py). A sign-in's outcome is
ledger/people/signin.py's (`OutcomeDoc`); repeated failed sign-ins are the store's
(ledger/store/signin.py: `RepeatedFailures`)."""

from __future__ import annotations

from typing_extensions import TypedDict

from ledger.documents import document


@document
class PasswordSet(TypedDict):
    role: str  # citizen | operator
    id: str
    password_set: bool


@document
class OperatorAdded(TypedDict):
    operator: str
    name: str
    districts: list[str]  # sorted district ids, or ["all"]


@document
class Operator(TypedDict):
    operator: str
    name: str
    districts: list[str]  # district ids, or ["all"]
    created_at: int


@document
class DisputePosted(TypedDict):
    id: str
    status: str  # open | answered | closed


@document
class DisputeMessage(TypedDict):
    at: int
    author: str
    status: str  # the dispute's status this message set
    message: str


@document
class Dispute(TypedDict):
    """A dispute with its messages, oldest first; `status` is its latest message's."""

    id: str
    account: str
    subject: str | None
    opened_at: int
    messages: list[DisputeMessage]
    status: str
