"""`cityledger up` as a user runs it: everything starts, data flows, Ctrl-C stops it all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from ledger.home import Home
from ledger.rpc import RemoteLedger, open_ledger
from tests.support.broker import free_port, wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def _started_pids(out_path: Path) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"started (\w+)\s+pid (\d+)", out_path.read_text())}


def _stop_everything(proc: subprocess.Popen[bytes], pids: dict[str, int]) -> None:
    """On a failed test, leave nothing running: Ctrl-C first, then SIGKILL what remains."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_up_runs_a_city_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    mqtt_port, web_port = free_port(), free_port()
    out_path = tmp_path / "up.out"
    env = {**os.environ, "CITYLEDGER_HOME": str(home.root), "PYTHONUNBUFFERED": "1"}
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "up", "--devices", "12", "--interval", "1",
             "--mqtt-port", str(mqtt_port), "--dashboard-port", str(web_port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    pids: dict[str, int] = {}
    try:
        wait_for(lambda: "Dashboard: http" in out_path.read_text() or proc.poll() is not None, 120,
                 "`up` to print the dashboard address")
        text = out_path.read_text()
        assert proc.poll() is None, text
        assert f"http://127.0.0.1:{web_port}" in text
        pids = _started_pids(out_path)
        assert set(pids) == {"broker", "ingest", "fleet", "scheduler", "dashboard"}, text

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
        assert ledger.authenticate(role="operator", principal="op-city", password="demo-operator-2026") is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as page:
            assert page.status == 200

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, out_path.read_text()
        for name, pid in pids.items():
            assert not _alive(pid), f"{name} (pid {pid}) still running after Ctrl-C"
    finally:
        _stop_everything(proc, pids or _started_pids(out_path))

    assert not isinstance(open_ledger(home), RemoteLedger)
    verify = subprocess.run([sys.executable, "-m", "ledger.cli", "verify"], env=env, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
