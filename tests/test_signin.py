"""Sign-in cannot be used against citizens (issue 15): growing waits instead of a hard lock.

The policy (ledger/people/signin.py) is pure and runs here on a fake clock. The writer's
`authenticate` runs on a real DuckDB ledger with real Argon2 checks, its clock
replaced by a fake one so that waits are exact and nothing sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from ledger.home import Home
from ledger.people import auth, signin
from ledger.people.signin import POLICY, Count, Counts, Rule, SignedIn, Throttled, Wrong
from ledger.service.api import local_api
from ledger.service.homes import initialize
from ledger.service.operations import billing as billing_ops
from ledger.service.operations import people as people_ops
from ledger.service.writer import LedgerWriter

PASSWORD = "the right horse staple"
T0 = 1_770_000_000_000
S = signin.SECOND_MS


# ---------------------------------------------------------------- the policy, on a fake clock


class Attempts:
    """A fake clock and stored counts, driven through the pure policy as the writer drives it."""

    def __init__(self) -> None:
        self.now = T0
        self.store: dict[str, Count] = {}

    def counts(self, keys: signin.Keys) -> Counts:
        return Counts(**{s: self.store.get(keys.of(s), Count()) for s in signin.SCOPES})

    def attempt(self, role: str, login: str, source: str, right: bool = False) -> signin.Wait | None:
        """None: the password was checked (and was `right` or not). Else the wait that refused it."""
        keys = signin.keys_for(role, login, source)
        counts = self.counts(keys)
        wait = signin.verdict(POLICY, counts, self.now)
        if wait is None:
            after = signin.after_success(counts, self.now) if right else signin.after_failure(POLICY, counts, self.now)
            self.store.update({keys.of(s): after.of(s) for s in signin.SCOPES})
        return wait

    def fail_when_allowed(self, login: str, source: str) -> int:
        """Wait exactly as long as told, then fail once; returns how long that was (ms)."""
        wait = self.attempt("citizen", login, source)
        if wait is None:
            return 0
        self.now += wait.retry_after_ms
        assert self.attempt("citizen", login, source) is None
        return wait.retry_after_ms


def test_a_rule_waits_nothing_for_its_free_failures_then_doubles_up_to_its_cap() -> None:
    rule = Rule(free=3, base_ms=S, cap_ms=60 * S, forget_ms=signin.HOUR_MS)
    assert [rule.wait_ms(n) // S for n in range(12)] == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert rule.wait_ms(10_000) == 60 * S  # no overflow, however many


def test_per_pair_waits_grow_and_stop_at_fifteen_minutes() -> None:
    a = Attempts()
    waits = [a.fail_when_allowed("hh-0001", "198.51.100.1") for _ in range(16)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3:8] == [1 * S, 2 * S, 4 * S, 8 * S, 16 * S]  # the pair binds (its wait is the longest)
    assert waits == sorted(waits) and max(waits) == 15 * signin.MINUTE_MS == waits[-1]


def test_per_account_waits_grow_across_sources_and_stop_at_a_minute() -> None:
    a = Attempts()
    waits = []
    for n in range(14):  # every attempt from a fresh address: only the account's count grows
        wait = a.attempt("citizen", "hh-0001", f"198.51.100.{n}")
        waits.append(0 if wait is None else wait.retry_after_ms)
        if wait is not None:
            assert wait.scope == "account"
            a.now += wait.retry_after_ms
            assert a.attempt("citizen", "hh-0001", f"198.51.100.{n}") is None
    assert waits == [0] * 5 + [1 * S, 2 * S, 4 * S, 8 * S, 16 * S, 32 * S, 60 * S, 60 * S, 60 * S]


def test_per_source_waits_grow_across_logins_with_a_higher_cap() -> None:
    a = Attempts()
    waits = []
    for n in range(34):  # a stranger walking through the sequential ids, one try each
        login = f"hh-{n:04d}"
        wait = a.attempt("citizen", login, "203.0.113.9")
        waits.append(0 if wait is None else wait.retry_after_ms)
        if wait is not None:
            assert wait.scope == "source"
            a.now += wait.retry_after_ms
            assert a.attempt("citizen", login, "203.0.113.9") is None
    assert waits[:20] == [0] * 20
    assert waits[20:25] == [1 * S, 2 * S, 4 * S, 8 * S, 16 * S]
    assert waits[-1] == 30 * signin.MINUTE_MS > POLICY.account.cap_ms


def test_an_ipv6_host_is_one_source_for_its_whole_64() -> None:
    assert signin.source_key("2001:db8:1:2::1") == signin.source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert signin.source_key("2001:db8:1:3::1") != signin.source_key("2001:db8:1:2::1")
    assert signin.source_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert signin.source_key("") == signin.LOCAL and signin.source_key("x" * 500) == "x" * signin.MAX_FIELD


def test_success_clears_the_pair_but_not_the_source() -> None:
    a = Attempts()
    for _ in range(4):
        a.fail_when_allowed("hh-0002", "198.51.100.1")
    assert a.attempt("citizen", "hh-0002", "198.51.100.1", right=True) is not None  # throttled: not even checked
    a.now += 10 * S
    assert a.attempt("citizen", "hh-0002", "198.51.100.1", right=True) is None  # signed in
    keys = signin.keys_for("citizen", "hh-0002", "198.51.100.1")
    assert a.store[keys.pair].failures == 0 and a.store[keys.source].failures == 4


def test_counts_are_forgotten_after_a_quiet_period() -> None:
    a = Attempts()
    for _ in range(8):
        a.fail_when_allowed("hh-0001", "198.51.100.1")
    a.now += signin.DAY_MS
    assert a.attempt("citizen", "hh-0001", "198.51.100.1") is None  # a fresh start: failure 1 again
    assert a.store[signin.keys_for("citizen", "hh-0001", "198.51.100.1").pair].failures == 1


def test_a_stranger_hammering_from_one_source_holds_a_citizen_elsewhere_back_at_most_the_account_cap() -> None:
    a = Attempts()
    stranger = "203.0.113.66"
    for _ in range(15):  # as fast as the stranger is allowed
        a.fail_when_allowed("hh-0001", stranger)
    for n in range(40):  # ten hours of attacks; the citizen tries right after each, from a new place each time
        citizen = f"198.51.100.{n}"
        wait = a.attempt("citizen", "hh-0001", citizen, right=True)  # (a throttled attempt counts for nothing)
        assert wait is not None and wait.scope == "account" and wait.retry_after_ms <= POLICY.account.cap_ms
        a.now += wait.retry_after_ms
        assert a.attempt("citizen", "hh-0001", citizen, right=True) is None  # in, once the account's wait passed
        assert a.fail_when_allowed("hh-0001", stranger) >= 15 * signin.MINUTE_MS - wait.retry_after_ms
    assert a.store[signin.keys_for("citizen", "hh-0001", stranger).pair].failures == 55


def test_from_a_source_where_the_citizen_signed_in_before_strangers_elsewhere_do_not_hold_them_back() -> None:
    a = Attempts()
    home = "198.51.100.20"
    assert a.attempt("citizen", "hh-0001", home, right=True) is None
    for n in range(30):  # many strangers, many addresses: the account's count is at its cap
        a.attempt("citizen", "hh-0001", f"203.0.113.{n}")
    assert a.attempt("citizen", "hh-0001", "192.0.2.1").scope == "account"  # a new place waits
    assert a.attempt("citizen", "hh-0001", home, right=True) is None  # home does not


def test_the_throttle_message_names_the_wait_and_never_whether_the_id_exists() -> None:
    assert signin.throttle_message("pair", 40) == (
        "Too many failed attempts for this account from here. Try again in 40 seconds."
    )
    assert signin.throttle_message("account", 1) == "Too many failed attempts for this account. Try again in 1 second."
    assert signin.throttle_message("source", 1800) == "Too many failed sign-ins from here. Try again in 30 minutes."


# ---------------------------------------------------------------- the writer, real ledger, fake clock


@dataclass
class Ledger:
    home: Home
    writer: LedgerWriter
    clock: list[int]
    checks: list[str]

    def sign_in(self, login: str, password: str, source: str, role: str = "citizen") -> signin.Outcome:
        return people_ops.authenticate(self.writer, role, login, password, source)

    def failures(self) -> list[tuple]:
        return sorted(
            self.writer.store.con.execute(
                "SELECT role, id, source, throttled, attempts FROM signin_failures"
            ).fetchall()
        )


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    home = Home(tmp_path / "home")
    initialize(home)
    w = LedgerWriter.open(home)
    billing_ops.add_account(w, "hh-0001", "Li Na", "residential")
    billing_ops.add_account(w, "hh-0002", "Wu Hao", "residential")
    for account in ("hh-0001", "hh-0002"):
        people_ops.set_password(w, "citizen", account, PASSWORD)
    w.enroll_device("wm-d01-000001", "water", "d01", SigningKey.generate().verify_key.encode().hex(), "hh-0001")
    w.enroll_device("wm-d02-000001", "water", "d02", SigningKey.generate().verify_key.encode().hex(), "hh-0002")
    people_ops.add_operator(w, "op-d01", "Wang Fang", "d01")
    clock = [T0]
    checks: list[str] = []
    real_check = auth.check_password

    def counted(stored: str, password: str) -> bool:
        checks.append(password)
        return real_check(stored, password)

    monkeypatch.setattr(people_ops, "now_ms", lambda: clock[0])
    monkeypatch.setattr(auth, "check_password", counted)
    try:
        yield Ledger(home, w, clock, checks)
    finally:
        w.close()


def test_a_throttled_attempt_says_so_with_its_wait_and_costs_no_password_check(ledger: Ledger) -> None:
    for _ in range(3):
        assert ledger.sign_in("hh-0001", "wrong password 1", "203.0.113.5") == Wrong()
    assert len(ledger.checks) == 3
    ledger.clock[0] += 400  # 0.6 s of the first wait left
    assert ledger.sign_in("hh-0001", PASSWORD, "203.0.113.5") == Throttled("pair", 1)
    assert len(ledger.checks) == 3  # refused before any Argon2 check, even with the right password
    ledger.clock[0] += 600
    found = ledger.sign_in("hh-0001", PASSWORD, "203.0.113.5")
    assert isinstance(found, SignedIn) and found.principal.id == "hh-0001" and found.principal.name == "Li Na"
    assert ledger.sign_in("hh-0001", "wrong password 2", "203.0.113.5") == Wrong()  # the pair starts again
    answer = local_api(ledger.home, ledger.writer).authenticate(
        role="citizen", principal="hh-0001", password="nope nope nope", source="203.0.113.5"
    )
    assert answer == {"outcome": "wrong"}


def test_an_unknown_id_is_counted_and_throttled_exactly_like_a_real_one(ledger: Ledger) -> None:
    for login in ("hh-0002", "hh-0404"):
        assert [ledger.sign_in(login, "wrong password", "203.0.113.5") for _ in range(3)] == [Wrong()] * 3
        assert ledger.sign_in(login, PASSWORD, "203.0.113.5") == Throttled("pair", 1)
    assert len(ledger.checks) == 6  # the unknown id cost an Argon2 check too (against the dummy hash)


def test_a_strangers_failures_do_not_keep_the_citizen_out_of_another_source(ledger: Ledger) -> None:
    stranger, citizen = "203.0.113.66", "198.51.100.20"
    for _ in range(8):  # the stranger fails whenever allowed
        wait = ledger.sign_in("hh-0001", "guess guess guess", stranger)
        if isinstance(wait, Throttled):
            ledger.clock[0] += wait.retry_after_s * S
            assert ledger.sign_in("hh-0001", "guess guess guess", stranger) == Wrong()
    held = ledger.sign_in("hh-0001", PASSWORD, citizen)
    assert isinstance(held, Throttled) and held.scope == "account"
    assert held.retry_after_s <= POLICY.account.cap_ms // S
    ledger.clock[0] += held.retry_after_s * S
    again = ledger.sign_in("hh-0001", "guess guess guess", stranger)
    assert isinstance(again, Throttled) and again.scope == "pair"  # the stranger's own wait is longer
    assert isinstance(ledger.sign_in("hh-0001", PASSWORD, citizen), SignedIn)
    ledger.clock[0] += 200 * S
    assert ledger.sign_in("hh-0001", "guess guess guess", stranger) == Wrong()  # the account's count is high again
    assert isinstance(ledger.sign_in("hh-0001", PASSWORD, citizen), SignedIn)  # but the citizen's place is known


def test_failed_sign_ins_are_logged_and_stored_without_the_password(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "my-secret-guess-42"
    caplog.set_level(logging.INFO, logger="cityledger.signin")
    for _ in range(3):
        ledger.sign_in("hh-0001", secret, "203.0.113.5")
    for _ in range(5):  # throttled: one row, one log line, five attempts
        assert isinstance(ledger.sign_in("hh-0001", secret, "203.0.113.5"), Throttled)
    ledger.sign_in("op-d01", secret, "203.0.113.7", role="operator")
    assert isinstance(ledger.sign_in("hh-0001", PASSWORD, "198.51.100.1"), SignedIn)  # success is no failure
    lines = [r.getMessage() for r in caplog.records if r.name == "cityledger.signin"]
    assert len(lines) == 5 and all("failed sign-in" in line for line in lines)
    assert "citizen 'hh-0001' from '203.0.113.5' throttled (pair, 1 s to wait" in lines[3]
    assert "operator 'op-d01' from '203.0.113.7' (wrong id or password)" in lines[4]
    assert secret not in caplog.text and PASSWORD not in caplog.text
    assert ledger.failures() == [("citizen", "hh-0001", "203.0.113.5", False, 1)] * 3 + [
        ("citizen", "hh-0001", "203.0.113.5", True, 5),
        ("operator", "op-d01", "203.0.113.7", False, 1),
    ]
    stored = ledger.writer.store.con.execute("SELECT * FROM signin_failures").fetchall()
    assert secret not in repr(stored)


def test_repeated_failures_are_listed_for_operators_within_their_districts(ledger: Ledger) -> None:
    for login, source, role in (
        ("hh-0001", "203.0.113.5", "citizen"),
        ("hh-0002", "203.0.113.6", "citizen"),
        ("op-d01", "203.0.113.7", "operator"),
        ("hh-9999", "203.0.113.7", "citizen"),
    ):
        for _ in range(3):
            ledger.sign_in(login, "wrong password", source, role)
    ledger.sign_in("hh-0001", "wrong password", "192.0.2.1")  # once only: not repeated
    api = local_api(ledger.home, ledger.writer)
    city = api.failed_sign_ins(since_ms=T0 - signin.HOUR_MS)
    assert {(r["role"], r["id"], r["failures"]) for r in city["logins"]} == {
        ("citizen", "hh-0001", 4),
        ("citizen", "hh-0002", 3),
        ("operator", "op-d01", 3),
        ("citizen", "hh-9999", 3),
    }
    assert {(r["source"], r["failures"], r["logins"]) for r in city["sources"]} == {
        ("203.0.113.5", 3, 1),
        ("203.0.113.6", 3, 1),
        ("203.0.113.7", 6, 2),
    }
    d01 = api.failed_sign_ins(districts=["d01"], since_ms=T0 - signin.HOUR_MS)
    assert [(r["id"], r["sources"]) for r in d01["logins"]] == [("hh-0001", 2)]  # no operator, no unknown id
    assert [r["source"] for r in d01["sources"]] == ["203.0.113.5"]
    assert api.failed_sign_ins(districts=[], since_ms=T0 - signin.HOUR_MS) == {"logins": [], "sources": []}
    assert api.failed_sign_ins(since_ms=T0 + 1) == {"logins": [], "sources": []}  # older than asked


def test_a_burst_of_parallel_attempts_gains_at_most_one_guess_and_every_failure_counts(ledger: Ledger) -> None:
    import threading

    for _ in range(2):
        ledger.sign_in("hh-0002", "wrong password", "203.0.113.5")
    start, results = threading.Barrier(6), []

    def attempt() -> None:
        start.wait(timeout=10)
        results.append(ledger.sign_in("hh-0002", "wrong password", "203.0.113.5"))

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    checked = len(ledger.checks) - 2
    assert 1 <= checked <= 2 and results.count(Wrong()) == checked  # one allowed, at most one more
    assert all(isinstance(r, Throttled) for r in results if r != Wrong())
    keys = signin.keys_for("citizen", "hh-0002", "203.0.113.5")
    counts = signin.load_counts(ledger.writer.store, keys)
    assert counts.pair.failures == counts.account.failures == 2 + checked  # none lost to a parallel write


def test_the_dashboard_takes_the_source_from_the_peer_or_a_local_proxy_only() -> None:
    from dashboard.session import source_from

    assert source_from("198.51.100.7", "203.0.113.1", behind_proxy=True) == "198.51.100.7"  # a remote peer: itself
    assert source_from(None, "203.0.113.1, 198.51.100.8", behind_proxy=True) == "198.51.100.8"  # the proxy's entry
    assert source_from(None, "203.0.113.1", behind_proxy=False) == signin.LOCAL  # anyone can write that header
    assert source_from(None, None, behind_proxy=True) == signin.LOCAL


def test_the_dashboard_reads_the_apis_answer_as_a_value() -> None:
    from dashboard import data

    assert data.sign_in_outcome({"outcome": "throttled", "scope": "account", "retry_after_s": 40}) == Throttled(
        "account", 40
    )
    assert data.sign_in_outcome({"outcome": "wrong"}) == Wrong() == data.sign_in_outcome(None)
    who = data.sign_in_outcome(
        {"outcome": "signed_in", "role": "operator", "id": "op-d01", "name": "Wang Fang", "districts": ["d01"]}
    )
    assert who == data.Principal("operator", "op-d01", "Wang Fang", ("d01",))


def test_over_the_ingests_socket_the_source_reaches_the_writer_and_operators_can_ask(ledger: Ledger) -> None:
    from ledger.service import rpc

    server, _ = rpc.serve(local_api(ledger.home, ledger.writer), ledger.home.rpc_socket)
    try:
        remote = rpc.open_ledger(ledger.home)
        assert isinstance(remote, rpc.RemoteLedger)
        answers = [
            remote.authenticate(role="citizen", principal="hh-0001", password="wrong password", source="203.0.113.9")[
                "outcome"
            ]
            for _ in range(4)
        ]
        assert answers == ["wrong", "wrong", "wrong", "throttled"]
        assert remote.authenticate(role="citizen", principal="hh-0001", password=PASSWORD)["outcome"] == "signed_in"
        listed = remote.failed_sign_ins(since_ms=T0 - 1)
        assert [(r["source"], r["failures"], r["throttled"]) for r in listed["sources"]] == [("203.0.113.9", 4, 1)]
    finally:
        rpc.stop(server, ledger.home.rpc_socket)
