"""The ingest's local API: JSON lines over a Unix socket in the home (mode 0600).

The database owner runs the server; the CLI and the dashboard call it while
ingest runs. A Unix socket keeps the API off the network and behind file
permissions. A call is one request line; the reply is any number of progress
lines and then one result or error line.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import socket
import socketserver
import threading
import time
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ledger.errors import Busy, InternalError, LedgerError, NotFound, by_name, family
from ledger.home import Home
from ledger.service.api import LedgerAPI, local_api

log = logging.getLogger("cityledger.api")

# Calls served at once, and calls that may wait for a worker; a caller past both is told
# "busy" at once. Each worker is a thread with its own DuckDB cursor (see LedgerWriter.store).
WORKERS = int(os.environ.get("CITYLEDGER_API_WORKERS", "8"))
WAITING = int(os.environ.get("CITYLEDGER_API_WAITING", "24"))
REQUEST_TIMEOUT_S = 10.0  # a caller that connects and sends no request line lets its worker go


class _Handler(socketserver.StreamRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S

    def handle(self) -> None:
        try:
            line = self.rfile.readline(1 << 20)
        except TimeoutError:
            return
        self.connection.settimeout(None)  # the call itself may take long (an audit); the caller waits
        if not line:
            return
        try:
            call = json.loads(line)
            method, params = call["method"], dict(call.get("params") or {})
            if method not in REMOTE:
                raise NotFound(f"no such method {method!r}")
            if call.get("progress"):
                params["progress"] = self._progress
            result = getattr(self.server.api, method)(**params)
            self._send({"result": result})
        except Exception as exc:
            self._send(_error_reply(exc))

    def _progress(self, done: int, total: int) -> None:
        self._send({"progress": [done, total]})

    def _send(self, obj: dict[str, Any]) -> None:
        self.wfile.write(_encode(obj))
        self.wfile.flush()


class _Server(socketserver.UnixStreamServer):
    """Serves each connection on a bounded pool of worker threads.

    socketserver's threading mix-in starts a thread per connection with no limit: a burst of
    callers means a burst of threads, DuckDB cursors and memory inside the process that seals.
    Here at most `workers` calls run and `waiting` more queue; past that a caller gets
    a `Busy` error at once instead of a hang.
    """

    api: LedgerAPI
    # The kernel's queue of connections not yet accepted (socketserver's default is 5). A burst of
    # callers while the accepting thread waits for the GIL would otherwise get EAGAIN on connect.
    request_queue_size = 128

    def __init__(self, address: str, workers: int = WORKERS, waiting: int = WAITING) -> None:
        super().__init__(address, _Handler)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ledger-api")
        self.slots = threading.BoundedSemaphore(workers + waiting)
        self.refused = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.sendall(_encode(_error_reply(Busy("the ledger's API is busy: retry in a moment"))))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            self.pool.submit(self._serve, request, client_address)
        except RuntimeError:  # the pool is shutting down
            self.slots.release()
            self.shutdown_request(request)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _error_reply(exc: BaseException) -> dict[str, Any]:
    """An error as the socket carries it: the message, the class's name and its family
    (ledger/errors.py). A bug is reported as InternalError and logged with its trace."""
    kind = family(exc)
    if kind is InternalError and not isinstance(exc, InternalError):
        log.error("rpc call failed", exc_info=exc)
        return {"error": f"internal error: {type(exc).__name__}", "type": "InternalError", "family": "InternalError"}
    return {"error": str(exc), "type": type(exc).__name__, "family": kind.__name__}


def _raised(reply: dict[str, Any]) -> LedgerError:
    """The error the server raised, as the same class when this process knows it, else as its family."""
    cls = by_name(str(reply.get("type"))) or by_name(str(reply.get("family"))) or InternalError
    return cls(reply["error"])


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


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


def serve(
    api: LedgerAPI, path: Path, workers: int = WORKERS, waiting: int = WAITING
) -> tuple[_Server, threading.Thread]:
    """Start serving `api` on `path` in a background thread, `workers` calls at a time."""
    path.unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        with _address(path) as address:
            server = _Server(address, workers, waiting)
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


class RemoteLedger(LedgerAPI):
    """LedgerAPI's methods with their types, each run inside the ingest process.

    Every public method of LedgerAPI is part of the contract (`REMOTE`); here each one
    sends its arguments over the socket and reads the answer back as the method's
    declared result type (`_remote`), so a caller cannot tell this from the API in process.
    """

    def __init__(self, path: Path, timeout: float = 600.0, busy_wait: float = 5.0, in_flight: int = 0) -> None:
        self.path = path
        self.timeout = timeout
        self.busy_wait = busy_wait  # how long a call keeps retrying while the API says "busy"
        # A client with many threads (the HTTP API) keeps at most `in_flight` calls in the ledger at once
        # and queues the rest here: the ledger's own threads then leave the sealer its share of the GIL.
        self._slots = threading.BoundedSemaphore(in_flight) if in_flight > 0 else None

    def call(self, method: str, progress: Any = None, **params: Any) -> Any:
        """Run `method` in the ledger; while its API is busy, retry with backoff for `busy_wait` s."""
        if self._slots is None:
            return self._call(method, progress, params)
        with self._slots:
            return self._call(method, progress, params)

    def _call(self, method: str, progress: Any, params: dict[str, Any]) -> Any:
        deadline, pause = time.monotonic() + self.busy_wait, 0.02
        while True:
            try:
                return self._call_once(method, progress, params)
            except Busy:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)  # backoff between retries of a refused (never started) call
                pause = min(pause * 2, 0.5)

    def _call_once(self, method: str, progress: Any, params: dict[str, Any]) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                _connect(sock, self.path)
            except BlockingIOError as exc:  # EAGAIN: even the kernel's queue of new connections is full
                raise Busy("the ledger's API is busy: retry in a moment") from exc
            request = {"method": method, "params": params, "progress": progress is not None}
            try:
                sock.sendall(_encode(request))
            except (BrokenPipeError, ConnectionResetError):
                pass  # a busy server answers and closes before reading: its answer is still there to read
            with sock.makefile("rb") as reader:
                for line in reader:
                    reply = json.loads(line)
                    if "progress" in reply:
                        if progress:
                            progress(*reply["progress"])
                        continue
                    if "error" in reply:
                        raise _raised(reply)
                    return reply["result"]
        raise InternalError("the ingest closed the connection without an answer")


def _remote(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` of LedgerAPI, run over the socket: the arguments the caller gave (the server applies
    the defaults), a `progress` callback fed by the server's progress lines, and the answer checked
    against the method's return annotation (InternalError if it does not match the declaration)."""
    signature = inspect.signature(method)
    adapter: list[TypeAdapter[Any]] = []  # built at the first call: the annotations name types of api.py

    @functools.wraps(method)
    def call(self: RemoteLedger, *args: Any, **kwargs: Any) -> Any:
        params = dict(signature.bind(self, *args, **kwargs).arguments)
        del params["self"]
        progress = params.pop("progress", None)
        if not adapter:
            adapter.append(TypeAdapter(typing.get_type_hints(method)["return"]))
        answer = self.call(name, progress=progress, **params)
        try:  # a check: the answer is returned as it came, keys in their order
            adapter[0].validate_python(answer, strict=True)
        except ValidationError as exc:  # a bug: the ledger and this client disagree on the contract
            raise InternalError(f"the ledger's answer to {name} does not match its declared type: {exc}") from exc
        return answer

    return call


REMOTE = frozenset(
    name for name, member in vars(LedgerAPI).items() if not name.startswith("_") and inspect.isfunction(member)
)
for _name in REMOTE:
    setattr(RemoteLedger, _name, _remote(_name, getattr(LedgerAPI, _name)))


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


def open_ledger(home: Home) -> LedgerAPI:
    """The ingest's API when it runs, else direct access to the file."""
    if _reachable(home.rpc_socket):
        return RemoteLedger(home.rpc_socket)
    return local_api(home)
