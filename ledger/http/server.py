"""`cityledger api`: uvicorn serving the app, with TLS from the broker's certificates when asked."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from ledger.home import Home
from ledger.http.app import ledger_for, make_app

log = logging.getLogger("cityledger.http")
DEFAULT_PORT = 8480


def serve(
    home: Home,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    cors_origins: Sequence[str] = (),
    tls: tuple[Path, Path] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn finishes the requests in flight)."""
    app = make_app(ledger_for(home), cors_origins)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # the ledger keeps its own access log of what matters; uvicorn's would hold query strings
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        limit_concurrency=256,
        timeout_keep_alive=15,
        server_header=False,
    )
    log.info("the city's API on %s://%s:%d/v1", "https" if tls else "http", host, port)
    uvicorn.Server(config).run()
