"""The ingest's local API: JSON lines over a Unix socket in the home (mode 0600).

The database owner runs the server; the CLI and the dashboard call it while
ingest runs. A Unix socket keeps the API off the network and behind file
permissions. A call is one request line; the reply is any number of progress
lines and then one result or error line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ledger.api import LedgerAPI, local_api
from ledger.home import Home
from ledger.investigations import InvestigationError
from ledger.writer import EnrolmentError

log = logging.getLogger(__name__)

# Errors whose message is meant for the caller; anything else is a bug and is logged.
_USER_ERRORS = (EnrolmentError, InvestigationError, ValueError, FileNotFoundError, KeyError, LookupError, TypeError)


class RemoteError(RuntimeError):
    """The ledger refused a call; the message is the server's explanation."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind  # the server-side exception's class name, e.g. "AlreadyEnrolled"


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(1 << 20)
        if not line:
            return
        try:
            call = json.loads(line)
            method, params = call["method"], dict(call.get("params") or {})
            if method not in LedgerAPI.REMOTE:
                raise KeyError(f"no such method {method!r}")
            if call.get("progress"):
                params["progress"] = self._progress
            result = getattr(self.server.api, method)(**params)
            self._send({"result": result})
        except _USER_ERRORS as exc:
            self._send({"error": str(exc), "type": type(exc).__name__})
        except Exception as exc:  # a bug: keep serving, tell the caller, log the trace
            log.exception("rpc call failed")
            self._send({"error": f"internal error: {type(exc).__name__}", "type": "InternalError"})

    def _progress(self, done: int, total: int) -> None:
        self._send({"progress": [done, total]})

    def _send(self, obj: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(obj).encode() + b"\n")
        self.wfile.flush()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    api: LedgerAPI


MAX_SOCKET_PATH = 107  # sun_path on Linux holds 108 bytes, the last one a NUL


@contextmanager
def _address(path: Path) -> Iterator[str]:
    """A name for the socket at `path` that fits in sun_path, valid inside the `with`.

    A home deep in a tree (a district's home sits two folders below its city's, a test's
    below pytest's) can put the socket past 107 bytes. Linux resolves /proc/self/fd/N/NAME
    through the open directory N, so a short name reaches the same socket file.
    """
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _connect(sock: socket.socket, path: Path) -> None:
    with _address(path) as address:
        sock.connect(address)


def serve(api: LedgerAPI, path: Path) -> tuple[_Server, threading.Thread]:
    """Start serving `api` on `path` in a background thread."""
    path.unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        with _address(path) as address:
            server = _Server(address, _Handler)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    server.api = api
    thread = threading.Thread(target=server.serve_forever, name="ledger-rpc", daemon=True)
    thread.start()
    return server, thread


def stop(server: _Server, path: Path) -> None:
    server.shutdown()
    server.server_close()
    path.unlink(missing_ok=True)


class RemoteLedger:
    """The same methods as LedgerAPI, run inside the ingest process."""

    def __init__(self, path: Path, timeout: float = 600.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, method: str, progress: Any = None, **params: Any) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            _connect(sock, self.path)
            request = {"method": method, "params": params, "progress": progress is not None}
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as reader:
                for line in reader:
                    reply = json.loads(line)
                    if "progress" in reply:
                        if progress:
                            progress(*reply["progress"])
                        continue
                    if "error" in reply:
                        raise RemoteError(reply["error"], reply.get("type", ""))
                    return reply["result"]
        raise RemoteError("the ingest closed the connection without an answer")

    def __getattr__(self, method: str) -> Any:
        if method not in LedgerAPI.REMOTE:
            raise AttributeError(method)
        return lambda progress=None, **params: self.call(method, progress=progress, **params)

    def ledger_key(self) -> str:
        return self.call("status")["ledger_key"]


def _reachable(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            _connect(sock, path)
        except OSError:
            return False
    return True


def open_ledger(home: Home) -> LedgerAPI | RemoteLedger:
    """The ingest's API when it runs, else direct access to the file."""
    if _reachable(home.rpc_socket):
        return RemoteLedger(home.rpc_socket)
    return local_api(home)
