"""C2SP tlog-policy files (ledger/chain/policy.py): parsing, the quorum, cosigners, writing back."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger.chain.notes import (
    ALG_COSIGNATURE,
    ALG_ED25519,
    Checkpoint,
    Note,
    Signature,
    cosign,
    make_verifier,
    sign_note,
    signed_checkpoint,
    verifier_key,
)
from ledger.chain.policy import (
    Group,
    Policy,
    PolicyError,
    PolicyLog,
    PolicyWitness,
    format_policy,
    parse_policy,
    quorum_of,
)
from ledger.errors import Refused

LOG_KEY = SigningKey(bytes.fromhex("2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40"))
LOG_VKEY = "cityledger.example/d01+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw"
NAMES = ("X1", "X2", "X3", "Y1", "Y2", "Y3")
KEYS = {name: SigningKey(bytes([i + 1]) * 32) for i, name in enumerate(NAMES)}


def wkey(name: str) -> str:
    """The cosignature vkey of the test witness `name`, whose key name is name.example."""
    return verifier_key(f"{name.lower()}.example", KEYS[name].verify_key.encode(), ALG_COSIGNATURE)


SPEC_EXAMPLE = f"""log {LOG_VKEY}

witness X1 {wkey("X1")}
witness X2 {wkey("X2")}
witness X3 {wkey("X3")}
group X-witnesses 2 X1 X2 X3

witness Y1 {wkey("Y1")}
witness Y2 {wkey("Y2")}
witness Y3 {wkey("Y3")}
group Y-witnesses any Y1 Y2 Y3

group X-and-Y all X-witnesses Y-witnesses
quorum X-and-Y
"""


def test_spec_example_parses() -> None:
    policy = parse_policy(SPEC_EXAMPLE)
    assert [w.name for w in policy.witnesses] == list(NAMES)
    assert [g.name for g in policy.groups] == ["X-witnesses", "Y-witnesses", "X-and-Y"]
    assert [g.threshold for g in policy.groups] == [2, 1, 2]
    assert policy.quorum == "X-and-Y"
    assert policy.log_for("cityledger.example/d01")[0].vkey() == LOG_VKEY
    assert policy.log_for("cityledger.example/city") == []
    assert policy.log_keys() == policy.log_for("cityledger.example/d01")
    assert policy.witness_urls() == {}
    assert policy.witness_keys()["X2"].vkey() == wkey("X2")
    assert policy.requires_cosignatures()


def test_spec_example_quorum_over_every_subset() -> None:
    policy = parse_policy(SPEC_EXAMPLE)
    for r in range(len(NAMES) + 1):
        for subset in itertools.combinations(NAMES, r):
            xs = sum(n.startswith("X") for n in subset)
            ys = sum(n.startswith("Y") for n in subset)
            assert policy.satisfied(set(subset)) == (xs >= 2 and ys >= 1), subset
    assert not policy.satisfied({"X-witnesses", "Y-witnesses", "X-and-Y"})  # group names are not cosigners
    assert not policy.satisfied({"someone", "else"})


def _policy(body: str) -> Policy:
    witnesses = "".join(f"witness {n} {wkey(n)}\n" for n in NAMES)
    return parse_policy(witnesses + body)


@pytest.mark.parametrize(
    "body, cosigned, expected",
    [
        ("quorum none\n", set(), True),
        ("quorum X1\n", {"X1"}, True),
        ("quorum X1\n", {"X2", "X3"}, False),
        ("group G any X1 X2 X3\nquorum G\n", {"X3"}, True),
        ("group G any X1 X2 X3\nquorum G\n", {"Y1"}, False),
        ("group G all X1 X2 X3\nquorum G\n", {"X1", "X2"}, False),
        ("group G all X1 X2 X3\nquorum G\n", {"X1", "X2", "X3"}, True),
        ("group G 3 X1 X2 X3 Y1\nquorum G\n", {"X1", "Y1", "X3"}, True),
        ("group G 3 X1 X2 X3 Y1\nquorum G\n", {"X1", "Y1"}, False),
        ("group G 1 X1\nquorum G\n", {"X1"}, True),
        ("group G all X1\nquorum G\n", set(), False),
        # Three levels: (X1 and X2) or (2 of Y1, Y2, Y3 and X3).
        ("group A all X1 X2\ngroup B 2 Y1 Y2 Y3\ngroup C all B X3\ngroup D any A C\nquorum D\n", {"X1", "X2"}, True),
        ("group A all X1 X2\ngroup B 2 Y1 Y2 Y3\ngroup C all B X3\ngroup D any A C\nquorum D\n", {"X1", "X3"}, False),
        (
            "group A all X1 X2\ngroup B 2 Y1 Y2 Y3\ngroup C all B X3\ngroup D any A C\nquorum D\n",
            {"Y1", "Y3", "X3"},
            True,
        ),
        ("group A all X1 X2\ngroup B 2 Y1 Y2 Y3\ngroup C all B X3\ngroup D any A C\nquorum D\n", {"Y1", "Y3"}, False),
        # A group shared by two others still counts once per group that lists it.
        (
            "group A any X1 X2\ngroup B all A Y1\ngroup C all A Y2\ngroup D all B C\nquorum D\n",
            {"X2", "Y1", "Y2"},
            True,
        ),
        ("group A any X1 X2\ngroup B all A Y1\ngroup C all A Y2\ngroup D all B C\nquorum D\n", {"X2", "Y1"}, False),
    ],
)
def test_quorum_evaluation(body: str, cosigned: set[str], expected: bool) -> None:
    assert _policy(body).satisfied(cosigned) is expected


def test_quorum_none_needs_no_witness_at_all() -> None:
    policy = parse_policy(f"log {LOG_VKEY}\nquorum none\n")
    assert policy.satisfied(set()) and not policy.requires_cosignatures()
    assert quorum_of(policy).startswith("none")
    assert parse_policy("quorum none\n") == Policy()


def test_whitespace_comments_and_urls() -> None:
    text = (
        "# a comment\n"
        "   # an indented comment with \u00e9\n"
        "\t\n"
        "\n"
        f"  log\t{LOG_VKEY}   https://ledger.example/d01/  \n"
        f"witness \u00c5ngstr\u00f6m {wkey('X1')} https://w1.example/\n"
        f"\twitness   X2\t\t{wkey('X2')}\n"
        "group g 2 \u00c5ngstr\u00f6m X2\t\n"
        "quorum g\n"
    )
    policy = parse_policy(text)
    assert policy.logs[0].url == "https://ledger.example/d01/"
    assert policy.witness_urls() == {"\u00c5ngstr\u00f6m": "https://w1.example/"}
    assert policy.satisfied({"\u00c5ngstr\u00f6m", "X2"})
    assert parse_policy(text.encode()) == policy


def test_names_are_opaque_not_normalised() -> None:
    # tlog-policy.md: "K" and the Kelvin sign are different names.
    policy = parse_policy(f"witness K {wkey('X1')}\nwitness \u212a {wkey('X2')}\ngroup G all K\nquorum G\n")
    assert policy.satisfied({"K"}) and not policy.satisfied({"\u212a"}) and not policy.satisfied({"k"})


# ---------------------------------------------------------------- refusals, each naming its line

W1, W2 = wkey("X1"), wkey("X2")


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "no quorum line"),
        ("# only a comment\n", "no quorum line"),
        ("quorum none", "line 1: not terminated"),
        ("quorum none\r\n", r"line 1: the character '\\r'"),
        ("quorum\x0bnone\n", "line 1: the character"),
        ("quorum none\x7f\n", "line 1: the character"),
        ("quorum none\nquorum none\n", "line 2: a second quorum line"),
        ("quorum X1\n", "line 1: the quorum 'X1' is not a witness or group defined"),
        (f"quorum X1\nwitness X1 {W1}\n", "line 1: the quorum"),
        ("quorum\n", "line 1: a quorum line is"),
        ("quorum a b\n", "line 1: a quorum line is"),
        ("Quorum none\n", "line 1: unknown keyword 'Quorum'"),
        ("logs x\n", "line 1: unknown keyword"),
        ("quorum none # trailing comment\n", "line 1: a quorum line is"),
        ("log\nquorum none\n", "line 1: a log line is"),
        (f"log {LOG_VKEY} url extra\nquorum none\n", "line 1: a log line is"),
        ("log not-a-vkey\nquorum none\n", "line 1: the log key:"),
        (f"log {W1}\nquorum none\n", r"line 1: a log key must be an Ed25519 note key \(type 0x01\)"),
        (f"log {LOG_VKEY}\nlog {LOG_VKEY}\nquorum none\n", "line 2: duplicate log"),
        (
            f"log {LOG_VKEY}\nlog {verifier_key('other.example/name', LOG_KEY.verify_key.encode())}\nquorum none\n",
            "line 2: duplicate log",
        ),
        (f"witness W {LOG_VKEY}\nquorum none\n", r"line 1: a witness key must be a cosignature key \(type 0x04\)"),
        (f"witness W {W1}\nwitness W {W2}\nquorum none\n", "line 2: the name 'W' is already defined"),
        (f"witness A {W1}\nwitness B {W1}\nquorum none\n", "line 2: duplicate witness"),
        (
            f"witness A {W1}\n"
            f"witness B {verifier_key('renamed.example', KEYS['X1'].verify_key.encode(), ALG_COSIGNATURE)}\n"
            "quorum none\n",
            "line 2: duplicate witness",
        ),
        (f"witness none {W1}\nquorum none\n", "line 1: none is predefined"),
        ("witness A\nquorum none\n", "line 1: a witness line is"),
        (f"witness A {W1} url more\nquorum none\n", "line 1: a witness line is"),
        (f"witness A {W1}\ngroup A any A\nquorum none\n", "line 2: the name 'A' is already defined"),
        (f"witness A {W1}\ngroup G any\nquorum none\n", "line 2: a group line is"),
        (f"witness A {W1}\ngroup G any B\nquorum none\n", "line 2: group member 'B' is not defined"),
        (f"witness A {W1}\ngroup G any A none\nquorum none\n", "line 2: none cannot be a group member"),
        (f"witness A {W1}\ngroup G any A A\nquorum none\n", "line 2: 'A' is listed twice"),
        (f"witness A {W1}\ngroup G 0 A\nquorum none\n", "line 2: a group threshold"),
        (f"witness A {W1}\ngroup G 01 A\nquorum none\n", "line 2: a group threshold"),
        (f"witness A {W1}\ngroup G -1 A\nquorum none\n", "line 2: a group threshold"),
        (f"witness A {W1}\ngroup G ALL A\nquorum none\n", "line 2: a group threshold"),
        (f"witness A {W1}\ngroup G 2 A\nquorum none\n", "line 2: threshold 2 of group G is more than its 1"),
        (f"witness A {W1}\ngroup G any G\nquorum none\n", "line 2: group member 'G' is not defined"),
        (f"group G any A\nwitness A {W1}\nquorum G\n", "line 1: group member 'A' is not defined on a preceding"),
        (f"witness A {W1}\ngroup G any A\ngroup G2 any G\ngroup G any G2\nquorum G\n", "line 4: the name 'G'"),
        (f"witness A {W1}\nquorum none\n\n#\nquorum A\n", "line 5: a second quorum line"),
    ],
)
def test_malformed_policy_refused(text: str, why: str) -> None:
    with pytest.raises(PolicyError, match=why):
        parse_policy(text)


def test_policy_error_is_refused() -> None:
    with pytest.raises(Refused):
        parse_policy(b"\xff\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        parse_policy(b"quorum none\xff\n")


def test_policy_built_directly_is_checked_too() -> None:
    x1 = PolicyWitness("X1", make_verifier("x1.example", KEYS["X1"].verify_key.encode(), ALG_COSIGNATURE))
    with pytest.raises(PolicyError):
        Policy(witnesses=(x1,), quorum="X2")
    with pytest.raises(PolicyError):
        Policy(witnesses=(x1,), groups=(Group("G", "2", ("X1",)),), quorum="G")
    with pytest.raises(PolicyError):
        Policy(logs=(PolicyLog(x1.verifier),))
    with pytest.raises(PolicyError):
        Policy(witnesses=(PolicyWitness("X1", make_verifier("x1.example", KEYS["X1"].verify_key.encode())),))
    with pytest.raises(PolicyError):
        Policy(witnesses=(PolicyWitness("X1", x1.verifier, "has space"),))
    assert Policy(witnesses=(x1,), quorum="X1").satisfied({"X1"})


# ---------------------------------------------------------------- cosigners from a note


def _note_cosigned_by(*names: str) -> Note:
    note = signed_checkpoint(Checkpoint("cityledger.example/d01", 2, b"\x11" * 32), [LOG_KEY])
    return note.with_signatures(*(cosign(note.text, f"{n.lower()}.example", KEYS[n], 1_764_000_000) for n in names))


def test_cosigners_are_the_witnesses_whose_cosignature_verifies() -> None:
    policy = parse_policy(SPEC_EXAMPLE)
    note = _note_cosigned_by("X1", "X3", "Y2")
    assert policy.cosigners(note) == {"X1", "X3", "Y2"}
    assert policy.satisfied(policy.cosigners(note))
    assert not policy.satisfied(policy.cosigners(_note_cosigned_by("X1", "Y1", "Y2", "Y3")))
    # A cosignature line that does not verify counts for nothing.
    good = _note_cosigned_by("X1", "X3")
    x3 = good.signatures[2]
    broken = Signature(x3.name, x3.key_id, x3.signature[:8] + bytes(64))
    note = Note(good.text, (*good.signatures[:2], broken))
    assert policy.cosigners(note) == {"X1"}
    # A plain Ed25519 signature by a witness key is not a cosignature.
    plain = good.with_signatures(sign_note(good.text, "y1.example", KEYS["Y1"]))
    assert "Y1" not in policy.cosigners(plain)


# ---------------------------------------------------------------- writing back, and in words


def test_format_round_trips() -> None:
    for text in (SPEC_EXAMPLE, "quorum none\n", f"log {LOG_VKEY} https://l.example/\nquorum none\n"):
        policy = parse_policy(text)
        assert parse_policy(format_policy(policy)) == policy
        assert format_policy(parse_policy(format_policy(policy))) == format_policy(policy)
    assert format_policy(parse_policy(SPEC_EXAMPLE)).splitlines()[-1] == "quorum X-and-Y"


def test_quorum_in_words() -> None:
    assert quorum_of(parse_policy(SPEC_EXAMPLE)) == "all of (2 of X1, X2, X3), (any of Y1, Y2, Y3)"
    assert quorum_of(_policy("group G 2 X1 X2 X3\nquorum G\n")) == "2 of X1, X2, X3"
    assert quorum_of(_policy("quorum Y2\n")) == "Y2"
    assert quorum_of(_policy("group G any X1\nquorum G\n")) == "X1"


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """A random valid policy over the six test witnesses, with groups nested at random."""
    witnesses = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True))
    verifiers = {
        n: make_verifier(f"{n.lower()}.example", KEYS[n].verify_key.encode(), ALG_COSIGNATURE) for n in witnesses
    }
    defined = list(witnesses)
    groups: list[Group] = []
    for i in range(draw(st.integers(0, 4))):
        members = tuple(draw(st.lists(st.sampled_from(defined), min_size=1, max_size=len(defined), unique=True)))
        rule = draw(st.sampled_from(["all", "any", *[str(k) for k in range(1, len(members) + 1)]]))
        groups.append(Group(f"g{i}", rule, members))
        defined.append(f"g{i}")
    quorum = draw(st.sampled_from(["none", *defined]))
    urls = [draw(st.none() | st.just(f"https://{n.lower()}.example/")) for n in witnesses]
    logs = (PolicyLog(make_verifier("cityledger.example/d01", LOG_KEY.verify_key.encode(), ALG_ED25519)),)
    return Policy(
        logs, tuple(PolicyWitness(n, verifiers[n], u) for n, u in zip(witnesses, urls)), tuple(groups), quorum
    )


def _brute(policy: Policy, cosigned: set[str]) -> bool:
    groups = {g.name: g for g in policy.groups}

    def ok(name: str) -> bool:
        if name in groups:
            g = groups[name]
            return sum(ok(m) for m in g.members) >= g.threshold
        return name in cosigned

    return policy.quorum == "none" or ok(policy.quorum)


@settings(max_examples=150, deadline=None)
@given(policy=policies(), cosigned=st.sets(st.sampled_from(NAMES)))
def test_any_policy_round_trips_and_is_monotone(policy: Policy, cosigned: set[str]) -> None:
    assert parse_policy(format_policy(policy)) == policy
    assert policy.satisfied(cosigned) == _brute(policy, cosigned)
    if policy.satisfied(cosigned):
        assert policy.satisfied(cosigned | set(NAMES))  # more cosigners never hurt
    assert policy.satisfied(set(NAMES))  # every group threshold is at most its size
