"""The time for a monitor to check a log of a million entries (`cityledger monitor`).

    .venv/bin/python -m bench.monitor [--entries 1000000] [--devices 300] [--workers 0]

Builds a synthetic log of N entries in a temporary tile directory, as the writer lays it
out (ledger/chain/tlog.py's `TileState` for the hash tiles, `entry_bundle` for the
bundles, a signed checkpoint): `--devices` enrolments, then readings round-robin over
those devices, each signed with its device's real Ed25519 key. Signing a million
readings is the devices' cost, not the monitor's, so it runs on every core in a child
process and is not measured. The directory is then served by a `TileServer` in another
child process (so the server does not share the monitor's interpreter lock), and ONE
monitor round runs here, in-process, from an empty state: every entry fetched over HTTP,
parsed, checked against the registry the log builds, its leaf hash compared with the hash
tile, every device signature verified (on `--workers` processes), the root compared with
the checkpoint.

Printed: entries/s, readings verified/s, wall time of the round, and the peak RSS of this
process (the monitor; the log was built in a child, so it does not count here). The
signature workers are separate processes of a few tens of MB each, not included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.notes import Checkpoint, signed_checkpoint, verifier_key
from ledger.chain.protocol import canonical_json, sign_reading
from ledger.chain.tlog import TileState, entry_bundle

ORIGIN = "bench.cityledger.example/d01"
T0 = 1_764_000_000_000
CHUNK = 8192  # readings a signing task makes
LEDGER = SigningKey(hashlib.sha256(b"bench monitor ledger key").digest())

_keys: dict[int, SigningKey] = {}


def device(i: int) -> tuple[str, SigningKey]:
    key = _keys.get(i)
    if key is None:
        key = _keys[i] = SigningKey(hashlib.sha256(f"bench monitor device {i}".encode()).digest())
    return f"wm-d01-{i:06d}", key


def enrolment(i: int) -> bytes:
    name, key = device(i)
    return canonical_json(
        {
            "entry": "device_enrolled",
            "device": name,
            "kind": "water",
            "district": "d01",
            "public_key": key.verify_key.encode().hex(),
            "operator": "bench",
            "at": T0,
        }
    )


def sign_chunk(task: tuple[int, int, int]) -> list[bytes]:
    """Readings number first..last-1 (reading j: device j % devices, seq j // devices + 1)."""
    first, last, devices = task
    out = []
    for j in range(first, last):
        name, key = device(j % devices)
        seq = j // devices + 1
        r = sign_reading(key, device=name, kind="water", seq=seq, ts=T0 + seq * 900_000, value=seq * 13 + j % 7)
        out.append(r.leaf_data())
    return out


class _Writer:
    """Tiles and bundles of a growing log, written as they complete; memory: one partial bundle."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state = TileState()
        self.window: list[bytes] = []  # entries from `window_start` (the start of the partial bundle) on
        self.window_start = 0
        self.hashes = 0

    def append(self, entries: list[bytes]) -> None:
        self.window.extend(entries)
        for tile, data in self.state.append(merkle.leaf_hashes(entries)):
            self._write(tile.path(), data)
            if tile.level == 0:
                at = tile.index * 256 - self.window_start
                self._write(tile.entries_path(), entry_bundle(self.window[at : at + tile.width]))
        keep_from = (self.state.size // 256) * 256
        del self.window[: keep_from - self.window_start]
        self.window_start = keep_from

    def publish(self) -> None:
        cp = Checkpoint(ORIGIN, self.state.size, self.state.root())
        self._write("checkpoint", signed_checkpoint(cp, [LEDGER]).encode())

    def _write(self, relative: str, data: bytes) -> None:
        path = self.directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def build(directory: str, entries: int, devices: int, signers: int) -> None:
    """The log of `entries` entries in `directory` (a child process: its memory is not the monitor's)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    writer = _Writer(Path(directory))
    writer.append([enrolment(i) for i in range(devices)])
    n_readings = entries - devices
    tasks = [(a, min(a + CHUNK, n_readings), devices) for a in range(0, n_readings, CHUNK)]
    started = last = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(signers) as pool:
        for chunk in pool.imap(sign_chunk, tasks):
            writer.append(chunk)
            now = time.perf_counter()
            if now - last >= 3 or writer.state.size == entries:
                last = now
                logging.info(
                    "log: %d / %d entries signed and written (%.0f/s)",
                    writer.state.size,
                    entries,
                    (writer.state.size - devices) / (now - started),
                )
    writer.publish()


def serve(directory: str, port_to: Connection) -> None:
    """A TileServer over `directory` on a free port, until killed (a child process)."""
    from ledger.service.tile_server import TileServer

    server = TileServer(Path(directory), ("127.0.0.1", 0))
    port_to.send(server.server_address[1])
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=1_000_000, help="entries in the log (default 1,000,000)")
    p.add_argument("--devices", type=int, default=300, help="device keys signing the readings (default 300)")
    p.add_argument("--workers", type=int, default=0, help="monitor's signature-checking processes (0: one per core)")
    p.add_argument("--signers", type=int, default=os.cpu_count() or 1, help="processes signing the log (not measured)")
    p.add_argument("--keep", help="build the log in this directory and keep it (reused when it already holds one)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if not 0 < args.devices < args.entries:
        p.error("--devices must be at least 1 and below --entries")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from ledger.witnesses.monitor import Monitor, StateDir, parse_ledger_key

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cityledger-bench-monitor-"))
    log_dir, state_dir = work / "log", work / "state"
    ctx = multiprocessing.get_context("spawn")
    try:
        build_seconds = 0.0
        if not (log_dir / "checkpoint").exists():
            log_dir.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            builder = ctx.Process(target=build, args=(str(log_dir), args.entries, args.devices, args.signers))
            builder.start()
            builder.join()
            if builder.exitcode != 0:
                print(f"building the log failed (exit {builder.exitcode})", file=sys.stderr)
                return 1
            build_seconds = time.perf_counter() - t
        shutil.rmtree(state_dir, ignore_errors=True)

        receive, send = ctx.Pipe(duplex=False)
        server = ctx.Process(target=serve, args=(str(log_dir), send), daemon=True)
        server.start()
        try:
            if not receive.poll(60):
                print("the tile server did not start", file=sys.stderr)
                return 1
            url = f"http://127.0.0.1:{receive.recv()}"
            state = StateDir(state_dir)
            key = parse_ledger_key(verifier_key(ORIGIN, LEDGER.verify_key.encode()))
            monitor = Monitor(url, [key], state, workers=args.workers, stop=threading.Event())
            try:
                t = time.perf_counter()
                report = monitor.round()
                wall = time.perf_counter() - t
            finally:
                monitor.close()
                state.close()
        finally:
            server.kill()
            server.join(10)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        figures = {
            "entries": report.checked,
            "readings_verified": report.verified,
            "wall_seconds": round(wall, 2),
            "entries_per_second": round(report.checked / wall),
            "readings_verified_per_second": round(report.verified / wall),
            "peak_rss_mb": round(peak_mb, 1),
            "alarms": len(report.alarms) + report.more_alarms,
            "fault": report.fault,
            "cores": os.cpu_count(),
            "workers": monitor.workers,
            "python": platform.python_version(),
            "log_build_seconds": round(build_seconds, 1),
        }
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print(report.summary())
            print(
                f"monitor: {figures['entries']:,} entries in {wall:.1f} s: {figures['entries_per_second']:,} entries/s, "
                f"{figures['readings_verified_per_second']:,} readings verified/s, peak RSS {peak_mb:.0f} MB "
                f"({figures['cores']} cores, {figures['workers']} verifying processes)"
            )
        return 0 if report.fault is None and not report.alarms else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
