"""The supervisor `cityledger up` uses: its backoff policy, its state file, and its processes.

The policy and the file are checked as plain functions. The processes are real
`cityledger` commands: a broker that runs, a part that can never start (a
broker on a home without access files exits 2 at once), and an ingest started
before its broker. `up` itself, killed part by part, is in tests/test_up.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ledger.city.supervisor import Backoff, CrashLoop, PartSpec, Stopped, Supervisor, describe_exit
from ledger.city.up import port_open
from ledger.home import Home
from ledger.service.supervision import PartRecord, describe_restarts, parts_status, read_state, write_state
from tests.support.broker import free_port, wait_for
from tests.support.stack import Stack

# ---------------------------------------------------------------- the policy


def test_backoff_doubles_from_half_a_second_up_to_thirty() -> None:
    b = Backoff()
    assert [b.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert b.delay(10_000) == 30  # days of failures: still capped, no overflow
    with pytest.raises(ValueError):
        b.delay(0)


def test_backoff_starts_over_after_a_part_stayed_up() -> None:
    b = Backoff(stable_s=30)
    assert b.failures_after_exit(0, uptime_s=0.2) == 1
    assert b.failures_after_exit(4, uptime_s=1.0) == 5  # still crashing quickly: wait longer
    assert b.failures_after_exit(6, uptime_s=30.0) == 1  # it ran a while: the next restart is quick again
    assert b.delay(b.failures_after_exit(6, uptime_s=3600)) == 0.5


def test_crash_loop_is_five_exits_within_a_minute() -> None:
    loop = CrashLoop()
    assert not loop.looping([0, 10, 20, 30], now=30)
    assert loop.looping([0, 10, 20, 30, 40], now=40)
    assert not loop.looping([0, 10, 20, 30, 40], now=70.5)  # the first two fell out of the window


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(2) == "exit code 2"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"


# ---------------------------------------------------------------- the state file


def test_state_file_is_private_replaced_whole_and_read_back(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    path = home.supervisor_state
    assert read_state(path) is None and parts_status(home) == {}  # no `up` ever ran: status still works
    write_state(
        path,
        {
            "ingest": PartRecord(
                state="running",
                pid=os.getpid(),
                restarts=2,
                last_restart_at=1234,
                last_exit_code=-9,
                last_exit="killed by SIGKILL",
            )
        },
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["supervisor.json"]  # no temporary file left behind
    parts = parts_status(home)
    assert parts["ingest"]["restarts"] == 2 and parts["ingest"]["state"] == "running"
    assert parts["ingest"]["last_restart_at"] == 1234 and parts["ingest"]["last_exit_code"] == -9
    assert describe_restarts(parts) is not None and "ingest 2" in describe_restarts(parts)
    assert describe_restarts({"broker": {"restarts": 0}}) is None

    path.write_text("{half a fi")  # unreadable: treated as absent, status must not fail on it
    assert parts_status(home) == {}


def test_parts_of_a_vanished_supervisor_are_reported_unsupervised(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_state(
        home.supervisor_state,
        {"broker": PartRecord(state="running", pid=1), "fleet": PartRecord(state="stopped")},
        supervisor_pid=int(gone.stdout),
    )
    parts = parts_status(home)
    assert parts["broker"]["state"] == "unsupervised"
    assert parts["fleet"]["state"] == "stopped"


# ---------------------------------------------------------------- processes


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        if not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            alive.append(pid)
    return alive


def test_a_crash_looping_part_is_retried_and_reported_and_never_takes_the_others_down(tmp_path: Path) -> None:
    """A broker keeps serving while a part beside it fails at every start; Ctrl-C then stops both."""
    stack = Stack(tmp_path / "home")  # initialises the home: the broker's access files exist
    home, port = stack.home, free_port()
    empty = tmp_path / "empty-home"
    lines: list[str] = []
    sup = Supervisor(
        home,
        stack.env,
        backoff=Backoff(first_s=0.05, max_s=0.4),
        crash_loop=CrashLoop(3, 60),
        say=lines.append,
        tick_s=0.02,
    )
    stop = threading.Event()
    pids: list[int] = []
    try:
        broker = sup.start(
            PartSpec(
                "broker", ("broker", "--mqtt-port", str(port)), lambda: port_open("127.0.0.1", port), 15, "the broker"
            )
        )
        sup.wait_ready(broker, stop)
        broker_pid = broker.pid
        assert broker_pid is not None
        doomed = sup.start(PartSpec("doomed", ("--home", str(empty), "broker", "--mqtt-port", str(free_port()))))
        sup.wait(lambda: doomed.record.crash_looping, 30, "the doomed part to be found crash-looping", stop)
        pids += [broker_pid]

        on_file = parts_status(home)
        assert on_file["doomed"]["crash_looping"] is True
        assert on_file["doomed"]["last_exit_code"] == 2 and on_file["doomed"]["restarts"] >= 2
        assert on_file["broker"] == {**on_file["broker"], "state": "running", "pid": broker_pid, "restarts": 0}
        assert broker.pid == broker_pid and port_open("127.0.0.1", port), "the broker was disturbed"
        assert any("doomed is crash-looping" in line for line in lines), lines
        assert any("doomed exit code 2" in line and "restarting it in" in line for line in lines), lines
        # Reported, and still retried.
        looping_at = doomed.record.restarts
        sup.wait(lambda: doomed.record.restarts > looping_at, 10, "a restart after the crash loop was reported", stop)
        assert doomed.failures >= 3
    finally:
        sup.stop_all()
    assert _pids_alive(pids) == []
    after = parts_status(home)
    assert {name: rec["state"] for name, rec in after.items()} == {"broker": "stopped", "doomed": "stopped"}


def test_no_restart_after_stop_all_even_when_one_was_due(tmp_path: Path) -> None:
    """Shutdown wins: a part waiting out its backoff is not started again, and ticks do nothing."""
    home = Home(tmp_path / "home")
    lines: list[str] = []
    sup = Supervisor(home, dict(os.environ), backoff=Backoff(first_s=0.3), say=lines.append, tick_s=0.02)
    doomed = sup.start(PartSpec("doomed", ("--home", str(tmp_path / "empty"), "broker")))
    stop = threading.Event()
    sup.wait(lambda: doomed.due is not None, 30, "the doomed part to exit and be scheduled", stop)
    sup.stop_all()
    deadline = time.monotonic() + 0.6  # past the restart that was due
    while time.monotonic() < deadline:
        sup.tick()
        time.sleep(0.02)
    assert doomed.proc is None and doomed.record.restarts == 0
    assert parts_status(home)["doomed"]["state"] == "stopped"
    assert not any("restarted" in line for line in lines), lines
    with pytest.raises(Stopped):
        sup.start(PartSpec("late", ("status",)))
    stop.set()
    with pytest.raises(Stopped):
        sup.wait(lambda: False, 5, "anything", stop)


def test_ingest_started_before_its_broker_connects_once_the_broker_comes(tmp_path: Path) -> None:
    """So `up` may restart ingest while the broker is down: ingest serves its API and keeps dialling."""
    stack = Stack(tmp_path / "home")
    try:
        stack.start_ingest()  # no broker yet: returns once ingest serves its API, past its first dial
        assert not stack.broker.running
        assert stack.ingest is not None and stack.ingest.poll() is None, stack.ingest_log.read_text()
        assert "connected to" not in stack.ingest_log.read_text()
        stack.broker.start()
        wait_for(lambda: "connected to" in stack.ingest_log.read_text(), 30, "ingest to connect to the late broker")
        dev = stack.enroll("wm-late-1")
        client = stack.connect(dev)
        try:
            client.publish(dev.topic, dev.reading(1, int(time.time() * 1000)).payload(), qos=1).wait_for_publish(10)
            wait_for(lambda: stack.status()["readings"] == 1, 30, "the reading sealed")
        finally:
            client.disconnect()
    finally:
        stack.close()
