"""A real `cityledger api` on a free port, over a real stack (Mosquitto + ingest) and a city of data.

`api_city` (one per test module): `build_city`'s three districts of signed readings, bills,
anomalies and disputes (tests/support/browser.py), ingest running on them, and the API
server as its own process, as `cityledger up` runs it. Tests drive it with httpx.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.api import start_api, stop_api
from tests.support.browser import DashboardCity, build_city
from tests.support.stack import Stack

OPERATORS = ("op-d01", "op-d02", "op-all")
PROBLEM = "application/problem+json"
FAR = 10**14  # a time after any test's access log


@dataclass
class ApiCity:
    url: str  # http://127.0.0.1:PORT/v1
    city: DashboardCity
    stack: Stack
    process: subprocess.Popen[bytes]
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)  # operator id -> its API token

    def client(self, who: str | None, **kw: Any) -> httpx.Client:
        """An httpx client for `who` (an operator id or a token; None: no token)."""
        token = self.tokens.get(who, who) if who else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def agency(self, name: str, *scopes: str, rate: int = 600, expires: str = "30d") -> str:
        """A new token for agency `name` with `scopes` (DISTRICTS:DATASETS[:write])."""
        out = self.stack.api.issue_token("agency", name, list(scopes), expires, rate, "op-all")
        return str(out["token"])


@pytest.fixture(scope="module")
def api_city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiCity]:
    root = tmp_path_factory.mktemp("api") / "home"
    city = build_city(root)
    with Stack(root) as stack:
        log = stack.home.logs / "api.log"
        proc, url = start_api(stack.env, log)
        try:
            served = ApiCity(url, city, stack, proc, log)
            for op in OPERATORS:
                served.tokens[op] = str(stack.api.issue_token("operator", op, None, "30d", 100_000, "op-all")["token"])
            yield served
        finally:
            stop_api(proc)


# ---------------------------------------------------------------- what the tests ask of answers


def pages(client: httpx.Client, path: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every item of a paged list, following `next`; and how many pages it took."""
    items: list[dict[str, Any]] = []
    cursor, count = None, 0
    while True:
        r = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        count += 1
        cursor = body["next"]
        if cursor is None:
            return items, count


def logged(api_city: ApiCity, district: str, principal: str) -> list[dict[str, Any]]:
    """The district's access log of reads under grants, by one agency."""
    return [r for r in api_city.stack.api.access_log(district, 0, FAR)["items"] if r["principal"] == principal]


def refused(r: httpx.Response, status: int) -> bool:
    return r.status_code == status and r.headers["content-type"] == PROBLEM and r.json()["status"] == status
