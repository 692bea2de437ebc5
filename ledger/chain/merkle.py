"""RFC 9162 section 2.1 Merkle tree (the same tree as RFC 6962 Certificate Transparency).

Why this exact tree: auditors and off-the-shelf CT tooling (transparency-dev/merkle,
Trillian, ...) can then check our roots and proofs without knowing anything about
cityledger. The 0x00 / 0x01 domain-separation prefixes stop a leaf from being passed
off as an interior node (second-preimage attack), so they are not optional.

Everything here is a pure function over bytes: no I/O, no state, hashlib only.
Proof generators take the *already hashed* leaves (``leaf_hash(data)``) in log order.
Verifiers follow the RFC 9162 algorithms step by step, because that bit-twiddling is
what other implementations do; a "cleverer" verifier could accept proofs they reject.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import TypeGuard

from ledger.errors import Refused

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "ProofError",
    "leaf_hash",
    "node_hash",
    "root",
    "packed_root",
    "inclusion_proof",
    "root_from_inclusion_proof",
    "verify_inclusion",
    "consistency_proof",
    "verify_consistency",
]

HASH_SIZE = 32
"""SHA-256 digest size; every leaf hash, node hash, root and proof element has it."""

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256 of the empty string (RFC 9162 2.1.1), not a hash of zero leaves."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class ProofError(Refused):
    """A proof (or its index/size/hashes) is malformed, so no root can be computed.

    A ValueError subclass so callers that only care about "bad input" can catch that.
    """


def leaf_hash(leaf_data: bytes) -> bytes:
    """SHA-256(0x00 || leaf_data): the prefix keeps leaves distinct from nodes."""
    return hashlib.sha256(_LEAF_PREFIX + bytes(leaf_data)).digest()


def leaf_hashes(leaves: Sequence[bytes]) -> list[bytes]:
    """`leaf_hash` of each: a block's worth at once (ingest hashes every reading it seals)."""
    sha256, prefix = hashlib.sha256, _LEAF_PREFIX
    return [sha256(prefix + bytes(x)).digest() for x in leaves]


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): an interior node from its two children.

    No length check: it is the raw RFC primitive (the upstream hasher vectors even feed
    it 4-byte strings). Length checks live in the proof functions.
    """
    return hashlib.sha256(_NODE_PREFIX + bytes(left) + bytes(right)).digest()


# --------------------------------------------------------------------------- helpers


def _is_hash(value: object) -> TypeGuard[bytes | bytearray]:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def _check_hash(value: object, what: str) -> bytes:
    """Reject anything that is not a 32-byte string before it reaches the hasher.

    Without this, a truncated or empty "hash" would be hashed happily and just give a
    wrong root; failing loudly makes bad inputs distinguishable from bad proofs.
    """
    if not _is_hash(value):
        size = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {size}")
    return bytes(value)


def _check_int(value: object, what: str) -> int:
    # bool is an int subclass; True as a tree size is always a caller bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProofError(f"{what} must be an int, got {type(value).__name__}")
    return value


def _check_leaves(leaf_hashes: Sequence[bytes]) -> None:
    """Catch the classic bug of passing raw leaf data where leaf hashes are expected."""
    for i, h in enumerate(leaf_hashes):
        if not _is_hash(h):
            raise ValueError(f"leaf_hashes[{i}] is not a {HASH_SIZE}-byte leaf hash")


def _levels(leaf_hashes: Sequence[bytes]) -> list[list[bytes]]:
    """All tree levels bottom-up; levels[k][i] covers leaves [i*2^k, (i+1)*2^k).

    An unpaired last node is carried up unchanged. That gives exactly the RFC tree
    (split at the largest power of two < n), because the RFC's right subtree is the
    one left over after all complete power-of-two subtrees to its left are paired.
    """
    levels = [list(leaf_hashes)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


def _path_up(levels: list[list[bytes]], level: int, index: int) -> list[bytes]:
    """Siblings of node (level, index) up to the root; a carried-up node has none."""
    path: list[bytes] = []
    for row in levels[level:-1]:
        sibling = index ^ 1
        if sibling < len(row):
            path.append(row[sibling])
        index >>= 1
    return path


# --------------------------------------------------------------------------- root


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH (RFC 9162 2.1.1) over already-hashed leaves; empty -> EMPTY_ROOT.

    The hashes are packed into one bytes object and paired level by level (`packed_root`):
    n-1 node hashes, without a Python object per hash kept in between.
    """
    try:
        packed = b"".join(leaf_hashes)
    except TypeError:
        packed = b""
    if len(packed) != HASH_SIZE * len(leaf_hashes) or not set(map(len, leaf_hashes)) <= {HASH_SIZE}:
        _check_leaves(leaf_hashes)  # names the one that is not a hash
    return packed_root(packed)


def packed_root(packed: bytes) -> bytes:
    """RFC 9162 tree hash of leaf hashes packed 32 bytes apiece, in leaf order.

    Level by level, an unpaired last node carried up unchanged: the RFC's tree (see `_levels`).
    """
    if len(packed) % HASH_SIZE:
        raise ValueError("packed leaf hashes must be a multiple of 32 bytes")
    if not packed:
        return EMPTY_ROOT
    level, sha256, prefix, pair = bytes(packed), hashlib.sha256, _NODE_PREFIX, 2 * HASH_SIZE
    while len(level) > HASH_SIZE:
        paired = len(level) - len(level) % pair
        level = (
            b"".join([sha256(prefix + level[i : i + pair]).digest() for i in range(0, paired, pair)]) + level[paired:]
        )
    return level


# --------------------------------------------------------------------------- inclusion


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) (RFC 9162 2.1.3.1): sibling hashes ordered leaf upwards.

    Raises ValueError if index is not in [0, n).
    """
    _check_int(index, "index")
    if not 0 <= index < len(leaf_hashes):
        raise ValueError(f"index {index} out of range for tree of size {len(leaf_hashes)}")
    _check_leaves(leaf_hashes)
    return _path_up(_levels(leaf_hashes), 0, index)


def root_from_inclusion_proof(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 2.1.3.2, steps 1-4).

    Returns the root instead of a bool so callers can look it up (e.g. find which
    signed tree head it belongs to). Raises ProofError if index >= size, the proof has
    the wrong number of elements for (index, size), or any hash is not 32 bytes.
    """
    index = _check_int(index, "index")
    size = _check_int(size, "size")
    if index < 0 or index >= size:
        raise ProofError(f"index {index} is not below tree size {size}")
    r = _check_hash(leaf_hash, "leaf hash")
    path = [_check_hash(p, f"proof[{i}]") for i, p in enumerate(proof or ())]

    fn, sn = index, size - 1
    for p in path:
        if sn == 0:
            raise ProofError(f"proof too long for index {index} in tree of size {size}")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # A right-edge node with no right sibling is carried up: skip those levels.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"proof too short for index {index} in tree of size {size}")
    return r


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], expected_root: bytes) -> bool:
    """True iff proof shows leaf_hash at index in the tree of size with expected_root.

    Never raises: verifiers sit on trust boundaries and see hostile input, and a
    crash there is a denial of service; every malformed input is simply "not proven".
    """
    try:
        computed = root_from_inclusion_proof(index, size, leaf_hash, proof)
    except (ValueError, TypeError, OverflowError):
        return False
    return _is_hash(expected_root) and hmac.compare_digest(computed, bytes(expected_root))


# --------------------------------------------------------------------------- consistency


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) (RFC 9162 2.1.4.1), the nodes ordered leaf upwards.

    The proof is the inclusion path (inside the new tree) of the largest perfect
    subtree ending at old_size, preceded by that subtree's own hash unless it is the
    whole old tree (old_size a power of two: the verifier already has old_root).
    Raises ValueError unless 0 < old_size <= n; old_size == n gives [].
    """
    _check_int(old_size, "old_size")
    n = len(leaf_hashes)
    if not 0 < old_size <= n:
        raise ValueError(f"old_size {old_size} must satisfy 0 < old_size <= {n}")
    _check_leaves(leaf_hashes)
    if old_size == n:
        return []
    levels = _levels(leaf_hashes)
    level = (old_size & -old_size).bit_length() - 1  # trailing zeros of old_size
    index = (old_size - 1) >> level
    proof = [] if index == 0 else [levels[level][index]]
    return proof + _path_up(levels, level, index)


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """True iff proof shows the tree of old_size/old_root is a prefix of new_size/new_root.

    RFC 9162 2.1.4.2, plus the edge cases the RFC leaves to callers:
    old_size == 0 is refused (it proves nothing, and the published vectors treat it as
    an error); old_size == new_size needs an empty proof and byte-equal roots. Never
    raises, for the same reason as verify_inclusion.
    """
    try:
        return _verify_consistency(old_size, new_size, old_root, new_root, proof)
    except (ValueError, TypeError, OverflowError):
        return False


def _verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    old_size = _check_int(old_size, "old_size")
    new_size = _check_int(new_size, "new_size")
    path = list(proof or ())
    if old_size <= 0 or old_size > new_size:
        return False
    if old_size == new_size:
        # Nothing is hashed here, so the roots are compared as given (upstream does the
        # same; its vectors include equal non-32-byte roots that must pass).
        if path or not isinstance(old_root, (bytes, bytearray)):
            return False
        if not isinstance(new_root, (bytes, bytearray)):
            return False
        return hmac.compare_digest(bytes(old_root), bytes(new_root))

    first = _check_hash(old_root, "old root")
    second = _check_hash(new_root, "new root")
    path = [_check_hash(c, f"proof[{i}]") for i, c in enumerate(path)]

    # 1. An empty proof can never link two different sizes.
    if not path:
        return False
    # 2. If old_size is a power of two the old root is itself a node of the new tree.
    if old_size & (old_size - 1) == 0:
        path.insert(0, first)
    # 3-4.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5-6.
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False  # proof too long
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 7. Both roots must be reproduced and the whole new tree consumed.
    return sn == 0 and hmac.compare_digest(fr, first) and hmac.compare_digest(sr, second)
