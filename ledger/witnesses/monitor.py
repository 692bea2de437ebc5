"""`cityledger monitor`: follow any cityledger log over HTTP and re-check every entry.

Why over HTTP alone: an auditor of the city (another municipality, a meter maker, a
journalist) should need nothing but the log's URL and the ledger's public key: no
database, no broker login, no cooperation from the operator beyond serving the files of
C2SP tlog-tiles, which any static web server or CDN can do. The judgement itself (what
is a problem, when a checkpoint is consistent) is ledger/chain/monitoring.py; this module
only fetches, feeds it, and keeps its state.

One round: fetch `<url>/checkpoint` (asking caches to revalidate: a stale one would look
like a rollback), verify it under the trusted ledger keys, then fetch the entry bundles
of the new range and the level-0 hash tiles beside them: the full ones, and at the right
edge the partial one of the width the checkpoint's size implies, falling back to the full
tile when the partial is gone (tlog-tiles.md allows deleting it once the full one exists).
Each bundle's leaf hashes must equal its hash tile (a log serving tiles that disagree with
its entries is an alarm), and the entries go to the follower in log order, whose root must
then be the checkpoint's. Fetching runs on a few threads ahead of the checking; device
signatures are verified on every core (`sigcheck.ParallelVerifier`) for long catch-ups.

State (`--state DIR`, 0700): `state.json`, written to a temporary file, fsynced and
renamed over the old one, after every round that raised no alarm (and every minute of a
long catch-up), so a restart resumes where the monitor stopped and never from a state
that includes unverified signatures. After an alarm the state stays at the last good
round, so running again re-checks and re-raises it. Alarms are printed to stderr as
`ALARM: ...` lines and appended to `alarms.log` with the signed notes that prove them.
Network errors, timeouts and checkpoints the monitor cannot authenticate are faults: said
clearly, retried on the next round, never a crash.

Exit codes: 0 fine (with --once: after one good round, or when stopped), 1 a --once round
that a fault cut short, 2 a usage or state error, 3 an alarm.
"""

from __future__ import annotations

import argparse
import fcntl
import http.client
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from ledger.chain import merkle
from ledger.chain.monitoring import (
    LogFollower,
    MonitorError,
    Problem,
    ProblemKind,
    SignatureCheck,
    bad_signatures,
    check_checkpoint,
    checkpoint_origin,
    verifiers_for,
)
from ledger.chain.notes import MAX_NOTE_BYTES, NoteError, parse_vkey
from ledger.chain.sigcheck import CHUNK, ParallelVerifier
from ledger.chain.tlog import Tile, TileError, parse_entry_bundle

log = logging.getLogger("cityledger.monitor")

EXIT_OK, EXIT_FAULT, EXIT_USAGE, EXIT_ALARM = 0, 1, 2, 3
STATE_FILE, ALARMS_FILE, LOCK_FILE = "state.json", "alarms.log", "lock"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_INTERVAL_S = 30.0
FETCHERS = 8
"""Bundle-and-tile pairs fetched at once: enough to hide a CDN's latency, few enough to be polite."""
WINDOW = 64
"""Bundles fetched ahead of the one being checked (at most 64 x 16 MiB held, in the worst case)."""
PROGRESS_EVERY_S = 5.0
SAVE_EVERY_S = 60.0
POOL_FROM = 4 * CHUNK
"""A range with fewer entries than this is verified inline: starting the process pool costs more."""
MAX_REPORTED = 100
"""Alarms printed per round; the rest are counted."""
TILE_WIDTH = 256  # hashes in a full tile, entries in a full bundle (C2SP tlog-tiles)
HASH_SIZE = 32
FULL_TILE_BYTES = TILE_WIDTH * HASH_SIZE
MAX_BUNDLE_BYTES = TILE_WIDTH * (2 + 0xFFFF)  # 256 entries, each a uint16 length and at most 65,535 bytes
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")

LedgerKey = tuple[str | None, bytes]  # (key name, or None for a bare key named after the log's origin; public key)


class Fault(Exception):
    """The round could not go on (network, a missing tile, a checkpoint it cannot authenticate): retry later."""


class UsageError(ValueError):
    """A command-line value that cannot work (a key, a URL, a state directory)."""


# ---------------------------------------------------------------- options


def parse_ledger_key(text: str) -> LedgerKey:
    """A note verifier key (`origin+id+base64`, Ed25519) or a hex Ed25519 public key (its name: the log's origin)."""
    text = text.strip()
    if _HEX_KEY.fullmatch(text):
        return None, bytes.fromhex(text)
    if "+" in text:
        try:
            verifier = parse_vkey(text)
        except NoteError as exc:
            raise UsageError(f"--ledger-key {text[:80]!r}: {exc}") from None
        if verifier.alg != 0x01:
            raise UsageError(f"--ledger-key {text[:80]!r} is not an Ed25519 log key (type 0x01)")
        return verifier.name, verifier.public_key
    raise UsageError(f"--ledger-key {text[:80]!r} is neither a note verifier key (name+id+key) nor 64 hex digits")


def check_url(url: str) -> str:
    """The log's URL prefix without its trailing slash; http or https only."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--url {url!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise UsageError(f"--url {url!r}: a log's prefix has no query or fragment")
    return url.rstrip("/")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The monitor's options (shared by `cityledger monitor` and `python -m ledger.witnesses.monitor`)."""
    p.add_argument("--url", required=True, help="the log's URL prefix (where `checkpoint` and `tile/` are)")
    p.add_argument(
        "--ledger-key",
        required=True,
        action="append",
        help="the ledger key to trust: a note verifier key (origin+id+base64) or hex Ed25519 public key; repeatable",
    )
    p.add_argument("--state", help="directory where the monitor keeps its state and alarms.log (created 0700)")
    p.add_argument("--once", action="store_true", help="one round, then exit (0 ok, 1 fault, 3 alarm)")
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between rounds (default 30)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per HTTP request (default 30)")
    p.add_argument("--workers", type=int, default=0, help="processes verifying signatures (default: one per core)")


# ---------------------------------------------------------------- HTTP


class Fetcher:
    """GET under the log's prefix with urllib: a timeout on every request, a size limit on every
    answer, gzip understood; 404 and 410 are None (a tile that is not there), anything else a Fault."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base = base_url
        self.timeout = timeout

    def get(self, path: str, limit: int, *, fresh: bool = False) -> bytes | None:
        url = f"{self.base}/{path}"
        headers = {"User-Agent": "cityledger-monitor", "Accept-Encoding": "gzip, identity"}
        if fresh:
            headers["Cache-Control"] = "no-cache"
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw: bytes = response.read(limit + 1)
                encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in (404, 410):
                return None
            raise Fault(f"GET {url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise Fault(f"GET {url}: {exc.reason}") from None
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise Fault(f"GET {url}: {type(exc).__name__}: {exc or 'timed out'}") from None
        if len(raw) > limit:
            raise Fault(f"GET {url}: the answer is larger than the {limit} bytes such a resource can be")
        if encoding == "gzip":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                raw = inflater.decompress(raw, limit + 1)
            except zlib.error as exc:
                raise Fault(f"GET {url}: bad gzip body: {exc}") from None
            if len(raw) > limit or inflater.unconsumed_tail:
                raise Fault(f"GET {url}: the answer inflates past {limit} bytes")
        elif encoding != "identity":
            raise Fault(f"GET {url}: unexpected Content-Encoding {encoding!r}")
        return raw


# ---------------------------------------------------------------- the state directory


class StateDir:
    """`--state DIR`: the follower's state, alarms.log, and a lock so two monitors never share it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)
            self._lock: IO[bytes] | None = open(path / LOCK_FILE, "ab")  # held, and locked, for the monitor's life
        except OSError as exc:
            raise UsageError(f"--state {path}: {exc}") from None
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise UsageError(f"--state {path}: another monitor is using it") from None

    def load(self) -> LogFollower | None:
        try:
            text = (self.path / STATE_FILE).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UsageError(f"cannot read {self.path / STATE_FILE}: {exc}") from None
        try:
            return LogFollower.from_json(text)
        except MonitorError as exc:
            raise UsageError(f"{self.path / STATE_FILE}: {exc}") from None

    def save(self, follower: LogFollower) -> None:
        """Write the state whole or not at all: a temporary file, fsync, rename, fsync of the directory."""
        data = follower.to_json().encode()
        tmp = self.path / f".{STATE_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path / STATE_FILE)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def record_alarms(self, url: str, alarms: Sequence[Problem]) -> None:
        """Append each alarm, with the signed notes that prove it (indented), to alarms.log; fsync."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines = []
        for problem in alarms:
            lines.append(f"{stamp} {url} ALARM: {problem}\n")
            for note in problem.evidence:
                lines.extend(f"    {line}\n" for line in note.splitlines())
        fd = os.open(self.path / ALARMS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, "".join(lines).encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


# ---------------------------------------------------------------- device signatures


class _Signatures:
    """Device signatures in chunks, on a process pool when one is given, results in log order."""

    def __init__(self, verifier: ParallelVerifier) -> None:
        self.verifier = verifier
        self.buffer: list[SignatureCheck] = []
        self.verified = 0  # good signatures seen back
        self.in_flight = 0

    def add(self, checks: list[SignatureCheck]) -> None:
        self.buffer.extend(checks)
        while len(self.buffer) >= CHUNK:
            self._send(self.buffer[:CHUNK])
            del self.buffer[:CHUNK]

    def _send(self, chunk: list[SignatureCheck]) -> None:
        self.verifier.submit([c.item for c in chunk], chunk)
        self.in_flight += len(chunk)

    def results(self, wait: bool = False) -> list[SignatureCheck]:
        """The bad signatures among the chunks done (every chunk, with `wait`)."""
        if wait and self.buffer:
            self._send(self.buffer)
            self.buffer = []
        bad: list[SignatureCheck] = []
        for first, tag in self.verifier.ready(wait=wait):
            chunk: list[SignatureCheck] = tag  # type: ignore[assignment]
            self.in_flight -= len(chunk)
            found = [chunk[first], *bad_signatures(chunk[first + 1 :])] if first >= 0 else []
            self.verified += len(chunk) - len(found)
            bad.extend(found)
        return bad


# ---------------------------------------------------------------- a round


@dataclass
class RoundReport:
    """What one round found: the log's size after it, what it checked, and its alarms or fault."""

    origin: str = ""
    size: int = 0
    checked: int = 0
    readings: int = 0
    verified: int = 0
    seconds: float = 0.0
    alarms: list[Problem] = field(default_factory=list)
    more_alarms: int = 0
    fault: str | None = None

    def summary(self) -> str:
        text = (
            f"log {self.origin or '?'} size {self.size}: {self.checked} new entries checked, "
            f"{self.readings} readings, {self.verified} signatures verified, {self.seconds:.2f} s"
        )
        if self.alarms:
            text += f", {len(self.alarms) + self.more_alarms} ALARMS"
        if self.fault:
            text += f", stopped: {self.fault}"
        return text


@dataclass
class _Bundle:
    entries: list[bytes]
    hashes: list[bytes]  # the hash tile's first `width`


class Monitor:
    """The follower, its state directory and the tools of a round; `round` runs one."""

    def __init__(
        self,
        url: str,
        keys: Sequence[LedgerKey],
        state: StateDir | None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        workers: int = 0,
        stop: threading.Event | None = None,
    ) -> None:
        self.url = check_url(url)
        self.keys = list(keys)
        self.state = state
        self.fetcher = Fetcher(self.url, timeout)
        self.workers = workers or os.cpu_count() or 1
        self.stop = stop or threading.Event()
        self.follower = (state.load() if state else None) or LogFollower()
        self._pool: ParallelVerifier | None = None
        self._saved: object = None  # what the state file holds (see `_save`)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.__exit__(None, None, None)
            self._pool = None

    def _verifier(self, entries: int) -> ParallelVerifier:
        if entries < POOL_FROM or self.workers <= 1:
            return ParallelVerifier(1)  # inline: no pool
        if self._pool is None:
            self._pool = ParallelVerifier(self.workers).__enter__()
        return self._pool

    def round(self) -> RoundReport:
        started = time.perf_counter()
        report = RoundReport(origin=self.follower.origin or "", size=self.follower.size)
        try:
            self._round(report)
        except Fault as exc:
            report.fault = str(exc)
        report.seconds = time.perf_counter() - started
        return report

    def _round(self, report: RoundReport) -> None:
        follower = self.follower
        note = self.fetcher.get("checkpoint", MAX_NOTE_BYTES, fresh=True)
        if note is None:
            raise Fault(f"{self.url}/checkpoint: not found")
        origin = checkpoint_origin(note) or follower.origin or ""
        verifiers = verifiers_for(origin, self.keys)
        verifiers += [v for v in follower.verifiers(origin) if v not in verifiers]
        cp = check_checkpoint(note, verifiers)
        if isinstance(cp, Problem):
            raise Fault(str(cp))
        for verifier in verifiers_for(cp.origin, self.keys):
            follower.trust(verifier.public_key)  # the operator's keys, for ledger key rotations the log names
        report.origin = cp.origin
        problems = follower.observe(cp, note)
        if self._judge(report, problems):
            return
        start, end = follower.size, follower.target
        if start < end:
            self._catch_up(report, start, end)
        report.size = follower.size
        if not report.alarms:
            self._save()

    def _save(self) -> None:
        """Save the state, unless nothing in it changed since the last save (a quiet log costs no write)."""
        f = self.follower
        mark = (f.size, f.confirmed, tuple(p.checkpoint for p in f.pending), tuple(f.ledger_keys))
        if self.state is not None and mark != self._saved:
            self.state.save(f)
            self._saved = mark

    def _judge(self, report: RoundReport, problems: Sequence[Problem]) -> bool:
        """Sort problems into the report (a fault raises `Fault` instead); True when it holds alarms."""
        for problem in problems:
            if not problem.alarm:
                raise Fault(str(problem))
            if len(report.alarms) < MAX_REPORTED:
                report.alarms.append(problem)
            else:
                report.more_alarms += 1
        return bool(report.alarms)

    def _catch_up(self, report: RoundReport, start: int, end: int) -> None:
        """Fetch, check and take in the entries [start, end), bundle by bundle, in order."""
        follower = self.follower
        first, last = start // TILE_WIDTH, (end - 1) // TILE_WIDTH
        signatures = _Signatures(self._verifier(end - start))
        readings_before = follower.counts.readings
        began = last_progress = last_save = time.perf_counter()
        log.info("%s: checking entries %d..%d (%d new)", self.url, start, end - 1, end - start)
        with ThreadPoolExecutor(FETCHERS, thread_name_prefix="monitor-fetch") as pool:
            ahead: dict[int, Future[_Bundle | Problem]] = {}
            submitted = first  # the next bundle to ask for
            try:
                for n in range(first, last + 1):
                    while submitted <= min(last, n + WINDOW):
                        width = min(TILE_WIDTH, end - submitted * TILE_WIDTH)
                        ahead[submitted] = pool.submit(self._fetch_bundle, submitted, width)
                        submitted += 1
                    if self.stop.is_set():
                        raise Fault("stopped")
                    bundle = ahead.pop(n).result()
                    if isinstance(bundle, Problem):
                        self._judge(report, [bundle])
                        break  # entries missing from the range: nothing after them can be taken in
                    skip = max(0, start - n * TILE_WIDTH)
                    problems = self._tile_problems(n, bundle)
                    problems += follower.take(
                        bundle.entries[skip:], leaf_hashes=bundle.hashes[skip:], defer_signatures=True
                    )
                    signatures.add(follower.take_unverified())
                    problems += [c.problem() for c in signatures.results()]
                    self._judge(report, problems)
                    report.checked = follower.size - start
                    now = time.perf_counter()
                    if now - last_progress >= PROGRESS_EVERY_S:
                        last_progress = now
                        _progress(report.checked, end - start, signatures.verified, now - began)
                    if now - last_save >= SAVE_EVERY_S and not report.alarms and self.state is not None:
                        self._judge(report, [c.problem() for c in signatures.results(wait=True)])
                        if not report.alarms:
                            self._save()
                        last_save = time.perf_counter()
            except Fault:
                self._finish(report, signatures, start, readings_before)
                if not report.alarms:
                    self._save()  # keep the progress of a round the network cut short
                raise
            finally:
                for future in ahead.values():
                    future.cancel()
        self._finish(report, signatures, start, readings_before)
        if report.checked >= POOL_FROM:
            _progress(report.checked, end - start, signatures.verified, time.perf_counter() - began)

    def _finish(self, report: RoundReport, signatures: _Signatures, start: int, readings_before: int) -> None:
        """Wait for every queued signature and put the round's figures in the report."""
        self._judge(report, [c.problem() for c in signatures.results(wait=True)])
        report.checked = self.follower.size - start
        report.readings = self.follower.counts.readings - readings_before
        report.verified = signatures.verified

    def _fetch_bundle(self, n: int, width: int) -> _Bundle | Problem:
        """Entry bundle n and level-0 tile n of the given width (a thread of the pool): parsed, not judged."""
        tile = Tile(0, n, width)
        data, wide = self._tile(tile, entries=True)
        try:
            entries = parse_entry_bundle(data, TILE_WIDTH if wide else width)[:width]
        except TileError as exc:
            where = tile.entries_path() if not wide else Tile(0, n).entries_path()
            return Problem(ProblemKind.BAD_BUNDLE, f"the log serves a malformed entry bundle {where}: {exc}", n * 256)
        raw, wide = self._tile(tile, entries=False)
        if len(raw) != (FULL_TILE_BYTES if wide else width * HASH_SIZE):
            where = tile.path() if not wide else Tile(0, n).path()
            return Problem(ProblemKind.TILE_MISMATCH, f"the log serves hash tile {where} of {len(raw)} bytes", n * 256)
        return _Bundle(entries, [raw[i : i + HASH_SIZE] for i in range(0, width * HASH_SIZE, HASH_SIZE)])

    def _tile(self, tile: Tile, *, entries: bool) -> tuple[bytes, bool]:
        """A tile's bytes, and whether they are the full tile's (the fallback for a deleted partial)."""
        path = tile.entries_path() if entries else tile.path()
        limit = MAX_BUNDLE_BYTES if entries else FULL_TILE_BYTES
        data = self.fetcher.get(path, limit)
        if data is not None:
            return data, False
        if tile.width != TILE_WIDTH:
            full = Tile(0, tile.index)
            data = self.fetcher.get(full.entries_path() if entries else full.path(), limit)
            if data is not None:
                return data, True
            raise Fault(f"{self.url}/{path} is not there, nor the full tile")
        raise Fault(f"{self.url}/{path} is not there")

    @staticmethod
    def _tile_problems(n: int, bundle: _Bundle) -> list[Problem]:
        """The level-0 tile must hold the leaf hashes of the bundle's entries."""
        leaf_hashes = merkle.leaf_hashes(bundle.entries)
        if leaf_hashes == bundle.hashes:
            bundle.hashes = leaf_hashes
            return []
        i = next(i for i, (a, b) in enumerate(zip(leaf_hashes, bundle.hashes)) if a != b)
        # The entries' own hashes go on to the follower: the checkpoint's root decides which side lies.
        bundle.hashes = leaf_hashes
        return [
            Problem(
                ProblemKind.TILE_MISMATCH,
                f"hash tile {Tile(0, n, len(leaf_hashes)).path()} disagrees with its entry bundle",
                n * TILE_WIDTH + i,
            )
        ]


def _progress(done: int, total: int, verified: int, seconds: float) -> None:
    seconds = max(seconds, 1e-9)
    log.info(
        "checked %d / %d entries (%.0f%%), %d signatures verified; %.0f entries/s, %.0f readings/s",
        done,
        total,
        100.0 * done / max(total, 1),
        verified,
        done / seconds,
        verified / seconds,
    )


# ---------------------------------------------------------------- running it


def report_round(report: RoundReport, state: StateDir | None, url: str) -> None:
    """The summary line on stdout; alarms (and faults) on stderr, alarms kept in alarms.log."""
    print(report.summary(), flush=True)
    for problem in report.alarms:
        print(f"ALARM: {problem}", file=sys.stderr, flush=True)
    if report.more_alarms:
        print(f"ALARM: ... and {report.more_alarms} more in this round", file=sys.stderr, flush=True)
    if report.alarms and state is not None:
        state.record_alarms(url, report.alarms)
    if report.fault:
        print(f"cityledger monitor: {report.fault} (retried on the next round)", file=sys.stderr, flush=True)


def run(monitor: Monitor, *, once: bool, interval: float) -> int:
    """Rounds until an alarm (3), --once (0, or 1 on a fault), or the stop event (0)."""
    while True:
        report = monitor.round()
        report_round(report, monitor.state, monitor.url)
        if report.alarms:
            return EXIT_ALARM
        if monitor.stop.is_set():
            return EXIT_OK
        if once:
            return EXIT_FAULT if report.fault else EXIT_OK
        if monitor.stop.wait(interval):
            return EXIT_OK


def run_from_args(args: argparse.Namespace, stop: threading.Event) -> int:
    """The command: check the options (2 on a bad one), then `run`."""
    state: StateDir | None = None
    monitor: Monitor | None = None
    try:
        keys = [parse_ledger_key(k) for k in args.ledger_key]
        url = check_url(args.url)
        if not args.interval > 0 or not args.timeout > 0 or args.workers < 0:
            raise UsageError("--interval and --timeout must be positive, --workers at least 0")
        state = StateDir(Path(args.state)) if args.state else None
        monitor = Monitor(url, keys, state, timeout=args.timeout, workers=args.workers, stop=stop)
        return run(monitor, once=args.once, interval=args.interval)
    except UsageError as exc:
        print(f"cityledger monitor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if monitor is not None:
            monitor.close()
        if state is not None:
            state.close()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ledger.witnesses.monitor`: the same as `cityledger monitor`."""
    parser = argparse.ArgumentParser(prog="cityledger monitor", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    os.umask(0o077)
    return run_from_args(args, _stop_on_signals())


if __name__ == "__main__":
    sys.exit(main())
