"""`cityledger up` as a user runs it: everything starts, data flows, Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey

from ledger.city import demo
from ledger.city.up import fleet_devices
from ledger.errors import LedgerError
from ledger.home import Home
from ledger.processes import STDOUT, Child, start
from ledger.service.api import local_api
from ledger.service.homes import initialize
from ledger.service.rpc import RemoteLedger, open_ledger
from ledger.service.supervision import parts_status
from tests.support.broker import free_port, wait_for
from tests.support.faults import FaultLab


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def _started_pids(out_path: Path) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"started (\w+)\s+pid (\d+)", out_path.read_text())}


def _stop_everything(proc: Child, pids: dict[str, int]) -> None:
    """On a failed test, leave nothing running: Ctrl-C first, then SIGKILL what remains."""
    proc.stop(signal.SIGINT, timeout=60)
    for pid in pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_up_runs_a_city_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    mqtt_port, web_port, api_port = free_port(), free_port(), free_port()
    out_path = tmp_path / "up.out"
    env = {**os.environ, "CITYLEDGER_HOME": str(home.root), "PYTHONUNBUFFERED": "1"}
    with out_path.open("wb") as out:
        proc = start(
            [
                sys.executable,
                "-m",
                "ledger.cli",
                "up",
                "--devices",
                "12",
                "--interval",
                "1",
                "--mqtt-port",
                str(mqtt_port),
                "--dashboard-port",
                str(web_port),
                "--log-port",
                str(free_port()),
                "--api-port",
                str(api_port),
            ],
            env=env,
            stdout=out,
            stderr=STDOUT,
        )
    pids: dict[str, int] = {}
    try:
        wait_for(
            lambda: "Dashboard: http" in out_path.read_text() or proc.poll() is not None,
            120,
            "`up` to print the dashboard address",
        )
        text = out_path.read_text()
        assert proc.poll() is None, text
        assert f"http://127.0.0.1:{web_port}" in text
        pids = _started_pids(out_path)
        assert set(pids) == {"broker", "ingest", "fleet", "scheduler", "serve", "api", "dashboard"}, text

        ledger = open_ledger(home)
        assert isinstance(ledger, RemoteLedger)
        wait_for(lambda: ledger.status()["devices"] == 12, 60, "12 devices enrolled by the fleet")
        wait_for(lambda: ledger.status()["readings"] >= 16, 60, "readings from the fleet ledgered")
        kinds = {d["kind"] for d in ledger.devices()}
        assert kinds == {"water", "gas", "electricity", "parking"}
        # The demo's people: households owning the meters, and operators, as printed.
        assert "sign in as a citizen: hh-" in text and "op-city" in text
        assert all(d["account"] for d in ledger.devices() if d["kind"] != "parking")
        citizen = re.search(r"sign in as a citizen: (\S+?),", text).group(1)
        assert ledger.authenticate(role="citizen", principal=citizen, password="demo-citizen-2026")["id"] == citizen
        operator = ledger.authenticate(role="operator", principal="op-city", password="demo-operator-2026")
        assert operator["outcome"] == "signed_in"
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as page:
            assert page.status == 200
        # The city's API, as the printed hint says: an operator's token reads the status.
        assert f"http://127.0.0.1:{api_port}/v1/docs" in text
        token = ledger.issue_token(kind="operator", principal="op-city")["token"]
        answer = httpx.get(f"http://127.0.0.1:{api_port}/v1/status", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and answer.json()["devices"] == 12

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, out_path.read_text()
        for name, pid in pids.items():
            assert not _alive(pid), f"{name} (pid {pid}) still running after Ctrl-C"
    finally:
        _stop_everything(proc, pids or _started_pids(out_path))

    assert not isinstance(open_ledger(home), RemoteLedger)
    verify = subprocess.run([sys.executable, "-m", "ledger.cli", "verify"], env=env, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# ---------------------------------------------------------------- supervision (issue 14, point 3)

PARTS = ("broker", "ingest", "fleet", "scheduler", "serve", "api", "dashboard")


def _start_up(home: Home, out_path: Path, devices: int, interval: float) -> Child:
    env = {**os.environ, "CITYLEDGER_HOME": str(home.root), "PYTHONUNBUFFERED": "1"}
    with out_path.open("wb") as out:
        return start(
            [
                sys.executable,
                "-m",
                "ledger.cli",
                "up",
                "--devices",
                str(devices),
                "--interval",
                str(interval),
                "--mqtt-port",
                str(free_port()),
                "--dashboard-port",
                str(free_port()),
                "--log-port",
                str(free_port()),
                "--api-port",
                str(free_port()),
            ],
            env=env,
            stdout=out,
            stderr=STDOUT,
        )


def _every_pid(out_path: Path) -> dict[str, int]:
    """Every pid `up` printed, restarts included ("restarted NAME pid N"), keyed so none is overwritten."""
    return {f"{name}#{pid}": int(pid) for name, pid in re.findall(r"started (\w+)\s+pid (\d+)", out_path.read_text())}


def _wait_ledgering(proc: Child, out_path: Path, timeout: float = 120) -> str:
    wait_for(
        lambda: "devices ledgering" in out_path.read_text() or proc.poll() is not None,
        timeout,
        "`up` to say its devices are ledgering",
        every=0.1,
    )
    text = out_path.read_text()
    assert proc.poll() is None, text
    return text


def _status_json(home: Home) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "--home", str(home.root), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(json.loads(out.stdout))


def _ctrl_c(proc: Child, out_path: Path, home: Home) -> None:
    pids = _every_pid(out_path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0, out_path.read_text()
    left = {name: pid for name, pid in pids.items() if _alive(pid)}
    assert not left, f"still running after Ctrl-C: {left}"
    assert {p: r["state"] for p, r in parts_status(home).items()} == {p: "stopped" for p in PARTS}


def _clean_starts(tmp_path: Path, runs: int) -> list[float]:
    """`up` on a fresh home, `runs` times: each reaches "devices ledgering" with no part restarted."""
    took = []
    for run in range(runs):
        home = Home(tmp_path / f"run-{run}" / "home")
        home.root.parent.mkdir(parents=True)
        out_path = home.root.parent / "up.out"
        start = time.monotonic()
        proc = _start_up(home, out_path, devices=6, interval=0.5)
        try:
            text = _wait_ledgering(proc, out_path)
            took.append(time.monotonic() - start)
            supervisor = _status_json(home)["supervisor"]
            assert set(supervisor) == set(PARTS), supervisor
            assert {p: (r["state"], r["restarts"]) for p, r in supervisor.items()} == {
                p: ("running", 0) for p in PARTS
            }, f"run {run}: {supervisor}\n{text}"
            assert "restarting it" not in out_path.read_text(), f"run {run}:\n{out_path.read_text()}"
            _ctrl_c(proc, out_path, home)
        finally:
            _stop_everything(proc, _every_pid(out_path))
    print(
        f"\nUP clean starts: {runs} runs, seconds to 'devices ledgering': {', '.join(f'{t:.1f}' for t in took)}",
        flush=True,
    )
    return took


def test_up_on_a_fresh_home_twice_never_loses_a_part(tmp_path: Path) -> None:
    _clean_starts(tmp_path, runs=2)


@pytest.mark.soak
def test_up_on_a_fresh_home_twenty_times_never_loses_a_part(tmp_path: Path) -> None:
    _clean_starts(tmp_path, runs=20)


def test_up_starts_on_a_home_holding_an_operators_wm1_and_leaves_it_alone(tmp_path: Path) -> None:
    """Issue 15, point 6: ids outside the fleet's pattern (`wm1`, 64 characters) no longer stop `up`,
    and the demo gives households to the fleet's own meters only (tests/test_demo.py for the rest)."""
    home = Home(tmp_path / "home")
    initialize(home)
    odd = ("wm1", "a", "x.y_z", "Z" * 64)
    local_api(home).enroll_devices(
        [
            {
                "device": d,
                "kind": "water",
                "district": "d01",
                "public_key": SigningKey.generate().verify_key.encode().hex(),
            }
            for d in odd
        ]
    )
    out_path = tmp_path / "up.out"
    proc = _start_up(home, out_path, devices=6, interval=0.5)
    try:
        text = _wait_ledgering(proc, out_path)
        assert "sign in as a citizen: hh-" in text, text
        ledger = open_ledger(home)
        assert isinstance(ledger, RemoteLedger)
        devices = {d["device"]: d for d in ledger.devices()}
        assert all(devices[d]["account"] is None for d in odd)
        fleet = fleet_devices(6)
        assert fleet <= set(devices)
        assert all(devices[d]["account"] == demo.household_of(d) for d in fleet if devices[d]["kind"] != "parking")
        _ctrl_c(proc, out_path, home)
    finally:
        _stop_everything(proc, _every_pid(out_path))


def _ledger_readings(home: Home) -> int:
    """Readings in the ledger, asked of ingest only (opening the file would lock a restarting ingest out)."""
    ledger = open_ledger(home)
    if not isinstance(ledger, RemoteLedger):
        return -1
    try:
        return int(ledger.status()["readings"])
    except (OSError, LedgerError):
        return -1


def _wait_readings_grow(home: Home, what: str) -> None:
    """The city works end to end: ingest answers, and then more readings reach the ledger."""
    first: list[int] = []

    def grew() -> bool:
        n = _ledger_readings(home)
        if n >= 0 and not first:
            first.append(n)
        return bool(first) and n > first[0]

    wait_for(grew, 60, what, every=0.2)


def test_up_restarts_each_part_killed_and_the_fleet_loses_nothing(tmp_path: Path) -> None:
    """kill -9 each part in turn under one `up`: each is back within seconds, counted, and no reading is lost.

    The count is the fault harness's (tests/support/faults.py): after Ctrl-C, a FaultLab on the same
    home lets the fleet re-send its outbox until every reading it ever generated is acknowledged,
    then compares the outbox's seqs with the ledger's readings table.
    """
    devices = 12
    home = Home(tmp_path / "home")
    tmp_path.joinpath("home").mkdir()
    out_path = tmp_path / "up.out"
    proc = _start_up(home, out_path, devices=devices, interval=0.5)
    back: dict[str, float] = {}
    try:
        _wait_ledgering(proc, out_path)
        for part in PARTS:
            old = parts_status(home)[part]["pid"]
            assert isinstance(old, int) and _alive(old)
            killed = time.monotonic()
            os.kill(old, signal.SIGKILL)

            def returned(part: str = part, old: int = old) -> bool:
                rec = parts_status(home)[part]
                return rec["state"] == "running" and rec["pid"] not in (None, old) and rec["restarts"] == 1

            wait_for(returned, 30, f"{part} back (new pid, ready) after kill -9", every=0.05)
            back[part] = time.monotonic() - killed
            assert _alive(parts_status(home)[part]["pid"])
            _wait_readings_grow(home, f"new readings after {part} came back")

        supervisor = _status_json(home)["supervisor"]
        for part in PARTS:
            rec = supervisor[part]
            assert (rec["restarts"], rec["last_exit_code"], rec["last_exit"], rec["state"]) == (
                1,
                -9,
                "killed by SIGKILL",
                "running",
            ), (part, rec)
            assert rec["last_restart_at"] >= rec["last_exit_at"] > 0
        text = out_path.read_text()
        for part in PARTS:
            assert re.search(rf"\] {part} killed by SIGKILL after [\d.]+ s; restarting it in", text), text
        plain = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "--home", str(home.root), "status"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        restarts = [line for line in plain.splitlines() if line.strip().startswith("restarts:")]
        assert len(restarts) == 1 and all(f"{part} 1 (last " in restarts[0] for part in PARTS), plain
        print(f"\nUP back after kill -9 (s): {json.dumps({p: round(t, 2) for p, t in back.items()})}", flush=True)
        _ctrl_c(proc, out_path, home)
    finally:
        _stop_everything(proc, _every_pid(out_path))

    with FaultLab(tmp_path, devices=devices) as lab:
        lab.settle()
        outcome = lab.outcome("kill -9 each part of `cityledger up` in turn")
    outcome.notes["back_s"] = {p: round(t, 2) for p, t in back.items()}
    outcome.report()
    outcome.assert_exact()
