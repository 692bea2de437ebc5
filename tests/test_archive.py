"""Parquet archives of sealed blocks (ledger/store/archive.py): written, appended, queried in place,
and verified with the same audit as the live ledger, on real DuckDB ledgers built through
the writer with real signatures. Tampering is done to the Parquet files with DuckDB, as
someone holding the archive's bucket could; timing is measured in docs/benchmarks.md only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from nacl.signing import SigningKey

from ledger.chain.protocol import canonical_json
from ledger.chain.records import Batch
from ledger.home import Home
from ledger.service import rpc
from ledger.service.api import LedgerAPI, local_api
from ledger.service.writer import LedgerWriter
from ledger.store import archive
from tests.support.ledgers import T0, Growing, build_ledger

DEVICES, PER_DEVICE = 5, 1000  # enough readings for several Parquet row groups
REVOKED = "wm-d01-000004"


class Ledger(Growing):
    def commit(self, writer: LedgerWriter, blocks: int, size: int, devices: list[str] | None = None) -> None:
        """`blocks` more blocks of `size` signed readings, round robin over `devices` (not the revoked one)."""
        for _ in range(blocks):
            writer.commit(Batch(readings=self.readings(size, devices or [d for d in self.keys if d != REVOKED])))

    def grow(self, blocks: int = 2, size: int = 9) -> None:
        writer = LedgerWriter.open(self.home)
        try:
            self.commit(writer, blocks, size)
        finally:
            writer.close()


def build(root: Path) -> Ledger:
    """Registry blocks, 10 blocks of 500 readings, then a ledger key rotation, a device key
    rotation and a revocation, each followed by more blocks."""
    built = build_ledger(root, devices=DEVICES, per_device=PER_DEVICE, block_size=500)
    ledger = Ledger(
        built.home,
        built.first_key,
        dict(built.keys),
        dict.fromkeys(built.keys, PER_DEVICE),
        dict.fromkeys(built.keys, "water"),
    )
    writer = LedgerWriter.open(ledger.home)
    try:
        writer.rotate_ledger_key()
        ledger.commit(writer, 3, 40)
        rotated = SigningKey.generate()
        writer.rotate_device_key(
            "wm-d01-000000", rotated.verify_key.encode().hex(), ledger.seqs["wm-d01-000000"] + 1, "op-test"
        )
        ledger.keys["wm-d01-000000"] = rotated
        ledger.commit(writer, 2, 30)
        writer.revoke_device(REVOKED, "op-test")
        ledger.commit(writer, 2, 25)
    finally:
        writer.close()
    return ledger


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    return build(tmp_path_factory.mktemp("archive") / "home")


@pytest.fixture
def ledger(pristine: Ledger, tmp_path: Path) -> Ledger:
    """A copy of the module's ledger that a test may grow."""
    return pristine.copy(tmp_path / "home")


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments of about 1,500 leaves, so that the audit and the queries cross files."""
    monkeypatch.setattr(archive, "SEGMENT_LEAVES", 1500)


def live(ledger: Ledger) -> LedgerAPI:
    return local_api(ledger.home)


def sql(ledger: Ledger, statement: str, *args: object) -> list[tuple]:
    con = duckdb.connect(str(ledger.home.database), read_only=True)
    try:
        return con.execute(statement, list(args)).fetchall()
    finally:
        con.close()


def make_archive(ledger: Ledger, out: Path, upto: int | None = None) -> dict[str, Any]:
    return live(ledger).archive(out=str(out), upto_height=upto)


def verify(ledger: Ledger | None, out: Path, **kw: Any) -> dict[str, Any]:
    return archive.verify_archive(out, live=live(ledger) if ledger else None, **kw)


def segment_of(out: Path, height: int) -> archive.Segment:
    manifest = archive.load_manifest(out)
    assert manifest is not None
    return next(s for s in manifest.segments if s.first_height <= height <= s.last_height)


def rewrite(out: Path, name: str, statement: str, *args: object, fix_manifest: bool = True) -> None:
    """Change a Parquet file with DuckDB (`statement` runs on table t), keeping its order and
    format; then, unless told not to, write its new hash and row count into the manifest so that
    only the audit can catch the change."""
    path = out / name
    table = name.split("-")[0]
    con = duckdb.connect()
    try:
        con.execute(f"CREATE TABLE t AS SELECT * FROM read_parquet('{path}')")
        con.execute(statement, list(args))
        con.execute(f"COPY (SELECT * FROM t ORDER BY {archive.ORDER[table]}) TO '{path}' (FORMAT parquet)")
        rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        con.close()
    if fix_manifest:
        fix(out, name, rows)


def fix(out: Path, name: str, rows: int | None = None) -> None:
    """Make the manifest agree with file `name` as it is now."""
    manifest = archive.load_manifest(out)
    assert manifest is not None
    segments = []
    for s in manifest.segments:
        files = {
            t: (
                archive.FileEntry(
                    name,
                    rows if rows is not None else f.rows,
                    (out / name).stat().st_size,
                    archive.sha256_file(out / name),
                )
                if f.name == name
                else f
            )
            for t, f in s.files.items()
        }
        segments.append(archive.Segment(s.segment, s.first_height, s.last_height, s.first_hash, s.last_hash, files))
    (out / archive.MANIFEST).write_text(json.dumps(archive.Manifest(segments).as_dict()))


def where(ledger: Ledger, device: str, seq: int) -> tuple[int, int]:
    return sql(ledger, "SELECT height, idx FROM readings WHERE device = ? AND seq = ?", device, seq)[0]


# --------------------------------------------------------------------------- writing and verifying


def test_archive_then_verify_counts_every_block_and_reading(
    pristine: Ledger, tmp_path: Path, small_segments: None
) -> None:
    out = tmp_path / "arch"
    result = make_archive(pristine, out)
    blocks, readings, entries = sql(
        pristine,
        "SELECT (SELECT count(*) FROM blocks), (SELECT count(*) FROM readings), (SELECT count(*) FROM entries)",
    )[0]
    assert (result["blocks"], result["readings"], result["entries"]) == (blocks, readings, entries)
    assert result["segments_written"] >= 4 and result["last_height"] == blocks - 1
    report = verify(pristine, out)
    assert report["ok"], report
    assert (report["blocks"], report["readings"], report["entries"]) == (blocks, readings, entries)
    assert report["failure"] is None and report["file_failures"] == []
    assert report["link"] == {
        "checked": True,
        "ok": True,
        "detail": f"the live head is the archive's last block {blocks - 1}",
    }
    manifest = json.loads((out / archive.MANIFEST).read_text())
    assert manifest["readings"] == readings and manifest["first_height"] == 0
    assert manifest["last_hash"] == sql(pristine, "SELECT hash FROM blocks WHERE height = ?", blocks - 1)[0][0]
    names = [f"{t}-{n:06d}.parquet" for t in archive.COLUMNS for n in range(len(manifest["segments"]))]
    assert sorted(p.name for p in out.iterdir()) == sorted([archive.MANIFEST, *names])


def test_files_hold_headers_as_stored_and_readings_by_device_then_time(pristine: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "arch"
    make_archive(pristine, out)
    con = duckdb.connect()
    try:
        archived = con.execute(f"SELECT * FROM read_parquet('{out}/blocks-*.parquet') ORDER BY height").fetchall()
        order = con.execute(f"SELECT device, ts FROM read_parquet('{out}/readings-000000.parquet')").fetchall()
    finally:
        con.close()
    assert archived == sql(pristine, "SELECT * FROM blocks ORDER BY height")
    assert order == sorted(order)


def test_a_second_run_appends_only_new_blocks(ledger: Ledger, tmp_path: Path, small_segments: None) -> None:
    out = tmp_path / "arch"
    first = make_archive(ledger, out)
    before = {p.name: (p.stat().st_mtime_ns, archive.sha256_file(p)) for p in out.glob("*.parquet")}
    again = make_archive(ledger, out)
    assert again["segments_written"] == 0 and again["last_height"] == first["last_height"]
    ledger.grow(blocks=3, size=11)
    third = make_archive(ledger, out)
    assert third["segments_written"] == 1 and third["first_height"] == first["last_height"] + 1
    assert (third["blocks"], third["readings"]) == (3, 33)
    after = {p.name: (p.stat().st_mtime_ns, archive.sha256_file(p)) for p in out.glob("*.parquet")}
    assert {name: after[name] for name in before} == before and len(after) == len(before) + 3
    report = verify(ledger, out)
    assert report["ok"] and report["readings"] == sql(ledger, "SELECT count(*) FROM readings")[0][0]


def test_upto_height_and_the_link_to_the_next_live_block(pristine: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "arch"
    result = make_archive(pristine, out, upto=6)
    assert result["last_height"] == 6
    report = verify(pristine, out)
    assert report["ok"] and report["blocks"] == 7
    assert report["link"]["detail"] == "live block 7 names the archive's last block as prev"


def test_a_crash_mid_segment_leaves_the_archive_whole(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "arch"
    make_archive(ledger, out)
    manifest = (out / archive.MANIFEST).read_bytes()
    ledger.grow()
    real = archive._copy

    def crash(con: Any, out: Path, table: str, *args: Any) -> Any:
        if table == "readings":
            raise OSError("disk full")
        return real(con, out, table, *args)

    monkeypatch.setattr(archive, "_copy", crash)
    with pytest.raises(OSError):
        make_archive(ledger, out)
    assert (out / archive.MANIFEST).read_bytes() == manifest and (out / "blocks-000001.parquet").exists()
    assert verify(None, out, ledger_key=ledger.first_key)["ok"]  # files the manifest does not list are ignored
    monkeypatch.setattr(archive, "_copy", real)
    assert make_archive(ledger, out)["segments_written"] == 1
    assert verify(ledger, out)["ok"]


def test_appending_to_an_archive_of_another_ledger_is_refused(pristine: Ledger, tmp_path: Path) -> None:
    other = build_ledger(tmp_path / "other", devices=1, per_device=3)
    out = tmp_path / "arch"
    local_api(other.home).archive(out=str(out))
    with pytest.raises(archive.ArchiveError, match="another ledger"):
        make_archive(pristine, out)


def test_an_archive_written_while_ingest_runs(ledger: Ledger, tmp_path: Path) -> None:
    """In the ingest process, on a read cursor of the live writer, reached over the socket API."""
    writer = LedgerWriter.open(ledger.home)
    server, _ = rpc.serve(local_api(ledger.home, writer), ledger.home.rpc_socket)
    try:
        out = tmp_path / "arch"
        assert isinstance(rpc.open_ledger(ledger.home), rpc.RemoteLedger)
        assert cli(ledger, "archive", "--out", str(out)).returncode == 0
        ledger.commit(writer, 2, 5)  # ingest goes on sealing
        done = cli(ledger, "archive", "--out", str(out))
        assert done.returncode == 0 and "in 1 new segment" in done.stdout, done.stdout + done.stderr
        checked = cli(ledger, "verify", "--archive", str(out))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "linked to the live ledger: the live head is the archive's last block" in checked.stdout
    finally:
        rpc.stop(server, ledger.home.rpc_socket)
        writer.close()


# --------------------------------------------------------------------------- tampering


def test_changed_reading_value_is_named(pristine: Ledger, tmp_path: Path, small_segments: None) -> None:
    out = tmp_path / "arch"
    make_archive(pristine, out)
    height, _ = where(pristine, "wm-d01-000002", 7)
    name = segment_of(out, height).files["readings"].name
    rewrite(out, name, "UPDATE t SET value = value + 1 WHERE device = 'wm-d01-000002' AND seq = 7")
    report = verify(pristine, out)
    assert not report["ok"] and report["file_failures"] == []
    assert report["failure"] == f"block {height}, reading wm-d01-000002#7: device signature does not verify"
    assert (report["failed_block"], report["failed_reading"]) == (height, "wm-d01-000002#7")


def test_changed_reading_after_the_key_rotations_is_named(pristine: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "arch"
    make_archive(pristine, out)
    seq = pristine.seqs["wm-d01-000000"]  # signed with the device's rotated key, in a block the new ledger key signed
    height, _ = where(pristine, "wm-d01-000000", seq)
    rewrite(out, "readings-000000.parquet", "UPDATE t SET ts = ts + 1 WHERE device = 'wm-d01-000000' AND seq = ?", seq)
    report = verify(pristine, out)
    assert (report["failed_block"], report["failed_reading"]) == (height, f"wm-d01-000000#{seq}")


def test_deleted_reading_is_named(pristine: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "arch"
    make_archive(pristine, out)
    height, idx = where(pristine, "wm-d01-000001", 300)
    rewrite(out, "readings-000000.parquet", "DELETE FROM t WHERE device = 'wm-d01-000001' AND seq = 300")
    report = verify(pristine, out)
    assert not report["ok"] and report["file_failures"] == [] and report["failed_block"] == height
    assert report["failure"] == f"block {height}, reading leaf {idx}: leaf {idx} is missing"


def test_changed_header_is_named(pristine: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "arch"
    make_archive(pristine, out)
    header = json.loads(sql(pristine, "SELECT header FROM blocks WHERE height = 8")[0][0])
    header["sealed_at"] += 1
    rewrite(out, "blocks-000000.parquet", "UPDATE t SET header = ? WHERE height = 8", canonical_json(header).decode())
    report = verify(pristine, out)
    assert report["failure"] == "block 8: header signature does not verify under the ledger key"


def test_null_in_a_file_is_a_failure_not_a_crash(pristine: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "arch"
    make_archive(pristine, out)
    height, idx = where(pristine, "wm-d01-000003", 10)
    rewrite(out, "readings-000000.parquet", "UPDATE t SET sig = NULL WHERE device = 'wm-d01-000003' AND seq = 10")
    report = verify(pristine, out)
    assert report["failure"] == f"block {height}, reading leaf {idx}: stored reading is not a valid reading"


def test_a_changed_file_is_named(pristine: Ledger, tmp_path: Path, small_segments: None) -> None:
    out = tmp_path / "arch"
    make_archive(pristine, out)
    height, _ = where(pristine, "wm-d01-000002", 9)
    name = segment_of(out, height).files["readings"].name
    rewrite(out, name, "UPDATE t SET value = value + 1 WHERE device = 'wm-d01-000002' AND seq = 9", fix_manifest=False)
    report = verify(pristine, out)
    assert not report["ok"]
    assert report["file_failures"] == [f"{name}: SHA-256 differs from the manifest (file changed)"]
    assert report["failed_reading"] == "wm-d01-000002#9"  # and the audit still says which reading


def test_missing_foreign_and_misplaced_files_are_named(pristine: Ledger, tmp_path: Path, small_segments: None) -> None:
    out = tmp_path / "arch"
    make_archive(pristine, out)
    (out / "entries-000000.parquet").write_bytes(b"not parquet at all")
    (out / "readings-000001.parquet").unlink()
    report = verify(pristine, out)
    assert not report["ok"] and report["failure"] == "not audited: files missing or unreadable"
    assert "readings-000001.parquet: missing" in report["file_failures"]
    assert any(p.startswith("entries-000000.parquet: not a readable Parquet file") for p in report["file_failures"])

    moved = tmp_path / "moved"
    make_archive(pristine, moved)
    first = segment_of(moved, 0)
    rewrite(moved, "readings-000002.parquet", f"UPDATE t SET height = {first.last_height} WHERE idx = 0")
    report = verify(pristine, moved)
    assert "readings-000002.parquet: holds heights outside its segment's" in " ".join(report["file_failures"])


def test_unreadable_manifest_is_a_failure(pristine: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "arch"
    make_archive(pristine, out)
    (out / archive.MANIFEST).write_text('{"format": "something else"}')
    report = verify(pristine, out)
    assert not report["ok"] and "is not a cityledger archive manifest" in report["failure"]
    assert not verify(pristine, tmp_path / "nothing-here")["ok"]


# --------------------------------------------------------------------------- the live link


def test_an_archive_that_does_not_link_to_the_live_ledger_fails(pristine: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "arch"
    make_archive(pristine, out)
    other = build_ledger(tmp_path / "other", devices=2, per_device=60, block_size=5)
    report = archive.verify_archive(out, live=local_api(other.home), ledger_key=pristine.first_key)
    assert not report["ok"] and report["failure"] is None and report["link"]["ok"] is False
    assert "does not name the archive's last block" in report["link"]["detail"]


def test_a_live_ledger_rolled_back_below_the_archive_fails(ledger: Ledger, tmp_path: Path) -> None:
    older = tmp_path / "older"
    shutil.copytree(ledger.home.root, older)
    ledger.grow()
    out = tmp_path / "arch"
    make_archive(ledger, out)
    report = archive.verify_archive(out, live=local_api(Home(older)))
    assert not report["ok"] and "ends at block" in report["link"]["detail"]


def test_unreachable_live_ledger_is_said_not_failed(pristine: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "arch"
    make_archive(pristine, out)
    report = archive.verify_archive(out, live=local_api(Home(tmp_path / "no-home")), ledger_key=pristine.first_key)
    assert report["ok"] and report["link"]["checked"] is False
    assert report["link"]["detail"].startswith("live ledger not reachable")


def test_an_archive_starting_after_genesis_follows_the_key_chain(
    pristine: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Early segments moved away: trust the key in force at the first block kept."""
    monkeypatch.setattr(archive, "SEGMENT_LEAVES", 100)
    out = tmp_path / "arch"
    make_archive(pristine, out)
    manifest = archive.load_manifest(out)
    assert manifest is not None
    rotation = sql(pristine, "SELECT height FROM blocks WHERE header LIKE '%next_key%'")[0][0]
    kept = archive.Manifest([s for s in manifest.segments if s.first_height > rotation])
    assert kept.segments and kept.last_height == manifest.last_height  # signed by the second ledger key
    (out / archive.MANIFEST).write_text(json.dumps(kept.as_dict()))
    report = verify(pristine, out)
    assert report["ok"] and report["blocks"] == kept.last_height - kept.first_height + 1, report
    wrong = verify(pristine, out, ledger_key=pristine.first_key)
    assert wrong["failure"] == f"block {kept.first_height}: header signature does not verify under the ledger key"


# --------------------------------------------------------------------------- querying in place


def test_a_device_history_is_read_in_place(
    pristine: Ledger, tmp_path: Path, small_segments: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "ROW_GROUP_ROWS", 2048)  # DuckDB's smallest: several row groups per file
    out = tmp_path / "arch"
    make_archive(pristine, out)
    device = "wm-d01-000003"
    rows = archive.device_readings(out, device)
    expected = sql(pristine, "SELECT height, idx, seq, ts, value FROM readings WHERE device = ? ORDER BY ts", device)
    assert [(r["height"], r["idx"], r["seq"], r["ts"], r["value"]) for r in rows] == expected
    window = archive.device_readings(out, device, start=T0 + 10 * 900_000, end=T0 + 20 * 900_000)
    assert [r["seq"] for r in window] == list(range(10, 20))

    # The SQL of docs/verifying.md, on one segment of several row groups: DuckDB skips those
    # that cannot hold the device.
    monkeypatch.setattr(archive, "SEGMENT_LEAVES", 1_000_000)
    out = tmp_path / "one-segment"
    make_archive(pristine, out)
    manifest = archive.load_manifest(out)
    assert manifest is not None and manifest.segments[0].files["readings"].rows > 2 * 2048
    profile = tmp_path / "profile.json"
    con = duckdb.connect()
    try:
        con.execute(f"PRAGMA enable_profiling = 'json'; PRAGMA profiling_output = '{profile}'")
        con.execute(
            f"SELECT ts, value FROM read_parquet('{out}/readings-*.parquet') WHERE device = ?", [device]
        ).fetchall()
    finally:
        con.close()
    scan = _scan(json.loads(profile.read_text()))
    assert scan["rows_scanned"] <= 2 * 2048 < manifest.segments[0].files["readings"].rows
    assert scan["row_groups_scanned"] < scan["total_row_groups_to_scan"]


def _scan(node: dict[str, Any]) -> dict[str, Any]:
    """The Parquet scan in a DuckDB JSON profile."""
    for child in node.get("operator", node.get("children", [])):
        if child.get("type") == "TABLE_SCAN":
            return child
        found = _scan(child)
        if found:
            return found
    return {}


# --------------------------------------------------------------------------- command line


def cli(ledger: Ledger, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYLEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", "--home", str(ledger.home.root), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_command_line(pristine: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "arch"
    done = cli(pristine, "archive", "--out", str(out), "--upto-height", "9")
    assert done.returncode == 0 and "archived blocks 0..9 in 1 new segment" in done.stdout, done.stdout + done.stderr
    assert "archive [" in done.stderr  # progress
    head = sql(pristine, "SELECT max(height) FROM blocks")[0][0]
    done = cli(pristine, "archive", "--out", str(out), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["last_height"] == head
    assert "up to date" in cli(pristine, "archive", "--out", str(out)).stdout

    ok = cli(pristine, "verify", "--archive", str(out))
    assert ok.returncode == 0 and f"archive intact: {head + 1} blocks (heights 0..{head})" in ok.stdout, ok.stdout
    assert "linked to the live ledger" in ok.stdout

    height, _ = where(pristine, "wm-d01-000001", 11)
    rewrite(
        out,
        "readings-000000.parquet",
        "UPDATE t SET value = 0 WHERE device = 'wm-d01-000001' AND seq = 11",
        fix_manifest=False,
    )
    bad = cli(pristine, "verify", "--archive", str(out))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "file failure: readings-000000.parquet: SHA-256 differs from the manifest" in bad.stdout
    assert f"first failure: block {height}, reading wm-d01-000001#11" in bad.stdout
    report = json.loads(cli(pristine, "verify", "--archive", str(out), "--json").stdout)
    assert report["ok"] is False and report["failed_block"] == height

    (out / archive.MANIFEST).write_text("{")
    broken = cli(pristine, "verify", "--archive", str(out))
    assert broken.returncode == 1 and "not a cityledger archive manifest" in broken.stdout
    assert "Traceback" not in broken.stderr
    refused = cli(pristine, "archive", "--out", str(out))
    assert refused.returncode == 2 and "not a cityledger archive manifest" in refused.stderr
    assert "Traceback" not in refused.stderr
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    refused = cli(pristine, "archive", "--out", str(not_a_dir))
    assert refused.returncode == 2 and "cannot create the archive directory" in refused.stderr
