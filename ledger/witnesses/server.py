"""`cityledger witness serve`: a C2SP tlog-witness over HTTP, a thin shell around ledger.chain.cosigning.

Why a shell this thin: every rule that decides whether to cosign is in the pure
`cosigning.decide`; what is left here is what a pure function cannot do, and each of it
is what keeps the witness's one promise (never cosign two inconsistent checkpoints of a
log) across threads, restarts and crashes:

- One lock. Requests are decided, and their new state stored, one at a time, so two
  requests can never both pass against the same old state (the race in tlog-witness.md).
- State before signature. A cosignature leaves the process only after the state that
  includes it is on disk: `state.json` is written to a temporary file in the same
  directory, flushed and fsynced, renamed over the old one (`os.replace`, atomic), and
  the directory is fsynced so the rename itself survives a power cut. A kill -9 at any
  moment leaves either the old state or the new one; a cosignature that was sent always
  has its state on disk, so after a restart nothing inconsistent with it can be cosigned.
  A failed write stops all cosigning until a restart re-reads the disk.
- The key is made here, never brought: `witness.key` is generated on this machine by
  `witness init`, kept 0600 in a 0700 directory, and never logged or served.

The store directory (`--store DIR`) holds:

    witness.key   the Ed25519 seed, hex (0600)
    witness.vkey  this witness's verifier key (type 0x04), `<name>+<id>+<key>`
    logs          the logs it serves: one log verifier key (type 0x01) a line; the origin is its name
    state.json    {origin: {"size": N, "root_b64": "..."}}: the latest checkpoint cosigned for each
    alarms.log    one JSON line per quiet-log alarm
    port          the port it listens on, while it runs

A log that has submitted before and then sends nothing for `--alarm-after` seconds
raises one alarm per silence (an ERROR line and a line in alarms.log): a log that stops
asking this witness may be showing its other witnesses a history this one would refuse.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nacl.signing import SigningKey

from ledger.chain.cosigning import (
    Cosigned,
    Decision,
    Known,
    LogState,
    Refusal,
    decide,
    parse_add_checkpoint,
)
from ledger.chain.notes import (
    ALG_COSIGNATURE,
    ALG_ED25519,
    NoteError,
    Verifier,
    check_key_name,
    make_verifier,
    parse_vkey,
)
from ledger.clock import now_ms
from ledger.home import write_private
from ledger.keys import create_key_file, load_signing_key

log = logging.getLogger("cityledger.witness")

KEY_FILE = "witness.key"
VKEY_FILE = "witness.vkey"
LOGS_FILE = "logs"
STATE_FILE = "state.json"
ALARMS_FILE = "alarms.log"
PORT_FILE = "port"

MAX_BODY_BYTES = 1 << 20
"""The largest request body read (413 above it): a checkpoint note is far smaller."""

DEFAULT_ALARM_AFTER_S = 300.0
MAX_ALARMS_KEPT = 1000  # in memory, for /status; alarms.log keeps them all
IDLE_CONNECTION_TIMEOUT_S = 60  # a keep-alive connection with nothing to say is closed after this


@dataclass(frozen=True)
class WitnessProblem:
    """Why the witness cannot do what was asked (a store to fix, a key missing, a port taken)."""

    message: str


@dataclass(frozen=True)
class Identity:
    """Who this witness is: its name, its key and the verifier key others trust it by."""

    name: str
    key: SigningKey
    verifier: Verifier


# ---------------------------------------------------------------- the store's files


def init_store(root: Path, name: str) -> Verifier | WitnessProblem:
    """Make the store (0700) and a new witness key under `name`; refuse if a key is already there."""
    try:
        check_key_name(name)
    except NoteError as exc:
        return WitnessProblem(f"invalid witness name: {exc}")
    if (root / KEY_FILE).exists():
        return WitnessProblem(f"{root / KEY_FILE} exists; refusing to replace a witness key")
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        key = create_key_file(root / KEY_FILE)
        verifier = make_verifier(name, key.verify_key.encode(), ALG_COSIGNATURE)
        write_private(root / VKEY_FILE, verifier.vkey() + "\n", 0o644)
    except OSError as exc:  # FileExistsError too: a key appeared meanwhile
        return WitnessProblem(f"cannot make the witness store {root}: {exc}")
    return verifier


def read_identity(root: Path) -> Identity | WitnessProblem:
    """The witness's key and verifier key, checked against each other."""
    key_path, vkey_path = root / KEY_FILE, root / VKEY_FILE
    if not key_path.exists():
        return WitnessProblem(f"no witness key in {root}: run `cityledger witness init --store {root} --name NAME`")
    try:
        if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
            return WitnessProblem(f"{key_path} is readable by others; it must be 0600")
        key = load_signing_key(key_path)
        verifier = parse_vkey(vkey_path.read_text().strip())
    except (OSError, ValueError) as exc:  # NoteError is a ValueError
        return WitnessProblem(f"cannot read the witness identity in {root}: {exc}")
    if verifier.alg != ALG_COSIGNATURE or verifier.public_key != key.verify_key.encode():
        return WitnessProblem(f"{vkey_path} is not the cosignature verifier key of {key_path}")
    return Identity(verifier.name, key, verifier)


def _log_verifiers(text: str, where: Path) -> list[Verifier] | WitnessProblem:
    found: list[Verifier] = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            verifier = parse_vkey(line)
        except NoteError as exc:
            return WitnessProblem(f"{where} line {n}: {exc}")
        if verifier.alg != ALG_ED25519:
            return WitnessProblem(f"{where} line {n}: a log key has signature type 0x01, not 0x{verifier.alg:02x}")
        found.append(verifier)
    return found


def load_known(root: Path) -> dict[str, Known] | WitnessProblem:
    """The logs this witness serves, by origin (a missing `logs` file: none yet)."""
    path = root / LOGS_FILE
    try:
        text = path.read_text() if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        return WitnessProblem(f"cannot read {path}: {exc}")
    verifiers = _log_verifiers(text, path)
    if isinstance(verifiers, WitnessProblem):
        return verifiers
    by_origin: dict[str, list[Verifier]] = {}
    for v in verifiers:
        by_origin.setdefault(v.name, []).append(v)
    return {origin: Known(origin, tuple(vs)) for origin, vs in by_origin.items()}


def trust_log(root: Path, vkey: str) -> Verifier | WitnessProblem:
    """Add a log's verifier key (type 0x01; its name is the log's origin) to `logs`. Adding it twice is a no-op."""
    if not (root / VKEY_FILE).exists():
        return WitnessProblem(f"{root} is not a witness store: run `cityledger witness init` first")
    try:
        verifier = parse_vkey(vkey.strip())
    except NoteError as exc:
        return WitnessProblem(f"not a verifier key: {exc}")
    if verifier.alg != ALG_ED25519:
        return WitnessProblem(f"a log's key has signature type 0x01 (Ed25519), not 0x{verifier.alg:02x}")
    path = root / LOGS_FILE
    try:
        text = path.read_text() if path.exists() else ""
        present = _log_verifiers(text, path)
        if isinstance(present, WitnessProblem):
            return present
        if verifier not in present:
            if text and not text.endswith("\n"):
                text += "\n"
            write_private(path, text + verifier.vkey() + "\n", 0o600)
    except (OSError, UnicodeDecodeError) as exc:
        return WitnessProblem(f"cannot update {path}: {exc}")
    return verifier


def load_state(root: Path) -> dict[str, LogState] | WitnessProblem:
    """What the witness last cosigned, by origin. A state it cannot read stops it: starting from
    nothing instead would let it cosign a checkpoint inconsistent with one it already cosigned."""
    path = root / STATE_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        state: dict[str, LogState] = {}
        for origin, entry in raw.items():
            size, root_b64 = entry["size"], entry["root_b64"]
            if type(size) is not int or size < 0 or not isinstance(root_b64, str):
                raise ValueError(f"bad entry for {origin!r}")
            root_hash = base64.b64decode(root_b64, validate=True)
            if len(root_hash) != 32:
                raise ValueError(f"the root of {origin!r} is not 32 bytes")
            state[origin] = LogState(size, root_hash)
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        return WitnessProblem(f"cannot read {path}; refusing to start without it: {exc}")
    return state


def save_state(root: Path, state: dict[str, LogState]) -> None:
    """Replace state.json atomically and durably (see the module docstring); OSError if it could not."""
    data = {o: {"size": s.size, "root_b64": base64.b64encode(s.root).decode("ascii")} for o, s in sorted(state.items())}
    write_private(root / STATE_FILE, json.dumps(data, indent=1, sort_keys=True) + "\n")  # temp, fsync, os.replace
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # the rename itself
    finally:
        os.close(fd)


def _remove_stale_temporaries(root: Path) -> None:
    """Temporary files a kill -9 left behind mid-write (never read: the rename had not happened).
    Only the files this process writes: a `witness trust` may be writing `logs` right now."""
    for name in (STATE_FILE, PORT_FILE):
        for tmp in root.glob(f".{name}.*"):
            with contextlib.suppress(OSError):
                tmp.unlink()


# ---------------------------------------------------------------- the witness


@dataclass
class _Seen:
    """A log's recent activity, as the quiet-log alarm sees it."""

    since: float  # monotonic seconds: the last checkpoint cosigned (or the start, for a log known from disk)
    at_ms: int | None  # wall clock of the last checkpoint cosigned in this run, for /status
    alarmed: bool = False


class Witness:
    """The witness's state in memory, its decisions under one lock, and the quiet-log alarm."""

    def __init__(
        self,
        root: Path,
        identity: Identity,
        known: dict[str, Known],
        state: dict[str, LogState],
        alarm_after_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root, self.identity, self.alarm_after_s = root, identity, alarm_after_s
        self.known, self.state = known, state
        self.monotonic = monotonic
        self.lock = threading.Lock()
        self.broken: str | None = None  # set when the state could not be stored: no more cosigning
        self.alarms: list[dict[str, Any]] = []
        start = monotonic()
        self.seen: dict[str, _Seen] = {origin: _Seen(start, None) for origin in state}
        self._logs_stamp = self._stamp()

    @classmethod
    def open(cls, root: Path, alarm_after_s: float = DEFAULT_ALARM_AFTER_S) -> Witness | WitnessProblem:
        identity = read_identity(root)
        if isinstance(identity, WitnessProblem):
            return identity
        _remove_stale_temporaries(root)
        known = load_known(root)
        if isinstance(known, WitnessProblem):
            return known
        state = load_state(root)
        if isinstance(state, WitnessProblem):
            return state
        return cls(root, identity, known, state, alarm_after_s)

    # ------------------------------------------------------------ add-checkpoint

    def add_checkpoint(self, body: bytes) -> Decision:
        """Parse, decide, and for a cosignature store the new state first; one request at a time."""
        request = parse_add_checkpoint(body)
        if isinstance(request, Refusal):
            return request
        with self.lock:
            if self.broken is not None:
                return Refusal.because(503, f"this witness stopped cosigning: {self.broken}; restart it")
            self._refresh_known()
            ident = self.identity
            decision = decide(request, self.known, self.state, ident.name, ident.key, now_ms() // 1000)
            if isinstance(decision, Cosigned):
                new_state = {**self.state, decision.origin: decision.new_state}
                try:
                    save_state(self.root, new_state)
                except OSError as exc:
                    self.broken = f"cannot store {self.root / STATE_FILE}: {exc}"
                    log.error("%s; no cosignature will be given until a restart", self.broken)
                    return Refusal.because(500, "the witness could not store its state")
                self.state = new_state
                self.seen[decision.origin] = _Seen(self.monotonic(), now_ms())
                log.info("cosigned %s at size %d", decision.origin, decision.new_state.size)
            else:
                log.log(
                    logging.INFO if decision.status == 409 else logging.WARNING,  # 409: a log learning our size
                    "refused %s at size %d: %d %s",
                    request.checkpoint.origin,
                    request.checkpoint.size,
                    decision.status,
                    decision.body.decode("utf-8", "replace").strip(),
                )
            return decision

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.root / LOGS_FILE).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _refresh_known(self) -> None:
        """Read `logs` again if it changed (`witness trust` while serving); a broken edit keeps the old list."""
        stamp = self._stamp()
        if stamp == self._logs_stamp:
            return
        known = load_known(self.root)
        if isinstance(known, WitnessProblem):
            log.error("%s; still serving the logs read before", known.message)
        else:
            self.known = known
            log.info("trusted logs reloaded: %s", ", ".join(sorted(known)) or "none")
        self._logs_stamp = stamp

    # ------------------------------------------------------------ the quiet-log alarm

    def check_quiet(self) -> list[dict[str, Any]]:
        """Raise an alarm for each known log silent for `alarm_after_s` since its last checkpoint, once per silence."""
        raised: list[dict[str, Any]] = []
        with self.lock:
            now = self.monotonic()
            for origin, seen in self.seen.items():
                if seen.alarmed or origin not in self.known or now - seen.since < self.alarm_after_s:
                    continue
                seen.alarmed = True
                size = self.state[origin].size if origin in self.state else 0
                silent = int(now - seen.since)
                record = {"at": now_ms(), "origin": origin, "silent_s": silent, "last_size": size}
                log.error("ALARM: no new checkpoint from %s for %d s (last size %d)", origin, silent, size)
                self._record_alarm(record)
                raised.append(record)
        return raised

    def _record_alarm(self, record: dict[str, Any]) -> None:
        self.alarms.append(record)
        del self.alarms[:-MAX_ALARMS_KEPT]
        try:
            fd = os.open(self.root / ALARMS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("cannot append to %s: %s", self.root / ALARMS_FILE, exc)

    # ------------------------------------------------------------ /status

    def status(self) -> dict[str, Any]:
        with self.lock:
            logs: dict[str, Any] = {}
            for origin in sorted(set(self.known) | set(self.state)):
                st, seen = self.state.get(origin), self.seen.get(origin)
                logs[origin] = {
                    "trusted": origin in self.known,
                    "size": st.size if st else None,
                    "root": base64.b64encode(st.root).decode("ascii") if st else None,
                    "last_seen": seen.at_ms / 1000 if seen and seen.at_ms is not None else None,
                    "alarm": bool(seen and seen.alarmed),
                }
            return {
                "name": self.identity.name,
                "vkey": self.identity.verifier.vkey(),
                "alarm_after_s": self.alarm_after_s,
                "cosigning": self.broken is None,
                "logs": logs,
                "alarms": list(self.alarms),
            }


# ---------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an idle keep-alive connection does not hold the process at exit

    def __init__(self, address: tuple[str, int], witness: Witness, prefix: str) -> None:
        super().__init__(address, _Handler)
        self.witness, self.prefix = witness, prefix


class _Handler(BaseHTTPRequestHandler):
    server_version = "cityledger-witness"
    protocol_version = "HTTP/1.1"  # keep-alive, as tlog-witness.md asks
    timeout = IDLE_CONNECTION_TIMEOUT_S
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _route(self) -> str | None:
        path = urlsplit(self.path).path
        prefix = self.server.prefix
        if path == f"{prefix}/add-checkpoint":
            return "add-checkpoint"
        if path == f"{prefix}/status":
            return "status"
        return None

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, (message + "\n").encode("utf-8"), "text/plain; charset=utf-8", headers)

    def _wrong_method(self) -> None:
        route = self._route()
        if route is None:
            self._text(404, "not found")
        else:
            allowed = "POST" if route == "add-checkpoint" else "GET"
            self._text(405, f"use {allowed}", {"Allow": allowed})

    def do_GET(self) -> None:
        if self._route() != "status":
            return self._wrong_method()
        body = json.dumps(self.server.witness.status(), indent=1, sort_keys=True).encode() + b"\n"
        self._send(200, body, "application/json")

    def do_POST(self) -> None:
        if self._route() != "add-checkpoint":
            return self._wrong_method()
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return self._text(411, "send the body with a Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True
            return self._text(411, "send the body with a Content-Length")
        if not length_text.isdigit() or len(length_text) > 12:
            self.close_connection = True
            return self._text(400, "bad Content-Length")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            return self._text(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return None
        try:
            decision = self.server.witness.add_checkpoint(body)
        except Exception:
            log.exception("add-checkpoint failed")
            self.close_connection = True
            return self._text(500, "internal error")
        self._send(decision.status, decision.body, decision.content_type)
        return None

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _wrong_method


# ---------------------------------------------------------------- running it


def serve(
    root: Path,
    *,
    host: str,
    port: int,
    stop: threading.Event,
    alarm_after_s: float = DEFAULT_ALARM_AFTER_S,
    prefix: str = "",
    on_listening: Callable[[str, int], None] | None = None,
) -> WitnessProblem | None:
    """Serve until `stop` is set; the bound port goes to `root/port` (and `on_listening`). A problem as a value."""
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        return WitnessProblem(f"a prefix starts with '/' and does not end with one, not {prefix!r}")
    if not alarm_after_s > 0:
        return WitnessProblem("--alarm-after must be positive")
    witness = Witness.open(root, alarm_after_s)
    if isinstance(witness, WitnessProblem):
        return witness
    try:
        httpd = _Server((host, port), witness, prefix)
    except OSError as exc:
        return WitnessProblem(f"cannot listen on {host}:{port}: {exc}")
    bound = int(httpd.server_address[1])
    try:
        write_private(root / PORT_FILE, f"{bound}\n", 0o644)
    except OSError as exc:
        httpd.server_close()
        return WitnessProblem(f"cannot write {root / PORT_FILE}: {exc}")
    ident = witness.identity
    log.info(
        "witness %s (%s) serving %d log(s) on http://%s:%d%s/add-checkpoint",
        ident.name,
        ident.verifier.vkey(),
        len(witness.known),
        host,
        bound,
        prefix,
    )
    if on_listening is not None:
        on_listening(host, bound)
    http_thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="witness-http")
    http_thread.start()

    def watch() -> None:
        interval = min(1.0, max(0.05, alarm_after_s / 5))
        while not stop.wait(interval):
            witness.check_quiet()

    alarm_thread = threading.Thread(target=watch, name="witness-alarm", daemon=True)
    alarm_thread.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        httpd.shutdown()
        http_thread.join()
        httpd.server_close()
        alarm_thread.join(timeout=5)
        with contextlib.suppress(OSError):
            (root / PORT_FILE).unlink()
        log.info("witness stopped")
    return None
