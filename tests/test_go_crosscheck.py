"""The transparency log's C2SP artefacts, cross-checked with Go's golang.org/x/mod/sumdb (tests/go/tlogcheck).

First PROTOCOL.md 7.1's vector, then the checker itself: against a small tlog-tiles log and receipts
built here the plain way, it must accept what is right and refuse what is not, so that when it is
pointed at the live system a failure means the system and not the checker.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from subprocess import CompletedProcess
from typing import TYPE_CHECKING

import nacl.signing
import pytest

if TYPE_CHECKING:
    from tests.gotools import Tlogcheck

# ---- PROTOCOL.md 7.1, copied from the text ---------------------------------------------------

VKEY = "cityledger.example/d01+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw"
ROOT_HEX = "ec142232338418f934c4277d94f8042eb2bd8e6d4a4f8bd766e80b510488fcac"
CHECKPOINT = (
    "cityledger.example/d01\n"
    "2\n"
    "7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n"
    "\n"
    "\u2014 cityledger.example/d01 879rjnUr7SAMwYCBwoDH9pkE9OfEUkXVq3SjqOMaljBl1YGdxhkBkForPqhpcZ0R0cgD0ycENMmCSWx1tFKLsdSr/Qk=\n"
)
RECEIPT = (
    "c2sp.org/tlog-proof@v1\n"
    "extra eyJkZXZpY2UiOiJ3bS1kMDEtMDAwMDQyIiwia2luZCI6IndhdGVyIiwic2VxIjo3LCJzaWciOiJqWTFBdkJkVzJYdlNFYUduMHRIMy8vL0lmSXd0"
    "ekNCcm1lTnNhNUZSV1JsaStHQ2NuNnJRQW9TYkdBWnYzOXBzV0dUTGc5TWVPY1lxVWZKUzN2RlhEdz09IiwidHMiOjE3NjQwMDAwMDAwMDAsInYiOjEsInZh"
    "bHVlIjoxMjM0NTZ9\n"
    "index 1\n"
    "lIKtgk+BuXC+o6dpXyYSffP6B92MUwYBn9ZoHM8+7po=\n"
    "\n" + CHECKPOINT
)
READING_LEAF_HEX = "f8a11e59b8fffca00e4b627ead16f8b02f36a359e404dd6bb382c561bba71fb1"


def ok(result: CompletedProcess[str]) -> list[str]:
    """The fields of tlogcheck's ok line, after checking it succeeded."""
    assert result.returncode == 0, result
    words = result.stdout.split()
    assert words[0] == "ok" and result.stdout.count("\n") == 1, result
    return words[1:]


def refused(result: CompletedProcess[str], reason: str) -> None:
    """tlogcheck said no, for the expected reason."""
    assert result.returncode == 1, result
    assert result.stdout == "", result
    assert reason in result.stderr, result


def test_the_protocol_7_1_vector_passes_x_mod(tlogcheck: Tlogcheck) -> None:
    assert ok(tlogcheck("vector")) == ["vector"]


def test_the_vector_checkpoint_verifies_and_parses(tlogcheck: Tlogcheck, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint"
    path.write_text(CHECKPOINT, encoding="utf-8")
    assert ok(tlogcheck("checkpoint", VKEY, path)) == ["cityledger.example/d01", "2", ROOT_HEX]
    assert ok(tlogcheck("note", VKEY, "-", input=CHECKPOINT)) == ["cityledger.example/d01"]


@pytest.mark.parametrize("at", [0, 3, 4, 20, 40, 67], ids=lambda at: f"byte{at}")
def test_a_one_byte_change_in_the_vector_signature_is_refused(tlogcheck: Tlogcheck, tmp_path: Path, at: int) -> None:
    """Bytes 0-3 are the key ID (the note then has no signature by the key); 4-67 the Ed25519 signature."""
    text, _, line = CHECKPOINT.rpartition("\n\n")
    name, b64 = line.rstrip("\n").rsplit(" ", 1)
    sig = bytearray(base64.b64decode(b64))
    assert len(sig) == 68
    sig[at] ^= 0x01
    path = tmp_path / "checkpoint"
    path.write_text(f"{text}\n\n{name} {base64.b64encode(sig).decode()}\n", encoding="utf-8")
    result = tlogcheck("checkpoint", VKEY, path)
    refused(result, "no signature by" if at < 4 else "invalid signature")


def test_the_vector_receipt_verifies_and_changed_ones_do_not(tlogcheck: Tlogcheck) -> None:
    assert ok(tlogcheck("tlogproof", VKEY, "-", input=RECEIPT)) == [
        "cityledger.example/d01",
        "2",
        "1",
        READING_LEAF_HEX,
    ]
    extra = RECEIPT.split("\n")[1].removeprefix("extra ")
    changed = base64.b64encode(base64.b64decode(extra).replace(b"123456", b"123457")).decode()
    refused(tlogcheck("tlogproof", VKEY, "-", input=RECEIPT.replace(extra, changed)), "inclusion path")
    refused(tlogcheck("tlogproof", VKEY, "-", input=RECEIPT.replace("index 1\n", "index 0\n")), "inclusion path")
    refused(tlogcheck("tlogproof", VKEY, "-", input=RECEIPT.replace("lIKt", "lIKu")), "inclusion path")
    refused(tlogcheck("tlogproof", VKEY, "-", input=RECEIPT.replace("\n2\n", "\n3\n")), "invalid signature")
    other = Signer("cityledger.example/d01", bytes(32))
    refused(tlogcheck("tlogproof", other.vkey, "-", input=RECEIPT), "no signature by")


# ---- a tlog-tiles log built here, the plain way ---------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tile_path(level: str, n: int, width: int) -> str:
    """tlog-tiles: <L>/<N>[.p/<W>], N in 3-digit groups, all but the last x-prefixed."""
    digits = f"{n % 1000:03d}"
    while n >= 1000:
        n //= 1000
        digits = f"x{n % 1000:03d}/{digits}"
    return f"tile/{level}/{digits}" + (f".p/{width}" if width < 256 else "")


def test_tile_paths_follow_the_spec_example() -> None:
    assert tile_path("0", 1234067, 256) == "tile/0/x001/x234/067"
    assert tile_path("entries", 5, 17) == "tile/entries/005.p/17"


class ReferenceLog:
    """An RFC 6962 log over made-up entries, with its tiles and bundles at any size it has had."""

    def __init__(self, size: int) -> None:
        self.entries = [f'{{"entry":"test","n":{i}}}'.encode() for i in range(size)]
        self._files: dict[int, dict[str, bytes]] = {}
        # levels[l][i]: the hash of the full subtree of 256**l leaves starting at leaf i * 256**l.
        self.levels = [[leaf_hash(e) for e in self.entries]]
        while len(self.levels[-1]) >= 256:
            below = self.levels[-1]
            self.levels.append([self._perfect(below[i : i + 256]) for i in range(0, len(below) - 255, 256)])

    @staticmethod
    def _perfect(hashes: list[bytes]) -> bytes:
        while len(hashes) > 1:
            hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]

    def subtree(self, lo: int, hi: int) -> bytes:
        """RFC 6962 MTH(D[lo:hi])."""
        n = hi - lo
        for level in range(len(self.levels) - 1, -1, -1):
            span = 256**level
            if n == span and lo % span == 0:
                return self.levels[level][lo // span]
        k = 1 << ((n - 1).bit_length() - 1)
        return node_hash(self.subtree(lo, lo + k), self.subtree(lo + k, hi))

    def root(self, size: int) -> str:
        return b64(self.subtree(0, size))

    def inclusion_path(self, index: int, size: int) -> list[bytes]:
        """RFC 6962 PATH(index, D[0:size]), leaf's sibling first."""

        def path(lo: int, hi: int) -> list[bytes]:
            if hi - lo == 1:
                return []
            k = 1 << ((hi - lo - 1).bit_length() - 1)
            if index < lo + k:
                return [*path(lo, lo + k), self.subtree(lo + k, hi)]
            return [*path(lo + k, hi), self.subtree(lo, lo + k)]

        return path(0, size)

    def files(self, size: int) -> dict[str, bytes]:
        """Every hash tile and entry bundle that tlog-tiles has a log of ``size`` serve (a copy to change)."""
        if size not in self._files:
            self._files[size] = self._build_files(size)
        return dict(self._files[size])

    def _build_files(self, size: int) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for level, hashes in enumerate(self.levels):
            count = size // 256**level
            for n in range(0, count, 256):
                chunk = hashes[n : min(count, n + 256)]
                out[tile_path(str(level), n // 256, len(chunk))] = b"".join(chunk)
        for n in range(0, size, 256):
            chunk = self.entries[n : min(size, n + 256)]
            out[tile_path("entries", n // 256, len(chunk))] = b"".join(len(e).to_bytes(2, "big") + e for e in chunk)
        return out


@dataclass
class TileServer:
    """Serves ``files`` under ``url``, a prefix with a path, as a static tlog-tiles host would."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)


@pytest.fixture
def tiles() -> Iterator[TileServer]:
    served = TileServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.removeprefix("/logs/d01/")
            served.requested.append(path)
            body = served.files.get(path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{server.server_address[1]}/logs/d01/"
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# A level-0 tile number past 999 (x001/000), three levels of tiles, partial ones at each.
BIG = 256 * 1000 + 300


@pytest.fixture(scope="module")
def log() -> ReferenceLog:
    return ReferenceLog(BIG)


@pytest.mark.parametrize("index", [0, 255, 256, 70_000, 256_000, BIG - 1])
def test_inclusion_from_tiles_and_bundles(
    tlogcheck: Tlogcheck, tiles: TileServer, log: ReferenceLog, index: int
) -> None:
    tiles.files = log.files(BIG)
    root, leaf = log.root(BIG), log.levels[0][index].hex()
    assert ok(tlogcheck("inclusion", tiles.url, str(index), leaf, str(BIG), root)) == [str(index), str(BIG), leaf]
    assert ok(tlogcheck("inclusion", tiles.url, str(index), "@-", str(BIG), root, input=log.entries[index]))[2] == leaf
    if index == 256_000:
        assert "tile/0/x001/000" in tiles.requested and "tile/entries/x001/000" in tiles.requested


def test_inclusion_with_the_entry_in_a_file(tlogcheck: Tlogcheck, tiles: TileServer, tmp_path: Path) -> None:
    small = ReferenceLog(5)
    tiles.files = small.files(5)
    (tmp_path / "entry").write_bytes(small.entries[3])
    assert ok(tlogcheck("inclusion", tiles.url, "3", f"@{tmp_path / 'entry'}", "5", small.root(5)))[0] == "3"
    assert tiles.requested == ["tile/0/000.p/5", "tile/entries/000.p/5"]


def test_inclusion_refuses_what_does_not_add_up(tlogcheck: Tlogcheck, tiles: TileServer) -> None:
    small = ReferenceLog(600)
    size, index = 600, 520
    tiles.files = small.files(size)
    root, leaf = small.root(size), small.levels[0][index].hex()
    assert ok(tlogcheck("inclusion", tiles.url, str(index), leaf, str(size), root))

    refused(tlogcheck("inclusion", tiles.url, str(index), leaf, str(size), small.root(size - 1)), "inconsistent tile")
    refused(tlogcheck("inclusion", tiles.url, str(index + 1), leaf, str(size), root), "is not in the tree")
    refused(tlogcheck("inclusion", tiles.url, str(index), "@-", str(size), root, input=b"{}"), "is not in the tree")

    bundle = "tile/entries/002.p/88"
    good = tiles.files[bundle]
    tiles.files[bundle] = good.replace(small.entries[530], small.entries[530].replace(b"530", b"531"))
    refused(tlogcheck("inclusion", tiles.url, str(index), leaf, str(size), root), "entry 530 in bundle")
    tiles.files[bundle] = good[:-1]
    refused(tlogcheck("inclusion", tiles.url, str(index), leaf, str(size), root), "claims")

    # x/mod's TileHashReader lets this full tile through unauthenticated (see tileServer in
    # main.go); CheckRecord against the root still refuses it.
    tiles.files = small.files(size)
    tiles.files["tile/0/001"] = bytes(32) + tiles.files["tile/0/001"][32:]
    refused(tlogcheck("inclusion", tiles.url, "300", small.levels[0][300].hex(), str(size), root), "is not in the tree")


def test_a_deleted_partial_tile_falls_back_to_the_full_one(tlogcheck: Tlogcheck, tiles: TileServer) -> None:
    """An old checkpoint (size 300) checked against a log that has since grown to 600 and pruned partials."""
    small = ReferenceLog(600)
    tiles.files = {**small.files(300), **small.files(600)}
    del tiles.files["tile/0/001.p/44"], tiles.files["tile/entries/001.p/44"]
    result = tlogcheck("inclusion", tiles.url, "290", small.levels[0][290].hex(), "300", small.root(300))
    assert ok(result)
    assert "tile/0/001.p/44 is not served; used tile/0/001" in result.stderr
    assert "tile/entries/001.p/44 is not served; used tile/entries/001" in result.stderr
    assert "tile/1/000.p/1" in tiles.requested


def test_consistency_from_tiles(tlogcheck: Tlogcheck, tiles: TileServer, log: ReferenceLog) -> None:
    tiles.files = log.files(BIG)
    for old in (1, 2, 255, 256, 257, 65_536, 70_000, 256_000, BIG):
        assert ok(tlogcheck("consistency", tiles.url, str(old), log.root(old), str(BIG), log.root(BIG))) == [
            str(old),
            str(BIG),
        ]
    refused(tlogcheck("consistency", tiles.url, "1000", log.root(999), str(BIG), log.root(BIG)), "does not contain")
    refused(tlogcheck("consistency", tiles.url, "1000", log.root(1000), str(BIG), log.root(BIG - 1)), "inconsistent")


# ---- checkpoints, cosignatures and receipts signed here ------------------------------------


class Signer:
    """A signed-note key of type 0x01 (log) or 0x04 (tlog-cosignature/v1 witness)."""

    def __init__(self, name: str, seed: bytes, alg: int = 0x01) -> None:
        self.name, self.alg = name, alg
        self.key = nacl.signing.SigningKey(seed)
        material = bytes([alg]) + bytes(self.key.verify_key)
        self.key_id = hashlib.sha256(name.encode() + b"\n" + material).digest()[:4]
        self.vkey = f"{name}+{self.key_id.hex()}+{b64(material)}"

    def line(self, body: str, timestamp: int = 0) -> str:
        if self.alg == 0x04:
            signed = f"cosignature/v1\ntime {timestamp}\n{body}".encode()
            sig = timestamp.to_bytes(8, "big") + self.key.sign(signed).signature
        else:
            sig = self.key.sign(body.encode()).signature
        return f"\u2014 {self.name} {b64(self.key_id + sig)}\n"


LOG = Signer("cityledger.example/d02", bytes(range(32)))
WITNESS = Signer("witness.example/w1", bytes(range(1, 33)), alg=0x04)


def test_cosignatures(tlogcheck: Tlogcheck) -> None:
    body = f"cityledger.example/d02\n600\n{ReferenceLog(600).root(600)}\n"
    note = f"{body}\n{LOG.line(body)}{WITNESS.line(body, 1764000123)}"
    assert ok(tlogcheck("cosig", WITNESS.vkey, "-", input=note)) == ["1764000123"]
    assert ok(tlogcheck("checkpoint", LOG.vkey, "-", input=note))[:2] == ["cityledger.example/d02", "600"]

    # The timestamp is signed: moving it breaks the signature.
    line = WITNESS.line(body, 1764000123)
    sig = bytearray(base64.b64decode(line.split()[-1]))
    sig[11] ^= 0x01
    moved = f"{body}\n{LOG.line(body)}\u2014 {WITNESS.name} {b64(bytes(sig))}\n"
    refused(tlogcheck("cosig", WITNESS.vkey, "-", input=moved), "invalid signature")
    # Signed as a plain note (no cosignature/v1 header) it is not a cosignature.
    plain = Signer(WITNESS.name, bytes(range(1, 33)), alg=0x04)
    plain.alg = 0x01  # keeps the cosigner's key ID, signs the body alone
    refused(tlogcheck("cosig", WITNESS.vkey, "-", input=f"{body}\n{plain.line(body)}"), "invalid signature")
    # A vkey whose key ID is not SHA-256(name || 0x0A || 0x04 || key)[:4], and a log key.
    name, _, material = WITNESS.vkey.split("+", 2)
    refused(tlogcheck("cosig", f"{name}+00000000+{material}", "-", input=note), "key ID")
    refused(tlogcheck("cosig", LOG.vkey, "-", input=note), "want 0x04")
    refused(tlogcheck("cosig", WITNESS.vkey, "-", input=f"{body}\n{LOG.line(body)}"), "no signature by")


def test_receipts_signed_here(tlogcheck: Tlogcheck) -> None:
    small = ReferenceLog(600)
    size = 600
    body = f"cityledger.example/d02\n{size}\n{small.root(size)}\n"
    cp = f"{body}\n{LOG.line(body)}{WITNESS.line(body, 1764000123)}"
    for index in (0, 255, 599):
        path = "".join(b64(h) + "\n" for h in small.inclusion_path(index, size))
        receipt = f"c2sp.org/tlog-proof@v1\nextra {b64(small.entries[index])}\nindex {index}\n{path}\n{cp}"
        words = ok(tlogcheck("tlogproof", LOG.vkey, "-", input=receipt))
        assert words == ["cityledger.example/d02", str(size), str(index), small.levels[0][index].hex()]
    refused(tlogcheck("tlogproof", LOG.vkey, "-", input=receipt.replace("\n\n", "\n", 1)), "inclusion path line")
    refused(tlogcheck("tlogproof", LOG.vkey, "-", input=receipt.replace("extra ", "extras ")), "index line")
    refused(tlogcheck("tlogproof", LOG.vkey, "-", input=receipt.replace(f"index {index}", "index 0599")), "leading")
    # A key trusted for another log's origin does not vouch for this one.
    foreign = Signer("cityledger.example/d03", bytes(range(32)))
    body3 = body.replace("d02", "d03")
    refused(tlogcheck("checkpoint", foreign.vkey, "-", input=f"{body}\n{foreign.line(body)}"), "is not the key's name")
    assert ok(tlogcheck("checkpoint", foreign.vkey, "-", input=f"{body3}\n{foreign.line(body3)}"))
    # Extension lines are not allowed by PROTOCOL.md 7.
    ext = body + "extension\n"
    refused(tlogcheck("checkpoint", LOG.vkey, "-", input=f"{ext}\n{LOG.line(ext)}"), "extension lines")


def test_usage_errors_exit_2(tlogcheck: Tlogcheck) -> None:
    assert tlogcheck().returncode == 2
    assert tlogcheck("nonsense").returncode == 2
    assert tlogcheck("note", VKEY).returncode == 2
    assert tlogcheck("inclusion", "http://127.0.0.1:9/", "x", "00", "2", "AA==").returncode == 2
    assert tlogcheck("consistency", "ftp://host/", "1", "AA==", "2", "AA==").returncode == 2
    assert "usage: tlogcheck" in tlogcheck().stderr
