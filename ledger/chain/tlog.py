"""The append-only log of PROTOCOL.md section 7: its right edge, its C2SP tiles, proofs from tiles.

Why this module exists: every chain keeps one RFC 6962 tree over all the leaves it has ever
sealed (the *log*), and serves it the way the transparency-log world reads logs, as C2SP
tlog-tiles (``tile/<L>/<N>[.p/<W>]`` and ``tile/entries/<N>[.p/<W>]``). Three jobs follow,
and each is kept pure here (no file, database or network I/O; the caller brings the bytes):

* The writer must name ``log_size`` and ``log_root`` in every header without re-hashing the
  whole log: `CompactRange` is the log's right edge (one perfect-subtree root per set bit
  of the size, O(log n) memory), appended to block by block and stored as JSON in a meta row.
* The writer must write the tiles a block completes, without keeping the log in memory:
  `TileState` holds only the right-edge partial tile of each level (at most 255 hashes per
  level) and turns each appended block into the exact list of ``(Tile, contents)`` to write.
* Anyone holding tiles (the ledger's own files, a CDN copy) must produce the same inclusion
  and consistency proofs as `ledger.chain.merkle` does over the full leaf list, reading only
  O(log n) tiles: `inclusion_proof_at`, `consistency_proof_at`, `root_at`, `subtree_hash`
  over a `HashSource`, as Go's golang.org/x/mod/sumdb/tlog does with its HashReader.

`ledger.chain.merkle` stays the reference: every hash here is its `node_hash` / `root`, and
the tests compare every result with merkle's proofs over the in-memory leaf list and check
them with merkle's verifiers.

Tiles (tile height 8, so 256 hashes wide). The level-``L`` tile ``N`` holds, for ``i`` in
``0..W-1``, ``MTH(D[(N*256 + i) * 256**L : (N*256 + i + 1) * 256**L])``: level-0 entries are
leaf hashes, and a level-``L`` entry is the root of 256 level-``L-1`` entries (8 levels of
node hashing). For a tree of ``size`` leaves, level ``L`` has ``size >> 8L`` entries: full
tiles for each complete group of 256 and one partial tile of width ``(size >> 8L) % 256``
when that is not zero (`tiles_for`). A partial tile is never hashed into the level above.

How a writer uses this, block by block::

    state = TileState.from_tiles(log_size, read_tile, root=log_root)   # on start: reads <= 1 tile per level
    ...
    for tile, data in state.append(block_leaf_hashes):                 # one call per sealed block
        write(tile.path(), data)                                        # full tiles: immutable from now on
    # level-0 tiles in that list are also the entry bundles to write at tile.entries_path():
    # entry_bundle(leaf data of log indexes [tile.start, tile.end)). A partial bundle also holds
    # up to 255 entries of earlier blocks: keep them, or read the previous partial bundle back.
    # Then commit log_size (header, meta row). Write tiles before committing: a tile past the
    # committed size is harmless and is rewritten if the block is sealed again after a crash.

``state.append`` returns exactly ``new_tiles(old_size, new_size)``, in that order, with their
contents; ``state.compact_range()`` / ``state.root()`` give the same right edge and root as a
`CompactRange` fed the same leaves, which lets a writer cross-check the two.

Reading proofs back (`HashSource`): for a tree of ``size``, the caller asks for a tile with
exactly the width that tile has in that tree, ``min(256, (size >> 8L) - 256*N)`` (i.e. one of
`tiles_for(size)`); the source returns that tile's contents, or those of any *wider* tile at
the same ``(L, N)`` (a later partial, or the full tile once the partial has been deleted, as
C2SP allows). Only the first ``W`` hashes are used: the log is append-only, so a wider tile
begins with the narrower one. Returning fewer hashes than asked is a `TileError`; a missing
tile is whatever error the source raises. The functions here do not authenticate tiles: a
caller serving untrusted copies compares `root_at` with a signed checkpoint first.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ledger.chain import merkle
from ledger.chain.merkle import EMPTY_ROOT, HASH_SIZE, ProofError, node_hash
from ledger.errors import Refused

__all__ = [
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "FULL_TILE_BYTES",
    "MAX_LEVEL",
    "MAX_TREE_SIZE",
    "MAX_ENTRY_SIZE",
    "TileError",
    "CompactRange",
    "Tile",
    "parse_tile_path",
    "tiles_for",
    "new_tiles",
    "tile_contents",
    "tile_from_leaves",
    "tile_hashes",
    "TileState",
    "entry_bundle",
    "parse_entry_bundle",
    "HashSource",
    "subtree_hash",
    "root_at",
    "inclusion_proof_at",
    "consistency_proof_at",
]

TILE_HEIGHT = 8
"""Tree levels per tile: C2SP tlog-tiles fixes it at 8."""

TILE_WIDTH = 1 << TILE_HEIGHT
"""Hashes in a full tile (256); a partial tile has 1..255."""

FULL_TILE_BYTES = TILE_WIDTH * HASH_SIZE
"""8,192: the exact size of a full tile."""

MAX_LEVEL = 63
"""The highest tile level a path may name (C2SP: a decimal between 0 and 63)."""

MAX_TREE_SIZE = (1 << 63) - 1
"""Log sizes are int64 in Go's sumdb/tlog and the C2SP tools; nothing past that is a log here."""

MAX_ENTRY_SIZE = 0xFFFF
"""An entry bundle prefixes each entry with a big-endian uint16 length."""

_NODE_PREFIX = b"\x01"


class TileError(Refused):
    """A tile, tile path, entry bundle or right edge is malformed or inconsistent (a ValueError too)."""


# --------------------------------------------------------------------------- checks


def _int(value: object, what: str, lo: int = 0, hi: int = MAX_TREE_SIZE, error: type[Refused] = TileError) -> int:
    # bool is an int subclass; True as a size is always a caller bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise error(f"{what} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise error(f"{what} must be between {lo} and {hi}, got {value}")
    return value


def _hash(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        size = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise TileError(f"{what} must be {HASH_SIZE} bytes, got {size}")
    return bytes(value)


def _hashes(values: Iterable[bytes], what: str) -> list[bytes]:
    """A list of 32-byte hashes, checked before anything is changed (appends are all or nothing)."""
    out = list(values)
    for i, h in enumerate(out):
        if type(h) is not bytes or len(h) != HASH_SIZE:
            out[i] = _hash(h, f"{what}[{i}]")
    return out


def _split(data: bytes) -> list[bytes]:
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def _perfect_root(hashes: Sequence[bytes]) -> bytes:
    """Root of a perfect subtree given its 2**k bottom hashes (k <= 8): merkle's MTH over them."""
    return hashes[0] if len(hashes) == 1 else merkle.root(hashes)


# --------------------------------------------------------------------------- compact range


class CompactRange:
    """The right edge of the log: the roots of its perfect subtrees, largest (leftmost) first.

    For ``size`` leaves there is one hash per set bit of ``size``; the subtree of the
    highest bit covers the first leaves. That is everything needed to append more leaves
    and to compute the root, in O(log n) space. ``append`` is the hot path of the writer
    (a few thousand leaves per block, several blocks a second): 5,000 leaves take ~2.4 ms on
    the development machine (about 0.5 microseconds a leaf), essentially the n-1 SHA-256
    node hashes it must do anyway; merkle.root over the same leaves takes ~3 ms.
    """

    __slots__ = ("_size", "_hashes")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        size = _int(size, "size")
        checked = _hashes(hashes, "hashes")
        if len(checked) != size.bit_count():
            raise TileError(f"a right edge of size {size} has {size.bit_count()} hashes, got {len(checked)}")
        self._size = size
        self._hashes = checked

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The perfect-subtree roots, largest first (one per set bit of size)."""
        return tuple(self._hashes)

    def append(self, leaf_hashes: Iterable[bytes], tile_roots: list[bytes] | None = None) -> None:
        """Append leaf hashes in log order; nothing changes if any of them is not 32 bytes.

        Whole aligned runs of 256 leaves are hashed packed (`merkle.packed_root`), the rest one
        merge at a time. `tile_roots` collects the root of every aligned run of 256 leaves this
        append completes: the level-1 entries of the level-0 tiles that became full, which the
        tile writer then need not hash again (`TileState.append`).
        """
        items = _hashes(leaf_hashes, "leaf_hashes")
        if self._size + len(items) > MAX_TREE_SIZE:
            raise TileError("the log would outgrow an int64 size")
        sha256, prefix, packed_root = hashlib.sha256, _NODE_PREFIX, merkle.packed_root
        stack = self._hashes
        count, i, n = self._size, 0, len(items)
        while i < n:
            if not count % TILE_WIDTH and n - i >= TILE_WIDTH:
                node = packed_root(b"".join(items[i : i + TILE_WIDTH]))
                if tile_roots is not None:
                    tile_roots.append(node)
                stack.append(node)
                count, i = count + TILE_WIDTH, i + TILE_WIDTH
                c, height = count >> TILE_HEIGHT, TILE_HEIGHT
            else:
                stack.append(items[i])
                count, i = count + 1, i + 1
                c, height = count, 0
            # Each trailing zero bit of the new count merges two equal subtrees (merkle.root does the same).
            while not c & 1:
                right = stack.pop()
                stack.append(sha256(prefix + stack.pop() + right).digest())
                c >>= 1
                height += 1
                if height == TILE_HEIGHT and tile_roots is not None:
                    tile_roots.append(stack[-1])
        self._size = count

    def root(self) -> bytes:
        """The RFC 6962 root of the leaves so far; EMPTY_ROOT for none. Folds right to left, like merkle.root."""
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            acc = node_hash(h, acc)
        return acc

    def copy(self) -> CompactRange:
        """An independent copy (append to it without touching this one)."""
        return CompactRange(self._size, self._hashes)

    def to_json(self) -> str:
        """``{"hashes":["<hex>",...],"size":n}``, compact and key-sorted, for a database meta row."""
        return json.dumps({"hashes": [h.hex() for h in self._hashes], "size": self._size}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> CompactRange:
        """The inverse of to_json; refuses anything else (wrong keys, non-hex, hash count not popcount(size))."""
        try:
            obj = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise TileError(f"right edge is not JSON: {exc}") from None
        if not isinstance(obj, dict) or set(obj) != {"size", "hashes"}:
            raise TileError('right edge must be a JSON object with exactly "size" and "hashes"')
        raw = obj["hashes"]
        if not isinstance(raw, list):
            raise TileError('right edge "hashes" must be a list')
        hashes: list[bytes] = []
        for i, h in enumerate(raw):
            if not isinstance(h, str) or not _HEX64.fullmatch(h):
                raise TileError(f"right edge hashes[{i}] is not 64 lowercase hex digits")
            hashes.append(bytes.fromhex(h))
        return cls(obj["size"], hashes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, hashes=[{', '.join(h.hex()[:8] for h in self._hashes)}])"


_HEX64 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- tile coordinates


@dataclass(frozen=True)
class Tile:
    """Tile ``index`` of ``level``, ``width`` hashes wide (256 = full, 1..255 = partial).

    Covers leaves ``[index * 256**(level+1), ...)``; its entries are subtree roots of
    ``256**level`` leaves each.
    """

    level: int
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        _int(self.level, "tile level", 0, MAX_LEVEL)
        _int(self.width, "tile width", 1, TILE_WIDTH)
        _int(self.index, "tile index", 0, MAX_TREE_SIZE)
        if self.start > MAX_TREE_SIZE:
            raise TileError(f"tile {self.level}/{self.index} starts past any int64 log size")

    @property
    def full(self) -> bool:
        return self.width == TILE_WIDTH

    @property
    def start(self) -> int:
        """C2SP's start index: the first leaf this tile's hashes span."""
        return self.index << (TILE_HEIGHT * (self.level + 1))

    @property
    def end(self) -> int:
        """One past the last leaf its ``width`` hashes span (C2SP's end index for a full tile)."""
        return self.start + (self.width << (TILE_HEIGHT * self.level))

    def path(self) -> str:
        """``tile/<L>/<N>[.p/<W>]``, N in 3-digit groups, all but the last prefixed ``x``."""
        return f"tile/{self.level}/{_encode_index(self.index)}{self._suffix()}"

    def entries_path(self) -> str:
        """``tile/entries/<N>[.p/<W>]``: the entry bundle of a level-0 tile."""
        if self.level != 0:
            raise TileError(f"only level-0 tiles have entry bundles, not level {self.level}")
        return f"tile/entries/{_encode_index(self.index)}{self._suffix()}"

    def _suffix(self) -> str:
        return "" if self.width == TILE_WIDTH else f".p/{self.width}"


def _encode_index(n: int) -> str:
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


_LEVEL = re.compile(r"0|[1-9][0-9]?")
_WIDTH = re.compile(r"[1-9][0-9]{0,2}")
_GROUP = re.compile(r"x[0-9]{3}")
_LAST = re.compile(r"[0-9]{3}")


def parse_tile_path(path: str) -> tuple[Tile, bool]:
    """The tile a canonical tile path names, and whether it is an entry bundle path.

    Refuses (TileError) anything that `Tile.path` / `Tile.entries_path` would not produce:
    leading zeros in level or width, ``.p/256``, a leading ``x000`` group, missing ``x``,
    slashes at either end, non-ASCII digits. Only canonical names may reach storage, so one
    tile never has two names.
    """
    if not isinstance(path, str):
        raise TileError(f"tile path must be a str, got {type(path).__name__}")
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise TileError(f"not a tile path: {path!r}")
    if parts[1] == "entries":
        entries, level = True, 0
    elif _LEVEL.fullmatch(parts[1]):
        entries, level = False, int(parts[1])
        if level > MAX_LEVEL:
            raise TileError(f"tile level above {MAX_LEVEL}: {path!r}")
    else:
        raise TileError(f"bad tile level in {path!r}")
    rest = parts[2:]
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        if not _WIDTH.fullmatch(rest[-1]) or int(rest[-1]) >= TILE_WIDTH:
            raise TileError(f"bad partial tile width in {path!r}")
        width = int(rest[-1])
        rest = [*rest[:-2], rest[-2][:-2]]
    if not _LAST.fullmatch(rest[-1]) or not all(_GROUP.fullmatch(g) for g in rest[:-1]):
        raise TileError(f"bad tile index in {path!r}")
    if len(rest) > 1 and rest[0] == "x000":
        raise TileError(f"tile index has a leading zero group in {path!r}")
    index = 0
    for g in rest:
        index = index * 1000 + int(g.lstrip("x"))
    try:
        return Tile(level, index, width), entries
    except TileError as exc:
        raise TileError(f"{exc} ({path!r})") from None


def tiles_for(size: int) -> list[Tile]:
    """Every tile of a tree of ``size`` leaves, level by level: the full ones, then the partial one.

    The full list is O(size / 256) long; a writer wants `new_tiles` instead.
    """
    return new_tiles(0, size)


def new_tiles(old_size: int, new_size: int) -> list[Tile]:
    """The tiles to write when the log grows from old_size to new_size, level by level.

    Per level: each tile that became full, then the partial tile of new_size if it changed.
    A level whose entry count did not change is skipped (its partial tile, same name, same
    bytes, is already written), as in Go's sumdb/tlog NewTiles.
    """
    old_size = _int(old_size, "old_size")
    new_size = _int(new_size, "new_size")
    if old_size > new_size:
        raise TileError(f"a log does not shrink: {old_size} -> {new_size}")
    tiles: list[Tile] = []
    level = 0
    while new_size >> (TILE_HEIGHT * level):
        old_n = old_size >> (TILE_HEIGHT * level)
        new_n = new_size >> (TILE_HEIGHT * level)
        if old_n == new_n:
            break  # and every level above is unchanged too
        tiles.extend(Tile(level, n) for n in range(old_n >> TILE_HEIGHT, new_n >> TILE_HEIGHT))
        width = new_n % TILE_WIDTH
        if width:
            tiles.append(Tile(level, new_n >> TILE_HEIGHT, width))
        level += 1
    return tiles


# --------------------------------------------------------------------------- tile contents


def tile_contents(level: int, start: int, hashes_below: Sequence[bytes]) -> bytes:
    """The contents (concatenated hashes) of the level-``level`` tile starting at leaf ``start``.

    ``start`` is C2SP's start index of the tile (``index * 256**(level+1)``, so a multiple of
    that). ``hashes_below`` are what the tile is built from: for level 0, its 1..256 leaf
    hashes; for level L >= 1, the entries of the *full* level-(L-1) tiles under it, 256 per
    entry (256..65,536 hashes), each group of 256 hashed into one entry by 8 levels of
    node hashing.
    """
    level = _int(level, "level", 0, MAX_LEVEL)
    start = _int(start, "start")
    if start % (1 << (TILE_HEIGHT * (level + 1))):
        raise TileError(f"start {start} is not the start of a level-{level} tile")
    below = _hashes(hashes_below, "hashes_below")
    if level == 0:
        width = len(below)
    else:
        if len(below) % TILE_WIDTH:
            raise TileError(f"a level-{level} tile is built from whole tiles of 256 hashes, got {len(below)}")
        width = len(below) // TILE_WIDTH
    if not 1 <= width <= TILE_WIDTH:
        raise TileError(f"a tile holds 1..{TILE_WIDTH} hashes, these make {width}")
    Tile(level, start >> (TILE_HEIGHT * (level + 1)), width)  # validates the coordinates
    if level == 0:
        return b"".join(below)
    return b"".join(merkle.root(below[i : i + TILE_WIDTH]) for i in range(0, len(below), TILE_WIDTH))


def tile_from_leaves(tile: Tile, leaf_hashes: Sequence[bytes]) -> bytes:
    """The contents of ``tile`` computed from the log's leaf hashes (from index 0, at least up to tile.end).

    The reference that TileState and stored tiles must agree with: each entry is merkle.root
    of its 256**level leaves. O(tile.end - tile.start) hashing, so meant for tests,
    repairs and audits, not the writer's hot path.
    """
    if len(leaf_hashes) < tile.end:
        raise TileError(f"tile {tile.path()} needs {tile.end} leaves, got {len(leaf_hashes)}")
    span = 1 << (TILE_HEIGHT * tile.level)
    first = tile.index * TILE_WIDTH
    return b"".join(merkle.root(leaf_hashes[(first + i) * span : (first + i + 1) * span]) for i in range(tile.width))


def tile_hashes(tile: Tile, data: bytes) -> list[bytes]:
    """The first ``tile.width`` hashes of tile data (which may come from a wider tile, see HashSource)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TileError(f"tile {tile.path()} data must be bytes, got {type(data).__name__}")
    n = len(data)
    if n % HASH_SIZE or n > FULL_TILE_BYTES or n < tile.width * HASH_SIZE:
        raise TileError(f"tile {tile.path()} needs {tile.width * HASH_SIZE} bytes (or a wider tile's), got {n}")
    return _split(bytes(data[: tile.width * HASH_SIZE]))


# --------------------------------------------------------------------------- incremental writer state


class TileState:
    """The writer's tile state: the log size and the right-edge partial tile of each level.

    At most 255 hashes per level are kept (8 KiB), whatever the log's size. ``append`` turns
    the leaf hashes of one block into every ``(tile, contents)`` to write, exactly the tiles
    of ``new_tiles(old_size, new_size)`` in the same order. Resume after a restart with
    ``from_tiles``, which reads only the right-edge partial tiles.
    """

    __slots__ = ("_size", "_partial")

    def __init__(self) -> None:
        self._size = 0
        self._partial: list[list[bytes]] = []  # [level] -> entries of that level's partial tile

    @property
    def size(self) -> int:
        return self._size

    @classmethod
    def from_tiles(cls, size: int, read_tile: Callable[[Tile], bytes], *, root: bytes | None = None) -> TileState:
        """Resume at ``size`` from stored tiles: reads the partial tile of each level (none if full).

        ``read_tile`` follows the HashSource contract (asked for the exact partial tile of
        ``size``; a wider tile is accepted and cut). If ``root`` is given, the resumed state
        must reproduce it, or TileError: a writer then never builds on tiles that do not
        match its committed log_root.
        """
        size = _int(size, "size")
        state = cls()
        level = 0
        while size >> (TILE_HEIGHT * level):
            entries = size >> (TILE_HEIGHT * level)
            width = entries % TILE_WIDTH
            hashes: list[bytes] = []
            if width:
                tile = Tile(level, entries >> TILE_HEIGHT, width)
                hashes = tile_hashes(tile, read_tile(tile))
            state._partial.append(hashes)
            level += 1
        state._size = size
        if root is not None and state.root() != root:
            raise TileError(f"stored tiles do not reproduce the log root at size {size}")
        return state

    def append(
        self, leaf_hashes: Iterable[bytes], tile_roots: Sequence[bytes] | None = None
    ) -> list[tuple[Tile, bytes]]:
        """Append one block's leaf hashes; returns the tiles to write (new full ones, changed partials).

        `tile_roots`: the roots of the level-0 tiles this append fills, as `CompactRange.append`
        collected them from the same leaves at the same size; given, they are not hashed again.
        """
        carry = _hashes(leaf_hashes, "leaf_hashes")
        given = list(tile_roots) if tile_roots is not None else None
        old, new = self._size, self._size + len(carry)
        if new > MAX_TREE_SIZE:
            raise TileError("the log would outgrow an int64 size")
        out: list[tuple[Tile, bytes]] = []
        level = 0
        while carry:  # new entries at this level; nothing new here means nothing new above
            if level == len(self._partial):
                self._partial.append([])
            buf = self._partial[level]
            index = (old >> (TILE_HEIGHT * level)) >> TILE_HEIGHT  # the tile buf belongs to
            up: list[bytes] = []
            pos = 0
            while pos < len(carry):
                take = min(TILE_WIDTH - len(buf), len(carry) - pos)
                buf.extend(carry[pos : pos + take])
                pos += take
                if len(buf) == TILE_WIDTH:
                    data = b"".join(buf)
                    out.append((Tile(level, index), data))
                    up.append(given[len(up)] if level == 0 and given is not None else merkle.packed_root(data))
                    index += 1
                    buf = []
            if level == 0 and given is not None and len(given) != len(up):
                raise TileError(f"{len(given)} tile roots given for {len(up)} full tiles")
            self._partial[level] = buf
            if buf:
                out.append((Tile(level, index, len(buf)), b"".join(buf)))
            carry = up
            level += 1
        self._size = new
        return out

    def compact_range(self) -> CompactRange:
        """The log's right edge, from the partial tiles alone (each level's width, bit by bit)."""
        hashes: list[bytes] = []
        for level in range(len(self._partial) - 1, -1, -1):
            buf = self._partial[level]
            off = 0
            for bit in range(TILE_HEIGHT - 1, -1, -1):
                if len(buf) >> bit & 1:
                    hashes.append(_perfect_root(buf[off : off + (1 << bit)]))
                    off += 1 << bit
        return CompactRange(self._size, hashes)

    def root(self) -> bytes:
        """The log's root at the current size."""
        return self.compact_range().root()

    def partial_tiles(self) -> list[tuple[Tile, bytes]]:
        """The right-edge partial tiles held in memory, level by level (what from_tiles reads back)."""
        out: list[tuple[Tile, bytes]] = []
        for level, buf in enumerate(self._partial):
            if buf:
                out.append((Tile(level, (self._size >> (TILE_HEIGHT * level)) >> TILE_HEIGHT, len(buf)), b"".join(buf)))
        return out


# --------------------------------------------------------------------------- entry bundles


def entry_bundle(entries: Sequence[bytes]) -> bytes:
    """A C2SP entry bundle: each entry (1..256 of them) prefixed by its big-endian uint16 length."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise TileError(f"an entry bundle holds 1..{TILE_WIDTH} entries, got {len(entries)}")
    if all(type(e) is bytes for e in entries) and max(map(len, entries)) <= MAX_ENTRY_SIZE:  # the writer's case
        return b"".join([len(e).to_bytes(2, "big") + e for e in entries])
    parts: list[bytes] = []
    for i, e in enumerate(entries):
        if not isinstance(e, (bytes, bytearray)):
            raise TileError(f"entries[{i}] must be bytes, got {type(e).__name__}")
        if len(e) > MAX_ENTRY_SIZE:
            raise TileError(f"entries[{i}] is {len(e)} bytes, over the {MAX_ENTRY_SIZE} a bundle can carry")
        parts.append(len(e).to_bytes(2, "big"))
        parts.append(bytes(e))
    return b"".join(parts)


def parse_entry_bundle(data: bytes, width: int | None = None) -> list[bytes]:
    """The entries of a bundle; refuses empty, truncated or over-256-entry data, and a count != width if given."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TileError(f"entry bundle must be bytes, got {type(data).__name__}")
    view = bytes(data)
    entries: list[bytes] = []
    pos = 0
    while pos < len(view):
        if len(entries) == TILE_WIDTH:
            raise TileError(f"entry bundle holds more than {TILE_WIDTH} entries")
        if pos + 2 > len(view):
            raise TileError(f"entry bundle truncated in the length of entry {len(entries)}")
        n = int.from_bytes(view[pos : pos + 2], "big")
        pos += 2
        if pos + n > len(view):
            raise TileError(f"entry bundle truncated in entry {len(entries)} ({n} bytes announced)")
        entries.append(view[pos : pos + n])
        pos += n
    if not entries:
        raise TileError("an entry bundle is never empty")
    if width is not None and len(entries) != _int(width, "width", 1, TILE_WIDTH):
        raise TileError(f"entry bundle holds {len(entries)} entries, its tile is {width} wide")
    return entries


# --------------------------------------------------------------------------- proofs from tiles


class HashSource(Protocol):
    """Where tiles are read from (the ledger's tile files, a CDN, a dict in tests).

    ``tile(t)`` returns the contents of ``t`` or of a wider tile at the same level and index
    (see the module docstring); it is asked only for tiles of `tiles_for(size)` for the tree
    size being proven, so a source may keep just the latest partial tiles plus full ones.
    """

    def tile(self, tile: Tile) -> bytes: ...


class _Reader:
    """Stored hashes of one tree size, from a HashSource, each tile read at most once."""

    __slots__ = ("source", "size", "tiles")

    def __init__(self, source: HashSource, size: int) -> None:
        self.source = source
        self.size = size
        self.tiles: dict[Tile, list[bytes]] = {}

    def entries(self, level: int, first: int, count: int) -> list[bytes]:
        """Level-``level`` entries [first, first+count), all in one tile."""
        n = first >> TILE_HEIGHT
        total = self.size >> (TILE_HEIGHT * level)
        tile = Tile(level, n, min(TILE_WIDTH, total - (n << TILE_HEIGHT)))
        hashes = self.tiles.get(tile)
        if hashes is None:
            hashes = self.tiles[tile] = tile_hashes(tile, self.source.tile(tile))
        off = first - (n << TILE_HEIGHT)
        return hashes[off : off + count]

    def perfect(self, height: int, index: int) -> bytes:
        """Root of the perfect subtree of 2**height leaves starting at leaf index * 2**height."""
        level, rest = divmod(height, TILE_HEIGHT)
        return _perfect_root(self.entries(level, index << rest, 1 << rest))

    def mth(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) with 0 <= lo < hi <= size, split the RFC way.

        When lo is aligned to the largest power of two >= hi - lo (every range an RFC
        proof needs), each piece is a perfect subtree read from one tile: O(log n) reads.
        Other ranges are still right but may descend to single leaves.
        """
        n = hi - lo
        if not n & (n - 1) and not lo % n:
            return self.perfect(n.bit_length() - 1, lo // n)
        k = 1 << ((n - 1).bit_length() - 1)  # largest power of two below n
        return node_hash(self.mth(lo, lo + k), self.mth(lo + k, hi))


def _tree_size(size: object) -> int:
    return _int(size, "size", error=ProofError)


def subtree_hash(source: HashSource, size: int, lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) of the tree of ``size`` (0 <= lo <= hi <= size), from tiles of that size.

    An empty range is MTH({}) = EMPTY_ROOT. Ranges an RFC proof uses read O(log n) tiles.
    """
    size = _tree_size(size)
    lo = _int(lo, "lo", error=ProofError)
    hi = _int(hi, "hi", error=ProofError)
    if not lo <= hi <= size:
        raise ProofError(f"range [{lo}, {hi}) is not inside a tree of size {size}")
    if lo == hi:
        return EMPTY_ROOT
    return _Reader(source, size).mth(lo, hi)


def root_at(source: HashSource, size: int) -> bytes:
    """The root of the tree of ``size`` (EMPTY_ROOT for 0): at most a few tiles, the right-edge ones."""
    return subtree_hash(source, size, 0, size)


def inclusion_proof_at(source: HashSource, index: int, size: int) -> list[bytes]:
    """merkle.inclusion_proof(leaves[:size], index), from tiles: PATH(index, D[size]), leaf upwards.

    Raises ProofError (a ValueError) unless 0 <= index < size.
    """
    size = _tree_size(size)
    index = _int(index, "index", error=ProofError)
    if index >= size:
        raise ProofError(f"index {index} out of range for tree of size {size}")
    reader = _Reader(source, size)
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if index < lo + k:
            path.append(reader.mth(lo + k, hi))
            hi = lo + k
        else:
            path.append(reader.mth(lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_proof_at(source: HashSource, old_size: int, new_size: int) -> list[bytes]:
    """merkle.consistency_proof(leaves[:new_size], old_size), from tiles of new_size: PROOF(old_size, D[new_size]).

    Raises ProofError (a ValueError) unless 0 < old_size <= new_size; equal sizes give [].
    """
    new_size = _tree_size(new_size)
    m = _int(old_size, "old_size", error=ProofError)
    if not 0 < m <= new_size:
        raise ProofError(f"old_size {m} must satisfy 0 < old_size <= {new_size}")
    reader = _Reader(source, new_size)
    path: list[bytes] = []
    lo, hi, whole = 0, new_size, True  # RFC 9162 SUBPROOF(m, D[lo:hi], whole)
    while m != hi - lo:
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if m <= k:
            path.append(reader.mth(lo + k, hi))
            hi = lo + k
        else:
            path.append(reader.mth(lo, lo + k))
            lo += k
            m -= k
            whole = False
    if not whole:
        path.append(reader.mth(lo, hi))
    path.reverse()
    return path
