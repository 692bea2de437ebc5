"""The transparency log as the ledger keeps it (PROTOCOL.md section 7), on real DuckDB files and tile directories.

Headers name the log, the tiles and entry bundles on disk are the chain's leaves, the checkpoint
is the log's root signed by the ledger key, an existing ledger gains the log by replaying its
leaves, a tile directory that falls behind or breaks is rebuilt, and `verify` checks the log.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.blocks import block_hash, sign_header
from ledger.chain.notes import make_verifier, parse_checkpoint, parse_note, verify_note_signature
from ledger.chain.protocol import canonical_json
from ledger.chain.tlog import TILE_WIDTH, Tile, parse_entry_bundle, tiles_for
from ledger.home import Home
from ledger.service.tiles import TileDirectory
from ledger.service.writer import LOG_META, LedgerWriter
from ledger.store.store import Store
from tests.support.ledgers import Built, build_ledger


def chain_leaves(home: Home) -> list[bytes]:
    """Every leaf's data, in log order, as the stored blocks give it."""
    store = Store.open(home.database, read_only=True)
    try:
        head = store.head()
        assert head is not None
        return [
            raw if raw is not None else obj.leaf_data()  # type: ignore[union-attr]
            for height in range(head[0] + 1)
            for _, obj, raw in store.leaves(height)
        ]
    finally:
        store.close()


def headers(home: Home) -> list[dict[str, object]]:
    con = duckdb.connect(str(home.database), read_only=True)
    try:
        return [json.loads(h) for (h,) in con.execute("SELECT header FROM blocks ORDER BY height").fetchall()]
    finally:
        con.close()


def verify(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", "--home", str(home.root), "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Built:
    # 10 meters x 60 readings: 600 readings and 11 entries, so the log has full tiles and bundles.
    return build_ledger(tmp_path_factory.mktemp("tlog") / "home", devices=10, per_device=60, block_size=97)


@pytest.fixture
def built(pristine: Built, tmp_path: Path) -> Built:
    shutil.copytree(pristine.home.root, tmp_path / "home")
    return Built(Home(tmp_path / "home"), pristine.first_key, pristine.keys, pristine.readings)


def test_every_header_names_the_log_of_every_leaf_up_to_it(built: Built) -> None:
    leaves = chain_leaves(built.home)
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    upto = 0
    for header in headers(built.home):
        upto += int(header["size"])  # type: ignore[call-overload]
        assert header["v"] == 2
        assert header["log_size"] == upto
        assert header["log_root"] == merkle.root(hashes[:upto]).hex()
    assert upto == len(leaves) > 2 * TILE_WIDTH  # 600 readings and the registry's entries: full tiles too


def test_the_tiles_bundles_and_checkpoint_on_disk_are_the_chains_log(built: Built) -> None:
    leaves = chain_leaves(built.home)
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    files = TileDirectory(built.home.tlog)
    for tile in tiles_for(len(leaves)):
        stored = (built.home.tlog / tile.path()).read_bytes()
        if tile.level == 0:
            assert stored == b"".join(hashes[tile.index * TILE_WIDTH : tile.index * TILE_WIDTH + tile.width])
            bundle = parse_entry_bundle((built.home.tlog / tile.entries_path()).read_bytes())
            assert bundle == leaves[tile.index * TILE_WIDTH : tile.index * TILE_WIDTH + tile.width]
    note = parse_note((built.home.tlog / "checkpoint").read_bytes())
    checkpoint = parse_checkpoint(note.text)
    assert (checkpoint.origin, checkpoint.size, checkpoint.root) == (
        "cityledger.local/city",
        len(leaves),
        merkle.root(hashes),
    )
    ledger_key = bytes.fromhex(built.home.ledger_key.read_text().strip())
    public = SigningKey(ledger_key).verify_key.encode()
    assert verify_note_signature(note, make_verifier(checkpoint.origin, public))
    # Full tiles stay; the partial ones of a full tile are gone.
    assert (built.home.tlog / Tile(0, 0).path()).exists()
    assert not (built.home.tlog / (Tile(0, 0).path() + ".p")).exists()
    assert files.tile(Tile(0, 2, len(leaves) - 512)) == b"".join(hashes[512:])


def test_an_existing_ledger_gains_the_log_by_replaying_its_leaves(built: Built) -> None:
    """A ledger sealed before the log: headers without it, no stored edge, no tiles. Opening it
    replays every leaf; the next block names the log of all of them, and verify passes."""
    key = SigningKey(bytes.fromhex(built.home.ledger_key.read_text().strip()))
    con = duckdb.connect(str(built.home.database))
    try:
        prev = "0" * 64
        for height, header_json in con.execute("SELECT height, header FROM blocks ORDER BY height").fetchall():
            header = {k: v for k, v in json.loads(header_json).items() if k not in ("log_size", "log_root")}
            header.update(v=1, prev=prev)
            prev = block_hash(header)
            con.execute(
                "UPDATE blocks SET header = ?, hash = ?, prev = ?, sig = ? WHERE height = ?",
                [canonical_json(header).decode(), prev, header["prev"], sign_header(key, header), height],
            )
        con.execute("DELETE FROM meta WHERE key = ?", [LOG_META])
    finally:
        con.close()
    shutil.rmtree(built.home.tlog)
    assert verify(built.home).returncode == 0  # headers without the log are a valid chain
    before = len(chain_leaves(built.home))

    writer = LedgerWriter.open(built.home)
    try:
        writer.seal({"entry": "note", "text": "the first block with the log"})
    finally:
        writer.close()
    leaves = chain_leaves(built.home)
    last = headers(built.home)[-1]
    assert last["log_size"] == len(leaves) == before + 1
    assert last["log_root"] == merkle.root([merkle.leaf_hash(leaf) for leaf in leaves]).hex()
    assert parse_checkpoint(parse_note((built.home.tlog / "checkpoint").read_bytes()).text).size == len(leaves)
    out = verify(built.home)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("damage", ["state-lost", "partial-tile-lost", "tiles-behind", "tile-altered"])
def test_a_tile_directory_that_is_behind_or_broken_is_rebuilt_from_the_chain(built: Built, damage: str) -> None:
    tlog = built.home.tlog
    if damage == "state-lost":
        (tlog / ".state").unlink()
    elif damage == "partial-tile-lost":
        shutil.rmtree(tlog / "tile" / "0" / "002.p")
    elif damage == "tiles-behind":
        (tlog / ".state").write_text(json.dumps({"height": 3, "size": 4}))
    else:
        path = next((tlog / "tile" / "0" / "002.p").iterdir())
        path.write_bytes(b"\xff" + path.read_bytes()[1:])
    writer = LedgerWriter.open(built.home)
    try:
        writer.seal({"entry": "note", "text": "after the damage"})
    finally:
        writer.close()
    leaves = chain_leaves(built.home)
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    files = TileDirectory(built.home.tlog)
    for tile in tiles_for(len(leaves)):
        if tile.level == 0:
            assert files.tile(tile)[: tile.width * 32] == b"".join(hashes[tile.start : tile.start + tile.width])
            assert files.bundle(tile) == leaves[tile.start : tile.start + tile.width]
    assert json.loads((tlog / ".state").read_text())["size"] == len(leaves)


def resign_last_header(built: Built, change: Callable[[dict[str, Any]], None]) -> int:
    """Change the newest header and sign it again with the ledger key, as its holder could; its height."""
    key = SigningKey(bytes.fromhex(built.home.ledger_key.read_text().strip()))
    con = duckdb.connect(str(built.home.database))
    try:
        last = con.execute("SELECT max(height) FROM blocks").fetchone()[0]  # type: ignore[index]
        header = json.loads(con.execute("SELECT header FROM blocks WHERE height = ?", [last]).fetchone()[0])  # type: ignore[index]
        change(header)
        con.execute(
            "UPDATE blocks SET header = ?, hash = ?, sig = ? WHERE height = ?",
            [canonical_json(header).decode(), block_hash(header), sign_header(key, header), last],
        )
    finally:
        con.close()
    return int(last)


def test_a_header_whose_log_root_was_changed_and_resigned_fails_verify(built: Built) -> None:
    last = resign_last_header(built, lambda header: header.update(log_root="00" * 32))
    for extra in ((), ("--deep",)):
        out = verify(built.home, *extra)
        assert out.returncode == 1
        assert f"first failure: block {last}: header's log_root differs" in out.stdout, out.stdout


def test_a_header_that_stops_naming_the_log_fails_verify(built: Built) -> None:
    def drop_log(header: dict[str, Any]) -> None:
        del header["log_size"], header["log_root"]

    resign_last_header(built, drop_log)
    out = verify(built.home)
    assert out.returncode == 1
    assert "header does not name the log, though an earlier header did" in out.stdout, out.stdout
