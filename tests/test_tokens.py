"""The pure rule of who may read what over the API (ledger/people/tokens.py): no server, no database."""

from __future__ import annotations

import pytest

from ledger.people.tokens import (
    DAY_MS,
    Allowed,
    Denied,
    Grant,
    Scope,
    ScopeError,
    TokenRecord,
    decide,
    districts_readable,
    new_token,
    parse_scope,
    parse_until,
    secret_matches,
    split_token,
)

NOW = 1_800_000_000_000


def agency(*scopes: str, expires: int = NOW + DAY_MS, revoked: int | None = None) -> TokenRecord:
    return TokenRecord(
        "0123456789ab", "agency", "gis", tuple(parse_scope(s) for s in scopes), NOW - DAY_MS, expires, revoked
    )


def test_a_token_is_shown_once_and_checked_by_its_hash() -> None:
    token_id, token, stored = new_token()
    parts = split_token(token)
    assert parts is not None and parts[0] == token_id
    assert secret_matches(stored, parts[1])
    assert not secret_matches(stored, parts[1][:-1] + ("A" if parts[1][-1] != "A" else "B"))
    assert token.split("_")[-1] not in stored  # the stored form is not the secret
    for bad in ("", "clt", "clt_xyz_" + "a" * 40, "bearer " + token, token.replace("clt_", "abc_")):
        assert split_token(bad) is None


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("d01:readings", Scope(("d01",), ("readings",), False)),
        ("d02,d01:bills,readings:write", Scope(("d01", "d02"), ("bills", "readings"), True)),
        ("all:all", Scope(("all",), ("all",), False)),
    ],
)
def test_scopes_parse(text: str, scope: Scope) -> None:
    assert parse_scope(text) == scope
    assert parse_scope(scope.text()) == scope


@pytest.mark.parametrize("text", ["d01", "d01:weather", "D1:readings", "d01:readings:admin", ":readings", "d01::"])
def test_bad_scopes_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_own_scope_covers_its_districts_datasets_and_mode() -> None:
    t = agency("d01:readings,bills", "all:payments:write")
    assert decide(t, (), "d01", "readings", False, NOW) == Allowed()
    assert isinstance(decide(t, (), "d02", "readings", False, NOW), Denied)
    assert isinstance(decide(t, (), "d01", "readings", True, NOW), Denied)  # read-only there
    assert decide(t, (), "d07", "payments", True, NOW) == Allowed()
    assert isinstance(decide(t, (), None, "readings", False, NOW), Denied)  # a city-wide list needs "all"


def test_a_grant_lets_an_agency_read_one_dataset_of_one_district_while_it_lasts() -> None:
    t = agency("d01:readings")
    g = Grant("g-1", "d02", "gis", "readings", NOW - 10, NOW + 100)
    assert decide(t, (g,), "d02", "readings", False, NOW) == Allowed("g-1")
    assert isinstance(decide(t, (g,), "d02", "bills", False, NOW), Denied)  # another dataset
    assert isinstance(decide(t, (g,), "d02", "readings", True, NOW), Denied)  # grants are read-only
    assert isinstance(decide(t, (g,), "d02", "readings", False, NOW + 100), Denied)  # expired
    revoked = Grant("g-1", "d02", "gis", "readings", NOW - 10, NOW + 100, revoked_at=NOW - 1)
    assert isinstance(decide(t, (revoked,), "d02", "readings", False, NOW), Denied)
    other = Grant("g-2", "d02", "billing", "readings", NOW - 10, NOW + 100)
    assert isinstance(decide(t, (other,), "d02", "readings", False, NOW), Denied)  # someone else's grant
    assert districts_readable(t, (g,), "readings", NOW) == ("d01", "d02")


def test_an_expired_or_revoked_token_may_do_nothing() -> None:
    assert isinstance(decide(agency("all:all", expires=NOW), (), "d01", "readings", False, NOW), Denied)
    assert isinstance(decide(agency("all:all", revoked=NOW - 1), (), "d01", "readings", False, NOW), Denied)
    assert districts_readable(agency("all:all", expires=NOW), (), "readings", NOW) == ()


def test_until_takes_a_date_or_days_and_refuses_the_past() -> None:
    assert parse_until("30d", NOW) == NOW + 30 * DAY_MS
    assert parse_until("2027-02-01", NOW) == 1801440000000  # 2027-02-01T00:00:00Z
    assert parse_until("2027-01-15T10:00:00+01:00", NOW) == NOW + 3_600_000  # 09:00Z, an hour after NOW
    for bad in ("0d", "9999d", "2020-01-01", "tomorrow", "2027-02-01T00:00:00", "2027-01-15T08:00:00Z"):
        with pytest.raises(ScopeError):
            parse_until(bad, NOW)
