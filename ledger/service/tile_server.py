"""`cityledger serve`: the transparency log's files over HTTP, read-only (C2SP tlog-tiles).

Why a server of files and nothing else: the log's public face is a directory the writer
fills (ledger/service/tiles.py), so it can be copied as it is to any static web server,
object store or CDN, and audit traffic never reaches ingest or the database. This one is
for a city that wants it served from its own host: the standard library's threading HTTP
server, which is all a directory of immutable files needs.

Only the paths tlog-tiles defines are served, each parsed to its canonical form before a
file is opened, so no request can name another file of the home. Full tiles and bundles
never change, and say so to caches; the checkpoint and partial tiles change, and say that.
"""

from __future__ import annotations

import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ledger.chain.tlog import TileError, parse_tile_path

log = logging.getLogger("cityledger.serve")

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=5"  # the checkpoint: a client polling it sees a new one within seconds
PARTIAL = "public, max-age=60"  # a partial tile is replaced by a wider one, and at last by the full one
CHECKPOINT = "checkpoint"


class TileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: Path, address: tuple[str, int]) -> None:
        self.directory = directory
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: TileServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = self.path.split("?", 1)[0].lstrip("/")
        if path == CHECKPOINT:
            self._file(self.server.directory / CHECKPOINT, "text/plain; charset=utf-8", SHORT, body)
            return
        try:
            tile, _ = parse_tile_path(path)
        except TileError:
            self._error(HTTPStatus.NOT_FOUND, "not a checkpoint or tile path")
            return
        cache = IMMUTABLE if tile.width == 256 else PARTIAL
        self._file(self.server.directory / path, "application/octet-stream", cache, body)

    def _file(self, path: Path, content_type: str, cache: str, body: bool) -> None:
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache)
        self.send_header("Access-Control-Allow-Origin", "*")  # any monitor's page may read a public log
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: HTTPStatus, message: str) -> None:
        data = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only")

    do_PUT = do_DELETE = do_POST

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def serve(directory: Path, host: str, port: int, stop: threading.Event) -> int:
    """Serve `directory` until `stop` is set; returns an exit code."""
    server = TileServer(directory, (host, port))
    log.info("serving the transparency log in %s at http://%s:%d/", directory, host, server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name="tile-server", daemon=True)
    thread.start()
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0
